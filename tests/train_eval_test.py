"""End to end: train.py and eval.py as a user runs them, on the digits data.

Each run is a fresh process (so resuming really crosses a process boundary)
on a tiny network derived from the demo recipe by command-line overrides.
Compiles are shared between the processes through JAX's persistent
compilation cache, and XLA optimisations are off, to keep this file fast.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from efficientnet_jax import checkpoints

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


def test_resume_in_a_new_process_equals_a_straight_run(
    straight_run, tmp_path, data_dir, env):
  workdir = str(tmp_path / 'resumed')
  train(workdir, 3, data_dir, env=env)
  assert checkpoints.latest_step(workdir) == 3
  second = train(workdir, 6, data_dir, env=env)
  assert 'Resumed from' in second.stderr and 'at step 3' in second.stderr
  straight, _ = checkpoints.restore_raw(straight_run)
  resumed, _ = checkpoints.restore_raw(workdir)
  assert int(straight['step']) == int(resumed['step']) == 6
  for key in ('params', 'ema_params', 'batch_stats', 'ema_batch_stats',
              'opt_state'):
    for a, b in zip(jax.tree.leaves(straight[key]),
                    jax.tree.leaves(resumed[key])):
      np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=key)
  # Same data order: the per-step training losses agree as well.
  losses, resumed_losses = (logged(straight_run, 'train/loss'),
                            logged(workdir, 'train/loss'))
  for step in (4, 5, 6):
    assert losses[step] == pytest.approx(resumed_losses[step], abs=1e-6)


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


def test_unknown_config_field_is_one_clear_line(env, tmp_path):
  result = run('train.py', '--config=configs/demo.py', f'--workdir={tmp_path}',
               '--config.model.widht=2', env=env, check=False)
  assert result.returncode != 0
  message = result.stderr.strip().splitlines()[-1]
  assert ('Unknown config field config.model.widht in --config.model.widht; '
          'config.model has: alpha, beta, bn_group_size,') in message, (
              result.stderr[-2000:])
  assert not os.listdir(tmp_path)


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
