"""End to end: train.py and eval.py as a user runs them, on the digits data.

Each run is a fresh process (so resuming really crosses a process boundary)
on a tiny network derived from the demo recipe by command-line overrides.
Compiles are shared between the processes through JAX's persistent
compilation cache, and XLA optimisations are off, to keep this file fast.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from efficientnet_jax import checkpoints
from tests import fake_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ('--config.model.phi=1.0', '--config.model.alpha=0.01',
        '--config.model.beta=0.25', '--config.batch_size=8',
        '--config.eval_batch_size=8', '--config.log_every_steps=1',
        '--config.checkpoint_every_steps=3', '--config.eval_every_epochs=1000')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp('jax_cache')
  return dict(os.environ, PYTHONPATH=ROOT, JAX_DISABLE_MOST_OPTIMIZATIONS='1',
              JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
              TF_CPP_MIN_LOG_LEVEL='2')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def run(script, *flags, env, check=True):
  result = subprocess.run([sys.executable, script, *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600,
                          check=False)
  if check:
    assert result.returncode == 0, result.stderr[-4000:]
  return result


def train(workdir, steps, data_dir, *extra, env, check=True):
  return run('train.py', '--config=configs/demo.py', f'--workdir={workdir}',
             f'--config.data_dir={data_dir}', *TINY,
             f'--config.num_train_steps={steps}', *extra, env=env, check=check)


def logged(workdir, key):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  return {line['step']: line[key] for line in lines if key in line}


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory, data_dir, env):
  workdir = str(tmp_path_factory.mktemp('straight'))
  train(workdir, 6, data_dir, env=env)
  return workdir


def test_resume_on_4_devices_from_a_1_device_checkpoint_equals_a_straight_run(
    straight_run, tmp_path, data_dir, env):
  """Saved by a 1-device process, resumed in a new one on 4 (fake CPU)
  devices at the same global batch: the straight 1-device run's state and
  losses to float32 tolerance (the cross-device sums add in another order)."""
  workdir = str(tmp_path / 'resumed')
  train(workdir, 3, data_dir, env=env)
  assert checkpoints.latest_step(workdir) == 3
  four_devices = dict(env, XLA_FLAGS=fake_devices.xla_flags(
      4, env.get('XLA_FLAGS', '')))
  second = train(workdir, 6, data_dir, env=four_devices)
  assert 'Resumed from' in second.stderr and 'at step 3' in second.stderr
  assert 'on 4 devices' in second.stderr
  straight, _ = checkpoints.restore_raw(straight_run, keys=None)
  resumed, _ = checkpoints.restore_raw(workdir, keys=None)
  assert int(straight['step']) == int(resumed['step']) == 6
  for key in ('params', 'ema_params', 'batch_stats', 'ema_batch_stats',
              'opt_state'):
    for a, b in zip(jax.tree.leaves(straight[key]),
                    jax.tree.leaves(resumed[key])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=key)
  # Same data order: the per-step training losses agree as well.
  losses, resumed_losses = (logged(straight_run, 'train/loss'),
                            logged(workdir, 'train/loss'))
  for step in (4, 5, 6):
    assert losses[step] == pytest.approx(resumed_losses[step], abs=1e-5)


def test_eval_reproduces_the_logged_accuracy(straight_run, tmp_path,
                                             data_dir, env):
  output = str(tmp_path / 'eval.json')
  predictions = str(tmp_path / 'predictions.jsonl')
  result = run('eval.py', '--config=configs/demo.py',
               f'--checkpoint={straight_run}', f'--config.data_dir={data_dir}',
               '--config.eval_batch_size=8', f'--output={output}',
               f'--predictions={predictions}', env=env)
  assert 'top-1' in result.stdout
  with open(output) as f:
    scores = json.load(f)
  assert scores['weights'] == 'ema' and scores['step'] == 6
  assert scores['num_examples'] == 360  # The whole digits test split.
  assert scores['top1'] == pytest.approx(logged(straight_run,
                                                'eval_ema/top1')[6], abs=1e-9)
  assert scores['top5'] == pytest.approx(logged(straight_run,
                                                'eval_ema/top5')[6], abs=1e-9)
  with open(predictions) as f:
    rows = [json.loads(line) for line in f]
  assert [row['index'] for row in rows] == list(range(360))
  top1 = np.mean([row['top5'][0] == row['label'] for row in rows])
  assert top1 == pytest.approx(scores['top1'])
  assert all(row['probs'] == sorted(row['probs'], reverse=True)
             for row in rows)


def test_workdir_of_another_variant_is_refused_untouched(straight_run,
                                                         data_dir, env):
  before = sorted(os.listdir(straight_run))
  result = train(straight_run, 9, data_dir, '--config.model.beta=0.5',
                 env=env, check=False)
  assert result.returncode == 1
  message = result.stderr.strip().splitlines()[-1]
  assert 'holds a checkpoint (step 6) of efficientnet-phi1' in message
  assert 'pass a new --workdir' in message
  assert sorted(os.listdir(straight_run)) == before
  assert checkpoints.latest_step(straight_run) == 6


def one_line_failure(result, code, text):
  """The process failed with `code` and one stderr line 'FATAL: ...text...'."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == code, (code, result.stderr[-3000:])
  assert len(lines) == 1 and lines[0].startswith('FATAL: '), result.stderr[-3000:]
  assert text in lines[0], lines[0]


TRAIN = ('train.py', '--config=configs/demo.py')
EVAL = ('eval.py', '--config=configs/demo.py')
CONVERT = ('-m', 'efficientnet_jax.convert', '--source=timm',
           '--variant=b0')
# (command, flags, exit code, text of the one line). Each is refused before
# the library is imported (under a second) or before any work is done.
BAD_INPUTS = [
    (TRAIN, ['--config.modle=1'], 2,
     'Unknown config field config.modle in --config.modle; config has: '
     'augment, batch_size,'),
    (TRAIN, ['--config.modle=1'], 2, '(did you mean model?)'),
    (TRAIN, ['--config.model.widht=2'], 2,
     'Unknown config field config.model.widht in --config.model.widht; '
     'config.model has: alpha, beta, blocks, bn_group_size,'),
    (TRAIN, ['--config.model.resolution=0'], 1,
     'config.model.resolution=0 is not allowed: use an integer >= 32'),
    (TRAIN, ['--config.model.phi=100'], 1, 'config.model.phi=100.0'),
    (TRAIN, ['--config.batch_size=0'], 1, 'config.batch_size=0'),
    (TRAIN, ['--config.execution.dtype=float16'], 1, 'loss scaling'),
    (TRAIN, ['--config.model.phi=abc'], 2, 'flag --config.model.phi=abc'),
    (('train.py', '--config=configs/demo.py:b9'), [], 2,
     "--config=configs/demo.py:b9: Unknown EfficientNet variant 'b9'"),
    (TRAIN, ['--config.dataset=no_such_dataset'], 1,
     "config.dataset='no_such_dataset' is not a known dataset"),
    (TRAIN, ['--config.init_checkpoint=/no/such/dir'], 1, 'is not a directory'),
    (TRAIN, ['--bogus=1'], 2, "Unknown command line flag 'bogus'"),
    (('train.py', '--config=configs/demo_v2.py:staged'),
     ['--config.progressive.num_stages=40'], 1,
     'config.progressive.num_stages=40 does not fit config.num_epochs=25.0'),
    (EVAL, ['--checkpoint=/no/such/dir'], 1,
     "No checkpoint directory at '/no/such/dir'"),
    (EVAL, ['--checkpoint=/tmp', '--config.eval_batch_size=-1'], 1,
     'config.eval_batch_size=-1'),
    (('-m', 'efficientnet_jax.summary', '--variants=b9'), [], 1,
     '--variants: unknown b9'),
]


def test_bad_inputs_are_one_line_and_write_nothing(env, tmp_path):
  workdir = tmp_path / 'workdir'
  env = dict(env, JAX_PLATFORMS='cpu')
  for command, flags, code, text in BAD_INPUTS:
    extra = [f'--workdir={workdir}'] if command[0] == 'train.py' else []
    one_line_failure(run(*command, *extra, *flags, env=env, check=False),
                     code, text)
    assert not workdir.exists(), (command, flags)
  # The converter, on a file that is no EfficientNet and on a bad variant.
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  foreign = str(tmp_path / 'bert.safetensors')
  safetensors_numpy.save_file({'encoder.layer.0.weight': np.zeros(2)}, foreign)
  one_line_failure(
      run(*CONVERT, f'--input={foreign}', f'--output={tmp_path / "out"}',
          env=env, check=False), 1,
      'not an EfficientNet checkpoint: found tensors like '
      'encoder.layer.0.weight')
  assert not (tmp_path / 'out').exists()
  # --verbose adds the traceback.
  verbose = run(*TRAIN, f'--workdir={workdir}', '--config.batch_size=0',
                env=dict(env, EFFICIENTNET_JAX_VERBOSE='1'), check=False)
  assert 'Traceback' in verbose.stderr and verbose.returncode == 1


def test_damaged_checkpoint_is_one_line_for_eval(straight_run, tmp_path,
                                                 data_dir, env):
  damaged = str(tmp_path / 'damaged')
  shutil.copytree(straight_run, damaged)
  metadata = os.path.join(damaged, '6', checkpoints.STATE, '_METADATA')
  with open(metadata, 'r+b') as f:
    f.truncate(100)
  result = run('eval.py', '--config=configs/demo.py', f'--checkpoint={damaged}',
               f'--config.data_dir={data_dir}', '--config.eval_batch_size=8',
               env=env, check=False)
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith(f'FATAL: Checkpoint step 6 in {damaged} cannot be '
                         'read'), line


def test_sigterm_saves_and_exits_for_resumption(tmp_path, data_dir, env):
  workdir = str(tmp_path / 'preempted')
  process = subprocess.Popen(
      [sys.executable, 'train.py', '--config=configs/demo.py',
       f'--workdir={workdir}', f'--config.data_dir={data_dir}', *TINY,
       '--config.num_train_steps=100000', '--config.checkpoint_every_steps=0'],
      cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  for line in process.stderr:
    if 'Step 2/100000' in line or time.time() > deadline:
      break
  process.send_signal(signal.SIGTERM)
  _, rest = process.communicate(timeout=300)
  assert process.returncode == 143, rest[-3000:]
  assert 'Preempted (SIGTERM)' in rest
  step = checkpoints.latest_step(workdir)
  assert step is not None and step >= 2


def test_sigterm_before_the_first_step_saves_nothing(tmp_path, env):
  workdir = str(tmp_path / 'early')
  process = subprocess.Popen(
      [sys.executable, 'train.py', '--config=configs/demo.py',
       f'--workdir={workdir}', f'--config.data_dir={tmp_path / "tfds"}',
       *TINY, '--config.num_train_steps=10'],
      cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  for line in process.stderr:  # Devices are set up: start-up has begun.
    if 'JAX process 0 of 1' in line or time.time() > deadline:
      break
  process.send_signal(signal.SIGTERM)
  _, rest = process.communicate(timeout=120)
  assert process.returncode == 75, rest[-3000:]
  assert rest.strip().splitlines()[-1].startswith(
      'FATAL: SIGTERM before the first training step: nothing was saved'), (
          rest[-3000:])
  assert checkpoints.latest_step(workdir) is None
