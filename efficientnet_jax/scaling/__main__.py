"""The paper's scaling method as commands: search, study, sweep, report.

  python -m efficientnet_jax.scaling search --config=configs/scaling.py:b0 --workdir=W
  python -m efficientnet_jax.scaling study  --config=configs/scaling.py:b0 --workdir=W
  python -m efficientnet_jax.scaling sweep  --config=configs/scaling.py:b0 --workdir=W
  python -m efficientnet_jax.scaling report search --config=... --workdir=W

Every run is a train.py workdir under W; the same command again skips
finished runs and resumes unfinished ones. `--print-commands` prints one
train.py command per run instead of training; `--shard=i/n` trains the i-th
of n interleaved shares; `report` merges whatever has finished. Errors are
one line (cli.run).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

from absl import flags
from absl import logging
from ml_collections import config_flags

from efficientnet_jax import cli
from efficientnet_jax import errors
from efficientnet_jax.scaling import cost
from efficientnet_jax.scaling import grid
from efficientnet_jax.scaling import plan as plan_lib
from efficientnet_jax.scaling import report as report_lib
from efficientnet_jax.scaling import runs as runs_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'configs/scaling.py:<base>, e.g. configs/scaling.py:b0.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'One directory per run, the '
                               'table and the plot.')
_PRINT_COMMANDS = flags.DEFINE_bool(
    'print-commands', False, 'Print one train.py command per run (of the '
    'shard) and exit; for a SLURM array or a shell loop.')
_SHARD = flags.DEFINE_string('shard', '0/1', 'i/n: train the i-th of n '
                             'interleaved shares of the runs.')
_PYTHON = flags.DEFINE_string('python', 'python', 'The interpreter the '
                              'printed commands call.')
flags.mark_flags_as_required(['config', 'workdir'])


def num_classes(config: Any, data: Any) -> int:
  return data.dataset_info(plan_lib.recipe_config(config)).num_classes


def make_plan(kind: str, config: Any, classes: int) -> list[plan_lib.Run]:
  if kind == 'search':
    return plan_lib.search_plan(config, classes)
  if kind == 'study':
    return plan_lib.study_plan(config, classes,
                               plan_lib.study_coefficients(config))
  return plan_lib.sweep_plan(config, classes)


def best_so_far(prepared: Sequence[runs_lib.Prepared], config: Any) -> str:
  rows = report_lib.aggregate(report_lib.collect(prepared, config.metric),
                              config.metric, config.num_seeds)
  top = report_lib.best(rows, complete=False)
  if top is None:
    return 'none finished yet'
  return f'{top["label"]} {report_lib.format_percent(top)} %'


def train_all(mine: Sequence[runs_lib.Prepared],
              prepared: Sequence[runs_lib.Prepared], config: Any,
              data: Any) -> bool:
  """Trains this shard's runs in order; False when SIGTERM stopped one."""
  for index, item in enumerate(mine, 1):
    if runs_lib.final_metrics(item.directory, item.total_steps,
                              config.metric) is not None:
      logging.info('Run %d of %d: %s finished already.', index, len(mine),
                   item.run.name)
      continue
    logging.info('Run %d of %d: %s (%.1f MMACs, %d steps); best so far: %s.',
                 index, len(mine), item.run.name, item.run.macs / 1e6,
                 item.total_steps, best_so_far(prepared, config))
    if not runs_lib.train(item, data):
      return False
  logging.info('All %d runs of this shard done; best: %s.', len(mine),
               best_so_far(prepared, config))
  return True


def estimate(prepared: Sequence[runs_lib.Prepared],
             mine: Sequence[runs_lib.Prepared], config: Any, workdir: str,
             data: Any) -> None:
  """Prints the run count and the estimated cost before training."""
  todo = [item for item in mine if runs_lib.final_metrics(
      item.directory, item.total_steps, config.metric) is None]
  print(f'{len(prepared)} runs planned ({len(prepared) // config.num_seeds} '
        f'networks x {config.num_seeds} seeds); this shard: {len(mine)}, '
        f'{len(mine) - len(todo)} finished already.', flush=True)
  if not todo or config.timing_steps < 2:
    return
  base = min(prepared, key=lambda item: item.run.macs)
  timing = cost.measure(base.config, base.run.macs, workdir, data,
                        config.timing_steps)
  seconds = cost.plan_seconds(timing, todo)
  print(f'Estimated cost of the {len(todo)} runs left: {seconds / 60:.1f} min '
        f'here ({timing.step_seconds * 1000:.0f} ms/step for '
        f'{timing.base_macs / 1e6:.1f} MMACs, scaled by MACs, plus '
        f'{timing.overhead_seconds:.0f} s start-up per run).', flush=True)


def write_report(kind: str, prepared: Sequence[runs_lib.Prepared],
                 config: Any, workdir: str, classes: int) -> None:
  """results.jsonl, results.md, <kind>.png; for a search the best line."""
  # pylint: disable=g-import-not-at-top
  from efficientnet_jax import arch
  from efficientnet_jax import summary
  from efficientnet_jax.scaling import plots
  # pylint: enable=g-import-not-at-top
  records = report_lib.collect(prepared, config.metric)
  if not records:
    print(f'No run of the {len(prepared)} planned has finished in {workdir}.')
    return
  rows = report_lib.aggregate(records, config.metric, config.num_seeds)
  specs = {item.run.label: arch.resolve(item.config.model)
           for item in prepared}
  for row in rows:
    row['params'] = summary.count_trainable(specs[row['label']], classes)
  recipe = plan_lib.recipe_config(config)
  extra = ''
  top = report_lib.best(rows)
  if kind == 'search' and top is not None:
    line = report_lib.ready_line(top, recipe.model)
    extra = (f'\nBest: alpha {top["coefficients"][0]:g}, beta '
             f'{top["coefficients"][1]:g}, gamma {top["coefficients"][2]:g} '
             f'({report_lib.format_percent(top)} %):\n\n```\n{line}\n```\n')
  report_lib.write(workdir, records, rows, config.metric, extra=extra)
  plot = {'search': plots.plot_search, 'study': plots.plot_study,
          'sweep': plots.plot_sweep}[kind]
  plot(rows, os.path.join(workdir, f'{kind}.png'), config.metric)
  print(report_lib.markdown(rows, config.metric) + extra, flush=True)
  print(f'{len(records)} of {len(prepared)} runs finished; table: '
        f'{os.path.join(workdir, report_lib.RESULTS_MARKDOWN)}, plot: '
        f'{os.path.join(workdir, kind + ".png")}.', flush=True)


def parse_command(argv: Sequence[str]) -> tuple[str, str]:
  """(command, kind) from the positional arguments."""
  args = list(argv[1:])
  commands = (*plan_lib.KINDS, 'report')
  if not args or args[0] not in commands:
    raise errors.ConfigError(f'Give a command: {", ".join(commands)} (e.g. '
                             '`python -m efficientnet_jax.scaling search '
                             '--config=configs/scaling.py:b0 --workdir=W`).')
  if args[0] == 'report':
    if len(args) != 2 or args[1] not in plan_lib.KINDS:
      raise errors.ConfigError('report needs the kind of plan: report '
                               f'{"|".join(plan_lib.KINDS)}.')
    return 'report', args[1]
  if len(args) != 1:
    raise errors.ConfigError(f'Unexpected arguments: {args[1:]}.')
  return args[0], args[0]


def main(argv: Sequence[str], data: Any = None) -> None:
  command, kind = parse_command(argv)
  config = _CONFIG.value
  workdir = os.path.abspath(_WORKDIR.value)
  index, count = grid.parse_shard(_SHARD.value)
  cli.use_compilation_cache(None, workdir)
  cli.setup_devices(False)
  if data is None:
    from efficientnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    data = input_pipeline
  classes = num_classes(config, data)
  # Planned and checked in full before anything trains.
  prepared = runs_lib.prepare(config, make_plan(kind, config, classes),
                              workdir, data)
  mine = grid.shard(prepared, index, count)
  if _PRINT_COMMANDS.value:
    for item in mine:
      print(runs_lib.command(config, item, _PYTHON.value))
    return
  if command != 'report':
    os.makedirs(workdir, exist_ok=True)
    estimate(prepared, mine, config, workdir, data)
    if not train_all(mine, prepared, config, data):
      sys.exit(cli.EXIT_PREEMPTED)
    if count > 1:
      print(f'Shard {index}/{count} done; once every shard is, run `report '
            f'{kind}` with the same --config flags to merge them.')
      return
  write_report(kind, prepared, config, workdir, classes)


if __name__ == '__main__':
  cli.run(main)
