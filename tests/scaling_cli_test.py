"""The scaling command as a user runs it: a search killed with SIGKILL.

`python -m efficientnet_jax.scaling search` runs in fresh processes on the
digits data with a two-block base of its own (config.base_blocks) and a
recipe file that shortens the demo recipe. One process is killed with
SIGKILL once the second network has saved a checkpoint; the same command
again must leave the finished run alone, resume the killed one from its
checkpoint and write the table an uninterrupted search writes.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from efficientnet_jax.scaling import runs as runs_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = '''
from configs import demo


def get_config(arg=None):
  config = demo.get_config(arg)
  config.batch_size = 8
  config.eval_batch_size = 72
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.eval_every_epochs = 1000.0
  return config
'''
BLOCKS = "('r1_k3_s11_e1_i32_o8_se0.25', 'r1_k3_s22_e6_i8_o16_se0.25')"
STEPS = 40  # Checkpoints every 2 steps: a window to kill in.


@pytest.fixture(scope='module')
def setting(tmp_path_factory):
  root = tmp_path_factory.mktemp('scaling_cli')
  recipe = root / 'recipe.py'
  recipe.write_text(RECIPE)
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_DISABLE_MOST_OPTIMIZATIONS='1',
             JAX_COMPILATION_CACHE_DIR=str(root / 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
             TF_CPP_MIN_LOG_LEVEL='2')
  return root, str(recipe), env


def command(root, recipe, workdir):
  # step 0.5, tolerance 0.15: depth x2, width x1.5, resolution x1.5.
  return [sys.executable, '-m', 'efficientnet_jax.scaling', 'search',
          '--config=configs/scaling.py:b0', f'--config.recipe={recipe}',
          f'--config.base_blocks={BLOCKS}', f'--config.data_dir={root}/tfds',
          f'--config.num_train_steps={STEPS}', '--config.timing_steps=0',
          '--config.search.step=0.5', '--config.search.tolerance=0.15',
          f'--workdir={workdir}']


def run_to_the_end(args, env):
  result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def results(workdir):
  with open(os.path.join(workdir, 'results.jsonl')) as f:
    return {record['name']: record['metrics'] for record in map(json.loads, f)}


def run_dirs(workdir):
  if not os.path.isdir(workdir):
    return []
  return sorted(os.path.join(workdir, label, 'seed0')
                for label in os.listdir(workdir)
                if os.path.isdir(os.path.join(workdir, label, 'seed0')))


def train_steps(directory):
  with open(os.path.join(directory, 'metrics.jsonl')) as f:
    return [record['step'] for record in map(json.loads, f)
            if 'train/loss' in record]


def finished(directory):
  """Whether the run logged its final eval (a line may be half written)."""
  return runs_lib.final_metrics(directory, STEPS, 'eval/top1') is not None


def checkpoint_steps(directory):
  return [name for name in os.listdir(directory) if name.isdigit()]


def test_search_killed_with_sigkill_finishes_with_the_same_table(setting):
  root, recipe, env = setting
  straight = str(root / 'straight')
  run_to_the_end(command(root, recipe, straight), env)
  assert len(results(straight)) == 3

  killed = str(root / 'killed')
  process = subprocess.Popen(command(root, recipe, killed), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  second = None
  try:
    # Killed once one run has finished and the next has a checkpoint.
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
      dirs = [d for d in run_dirs(killed)
              if os.path.isfile(os.path.join(d, 'metrics.jsonl'))]
      running = [d for d in dirs if not finished(d)]
      if len(dirs) - len(running) >= 1 and running and checkpoint_steps(
          running[0]):
        second = running[0]
        break
      time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == -signal.SIGKILL
  assert second is not None and not finished(second), 'not killed mid-run'
  assert not os.path.isfile(os.path.join(killed, 'results.jsonl'))
  done = [d for d in run_dirs(killed) if d != second]
  assert done
  stamps = {d: os.stat(os.path.join(d, 'metrics.jsonl')).st_mtime_ns
            for d in done}
  resumed_from = max(int(step) for step in checkpoint_steps(second))

  run_to_the_end(command(root, recipe, killed), env)
  # The finished run is not redone; the killed one resumes at its checkpoint.
  assert stamps == {d: os.stat(os.path.join(d, 'metrics.jsonl')).st_mtime_ns
                    for d in done}
  logged = train_steps(second)
  assert logged[logged.index(resumed_from) + 1] == resumed_from + 1
  assert sorted(set(logged)) == list(range(1, STEPS + 1))
  again, first = results(killed), results(straight)
  assert again.keys() == first.keys()
  for name, metrics in first.items():
    assert again[name]['eval/top1'] == metrics['eval/top1'], name
    assert again[name]['eval/loss'] == pytest.approx(metrics['eval/loss'],
                                                     rel=1e-4), name
  with open(os.path.join(killed, 'results.md')) as f, open(
      os.path.join(straight, 'results.md')) as g:
    assert f.read() == g.read()
