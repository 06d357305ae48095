"""Two real processes (jax.distributed on 127.0.0.1) against one.

The two processes run train_lib.train_and_evaluate on the same global batches
as a single process (tests/fake_pipeline.py hands each process its rows), with
dropout and drop-path on, and write one checkpoint directory together. What
must hold: the same losses, parameters, EMA and BN statistics after the same
steps; a two-process resume equal to the straight run; every eval example
counted once; the checkpoint read by one process for eval and fine-tuning;
SIGTERM to one process makes both save at the same step and exit 143.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from efficientnet_jax import checkpoints
from efficientnet_jax import eval_lib
from efficientnet_jax import network
from efficientnet_jax import train_lib
from tests import fake_pipeline
from tests import multiprocess_run
from tests import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  cache = tmp_path_factory.mktemp('jax_cache')
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu',
              JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
              TF_CPP_MIN_LOG_LEVEL='2')


def start(workdir, steps, env):
  """Two processes of one job; their output goes to files in the workdir's
  parent (pipes could fill and stall a process inside a collective)."""
  port = free_port()
  processes = []
  for i in range(2):
    log = open(f'{workdir}.{steps}.{i}.log', 'w')
    processes.append(subprocess.Popen(
        [sys.executable, '-m', 'tests.multiprocess_run', f'--process_id={i}',
         '--num_processes=2', f'--port={port}', f'--workdir={workdir}',
         f'--steps={steps}'], cwd=ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT, text=True))
    processes[-1].log_path = log.name
    log.close()
  return processes


def output(process) -> str:
  with open(process.log_path) as f:
    return f.read()


def finish(processes):
  """(return codes, outputs); kills both if either hangs."""
  try:
    for p in processes:
      p.wait(timeout=TIMEOUT)
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [p.returncode for p in processes], [output(p) for p in processes]


def run_two(workdir, steps, env):
  codes, outputs = finish(start(workdir, steps, env))
  assert codes == [0, 0], '\n'.join(o[-3000:] for o in outputs)


def logged(workdir, key):
  with open(os.path.join(workdir, train_lib.METRICS_FILE)) as f:
    lines = [json.loads(line) for line in f]
  return {line['step']: line[key] for line in lines if key in line}


def assert_same_state(a, b, atol):
  # The optimizer state holds squared gradients, whose relative error is
  # twice the gradients' (the all-reduce sums in another order): 1.1e-4 seen.
  rtols = dict(params=1e-4, ema_params=1e-4, batch_stats=1e-4,
               ema_batch_stats=1e-4, opt_state=3e-4)
  for key, rtol in rtols.items():
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=key)


@pytest.fixture(scope='module')
def preempted(tmp_path_factory, env):
  """A two-process job stopped by SIGTERM to process 1: (workdir, step)."""
  workdir = str(tmp_path_factory.mktemp('two'))
  processes = start(workdir, 100000, env)
  try:
    deadline = time.time() + TIMEOUT
    while ('Step 2/100000' not in output(processes[1]) and
           time.time() < deadline and processes[1].poll() is None):
      time.sleep(0.5)
    processes[1].send_signal(signal.SIGTERM)
  except BaseException:
    for p in processes:
      p.kill()
    raise
  codes, errs = finish(processes)
  assert codes == [143, 143], '\n'.join(e[-3000:] for e in errs)
  saved = [int(e.split('Preempted (SIGTERM) at step ')[1].split(';')[0])
           for e in errs]
  assert saved[0] == saved[1] >= 2, saved
  return workdir, saved[0]


@pytest.fixture(scope='module')
def resumed(preempted, env):
  """The preempted job resumed in two processes for two more steps."""
  workdir, step = preempted
  run_two(workdir, step + 2, env)
  return workdir, step + 2


@pytest.fixture(scope='module')
def one_process(tmp_path_factory, resumed):
  """The same number of steps in this process (one device), straight."""
  _, steps = resumed
  workdir = str(tmp_path_factory.mktemp('one'))
  train_lib.train_and_evaluate(multiprocess_run.recipe(steps), workdir,
                               data=fake_pipeline)
  return workdir, steps


def test_sigterm_to_one_process_saves_both_at_one_step(preempted):
  workdir, step = preempted
  assert checkpoints.latest_step(workdir) >= step


def test_two_processes_resumed_equal_one_process(one_process, resumed):
  one, steps = one_process
  two, _ = resumed
  state_one, _ = checkpoints.restore_raw(one, keys=None)
  state_two, _ = checkpoints.restore_raw(two, keys=None)
  assert int(state_one['step']) == int(state_two['step']) == steps
  assert_same_state(state_one, state_two, atol=1e-5)
  losses_one, losses_two = logged(one, 'train/loss'), logged(two, 'train/loss')
  for step in range(1, steps + 1):
    # Float32 sums in another order: 3.7e-6 relative seen.
    assert losses_two[step] == pytest.approx(losses_one[step], rel=1e-5)
  # The final eval: every example of the split once, the same scores.
  for key in ('eval_ema/num_examples', 'eval/num_examples'):
    assert logged(two, key)[steps] == fake_pipeline.NUM_EVAL
  for key in ('eval/top1', 'eval_ema/top1', 'eval_ema/loss'):
    assert logged(two, key)[steps] == pytest.approx(logged(one, key)[steps],
                                                    rel=1e-5, abs=1e-5)


def test_one_process_reads_the_two_process_checkpoint(resumed):
  two, steps = resumed
  config = multiprocess_run.recipe(steps)
  scores = eval_lib.evaluate_checkpoint(config, two, data=fake_pipeline)
  assert scores['step'] == steps and scores['weights'] == 'ema'
  assert scores['num_examples'] == fake_pipeline.NUM_EVAL
  assert scores['top1'] == pytest.approx(
      logged(two, 'eval_ema/top1')[steps], abs=1e-6)
  # Fine-tuning from it: every tensor but a resized classifier is loaded.
  state = tiny.make_state(network.build(config.model, 5, None, execution=config.execution).model)
  tuned = train_lib.load_pretrained(state, two)
  restored, _ = checkpoints.restore_raw(two)
  np.testing.assert_array_equal(tuned.params['stem_conv']['kernel'],
                                restored['ema_params']['stem_conv']['kernel'])
  assert tuned.params['classifier']['kernel'].shape[-1] == 5
