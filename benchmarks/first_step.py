"""Restart speed: train.py's first step cold, then warm from its compilation cache.

Runs train.py twice in one workdir on the offline demo recipe
(configs/demo.py, the digits data prepared beforehand, so neither run
prepares it). The cold run starts with an empty workdir and trains
`--steps` steps; the warm run is a restart of the same job for `--steps`
more: it resumes from the cold run's last checkpoint and finds the steps'
executables in JAX's persistent compilation cache, WORKDIR/jax_cache, which
train.py keeps there by default (cli.use_compilation_cache). Per run it
records the first-step time train.py logs ('First step done in X s':
restoring or initialising the state is before it; tracing, compiling or
loading, and running the step is in it), the seconds from launching the
process to that line (imports, dataset and state included), the whole run's
seconds and the load average before and after.

  python -m benchmarks.first_step [--steps=2] [--workdir=DIR]

Writes benchmarks/results/first_step-<UTC time>.json and
first_step-latest.json (command, machine, load averages, both runs);
`python -m benchmarks.render` turns the latest into docs/performance.md's
table.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging

from benchmarks import report

_STEPS = flags.DEFINE_integer('steps', 2, 'Train steps per run.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Empty or absent directory for the job (default: a '
    'temporary one, removed at the end).')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data directory for digits (default: a temporary '
    'one, prepared first and removed at the end).')

FIRST_STEP = re.compile(r'First step done in ([0-9.]+) s')
# The target for a restart that finds its executables cached.
WARM_TARGET_S = 10.0


def cache_files(workdir: str) -> int:
  cache = os.path.join(workdir, 'jax_cache')
  return len(os.listdir(cache)) if os.path.isdir(cache) else 0


def run_train(workdir: str, data_dir: str, steps: int) -> dict:
  """One train.py run; its figures, read from the log as it is written."""
  env = {k: v for k, v in os.environ.items()
         if k != 'JAX_COMPILATION_CACHE_DIR'}  # Else it replaces the workdir's.
  env.update(PYTHONPATH=report.REPO_ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  command = [sys.executable, 'train.py', '--config=configs/demo.py',
             f'--workdir={workdir}', f'--config.data_dir={data_dir}',
             f'--config.num_train_steps={steps}']
  figures = dict(command=' '.join(['python'] + command[1:]),
                 cache_files_before=cache_files(workdir),
                 load_average_start=os.getloadavg()[0])
  start = time.perf_counter()
  process = subprocess.Popen(command, cwd=report.REPO_ROOT, env=env,
                             stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             text=True)
  tail = []
  for line in process.stderr:
    tail = (tail + [line])[-40:]
    match = FIRST_STEP.search(line)
    if match:
      figures['first_step_s'] = float(match.group(1))
      figures['launch_to_first_step_s'] = time.perf_counter() - start
    if 'Resumed from' in line:
      figures['resumed'] = True
  if process.wait():
    raise RuntimeError(f'train.py exited {process.returncode}:\n'
                       + ''.join(tail))
  figures.update(wall_s=time.perf_counter() - start,
                 load_average_end=os.getloadavg()[0],
                 cache_files_after=cache_files(workdir),
                 resumed=figures.get('resumed', False))
  return figures


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  from efficientnet_jax import datasets
  # pylint: enable=g-import-not-at-top
  command = report.command_line(module='benchmarks.first_step')
  machine = report.machine_info()
  started = report.utc_now().isoformat(timespec='seconds')
  scratch = tempfile.mkdtemp()
  workdir = _WORKDIR.value or os.path.join(scratch, 'job')
  data_dir = _DATA_DIR.value or os.path.join(scratch, 'tfds')
  if os.path.exists(workdir) and os.listdir(workdir):
    raise app.UsageError(f'--workdir={workdir} is not empty.')
  try:
    datasets.get_builder('digits', data_dir)  # Prepared before timing.
    steps = _STEPS.value
    runs = dict(cold=run_train(workdir, data_dir, steps),
                warm=run_train(workdir, data_dir, 2 * steps))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  warm = runs['warm']
  results = dict(
      kind='first_step', command=command, started_utc=started,
      finished_utc=report.utc_now().isoformat(timespec='seconds'),
      git=report.git_revision(), machine=machine,
      software={sys.executable: report.package_versions(
          ['jax', 'jaxlib', 'flax', 'tensorflow'])},
      settings=dict(config='configs/demo.py', steps=steps),
      runs=runs, load_average_end=os.getloadavg()[0],
      warm_target_s=WARM_TARGET_S,
      warm_target_met=warm['launch_to_first_step_s'] <= WARM_TARGET_S)
  for name, run in runs.items():
    print(f"{name}: first step {run['first_step_s']:.1f} s (logged), "
          f"{run['launch_to_first_step_s']:.1f} s from launch, whole run "
          f"{run['wall_s']:.1f} s, cache files {run['cache_files_before']} -> "
          f"{run['cache_files_after']}, load {run['load_average_start']:.1f} "
          f"-> {run['load_average_end']:.1f}")
  path = report.write_results(results, 'first_step')
  logging.info('Results: %s and first_step-latest.json', path)


if __name__ == '__main__':
  app.run(main)
