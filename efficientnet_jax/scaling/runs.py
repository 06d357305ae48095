"""A plan's runs as ordinary train.py workdirs: configs, state, commands.

Each run lives in WORKDIR/<label>/seed<k> and trains with
`train_lib.train_and_evaluate`, so it resumes from its newest checkpoint as
train.py does. A run is finished when its metrics.jsonl holds an eval record
at the run's last step (train_lib evaluates on the last step and appends the
record after the eval), which a run started from a printed train.py command
writes the same way. `scaling_run.json` records the overrides a directory was
planned with; a directory planned differently is refused, not overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from typing import Any, Mapping

import ml_collections

from efficientnet_jax import errors
from efficientnet_jax import validate
from efficientnet_jax.scaling import plan as plan_lib

RUN_FILE = 'scaling_run.json'
METRICS_FILE = 'metrics.jsonl'  # train_lib.METRICS_FILE.


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A run with its full config, directory and step count."""
  run: plan_lib.Run
  config: ml_collections.ConfigDict
  directory: str
  total_steps: int


def run_directory(workdir: str, run: plan_lib.Run) -> str:
  return os.path.join(workdir, run.label, f'seed{run.seed}')


def recipe_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
  """The recipe fields the scaling config sets (dataset, budget, ...)."""
  return {name: config[name] for name in plan_lib.RECIPE_FIELDS
          if config[name] is not None}


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-key overrides set, checked by validate."""
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  validate.check_config(config)
  return config


def run_config(config: Mapping[str, Any],
               run: plan_lib.Run) -> ml_collections.ConfigDict:
  """The recipe, the scaling config's recipe fields and the run's overrides."""
  recipe = plan_lib.load_recipe(config['recipe'], config['base'])
  return apply_overrides(recipe, recipe_overrides(config) | dict(run.overrides))


def total_steps(config: ml_collections.ConfigDict, data: Any) -> int:
  """The run's step count as train_lib plans it."""
  from efficientnet_jax import train_lib  # pylint: disable=g-import-not-at-top
  return train_lib.plan_run(config, data).total_steps


def prepare(config: Mapping[str, Any], runs: list[plan_lib.Run],
            workdir: str, data: Any) -> list[Prepared]:
  """Every run's config, checked before anything trains."""
  prepared = []
  for run in runs:
    run_cfg = run_config(config, run)
    prepared.append(Prepared(run, run_cfg, run_directory(workdir, run),
                             total_steps(run_cfg, data)))
  return prepared


def final_metrics(directory: str, steps: int,
                  metric: str) -> dict[str, float] | None:
  """The eval record at the last step of a finished run, else None."""
  path = os.path.join(directory, METRICS_FILE)
  if not os.path.isfile(path):
    return None
  found = None
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:  # A line cut short by a kill.
        continue
      if record.get('step') == steps and metric in record:
        found = record
  return found


def claim(prepared: Prepared) -> None:
  """Writes scaling_run.json, or refuses a directory planned otherwise."""
  path = os.path.join(prepared.directory, RUN_FILE)
  record = dict(label=prepared.run.label, strategy=prepared.run.strategy,
                seed=prepared.run.seed,
                overrides=dict(prepared.run.overrides),
                total_steps=prepared.total_steps)
  if os.path.isfile(path):
    with open(path) as f:
      saved = json.load(f)
    if saved != json.loads(json.dumps(record)):
      raise errors.ConfigError(
          f'{prepared.directory} was planned as {saved["overrides"]} '
          f'({saved["total_steps"]} steps), not {record["overrides"]} '
          f'({record["total_steps"]} steps); a changed config needs a new '
          '--workdir.')
    return
  os.makedirs(prepared.directory, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(record, f, indent=2)


def flag(key: str, value: Any) -> str:
  return f'--config.{key}={shlex.quote(str(value))}'


def command(config: Mapping[str, Any], prepared: Prepared,
            python: str = 'python') -> str:
  """The train.py command line that trains this run in its directory."""
  overrides = recipe_overrides(config) | dict(prepared.run.overrides)
  parts = [python, 'train.py',
           f'--config={shlex.quote(config["recipe"] + ":" + config["base"])}',
           f'--workdir={shlex.quote(prepared.directory)}']
  parts += [flag(key, value) for key, value in overrides.items()]
  return ' '.join(parts)


def train(prepared: Prepared, data: Any) -> bool:
  """Trains (or resumes) one run; False when SIGTERM stopped it (saved)."""
  from efficientnet_jax import train_lib  # pylint: disable=g-import-not-at-top
  claim(prepared)
  results = train_lib.train_and_evaluate(prepared.config, prepared.directory,
                                         data=data)
  return not results['preempted']
