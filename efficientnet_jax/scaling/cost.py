"""The cost estimate printed before a plan trains.

A few steps of the base network are timed once (WORKDIR/timing, kept, so a
restarted job reuses the measurement): the wall time of that short run minus
its steps is the fixed cost of a run (start-up, compilation, the final
eval), and each planned run costs that plus its steps at the base's step
time scaled by its multiply-adds over the base's (`arch.count_macs`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import ml_collections

from efficientnet_jax.scaling import runs as runs_lib

TIMING_DIR = 'timing'
TIMING_FILE = 'timing.json'


@dataclasses.dataclass(frozen=True)
class Timing:
  """The base's measured step time and per-run fixed cost, in seconds."""
  step_seconds: float
  overhead_seconds: float
  base_macs: int


def run_seconds(timing: Timing, steps: int, macs: int) -> float:
  """Estimated wall time of one run of `steps` steps at `macs` per image."""
  return (timing.overhead_seconds +
          steps * timing.step_seconds * macs / timing.base_macs)


def plan_seconds(timing: Timing, prepared: list[runs_lib.Prepared]) -> float:
  return sum(run_seconds(timing, p.total_steps, p.run.macs) for p in prepared)


def measure(config: ml_collections.ConfigDict, base_macs: int, workdir: str,
            data: Any, steps: int) -> Timing:
  """Times `steps` steps of `config` (the base), or reads the saved timing."""
  directory = os.path.join(workdir, TIMING_DIR)
  path = os.path.join(directory, TIMING_FILE)
  if os.path.isfile(path):
    with open(path) as f:
      return Timing(**json.load(f))
  from efficientnet_jax import train_lib  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  config.num_train_steps = steps
  config.log_every_steps = steps
  config.checkpoint_every_steps = 0
  config.eval_every_epochs = 0.0
  start = time.perf_counter()
  train_lib.train_and_evaluate(config, directory, data=data)
  seconds = time.perf_counter() - start
  step_ms = runs_lib.final_metrics(directory, steps, 'perf/step_time_ms')
  step_seconds = step_ms['perf/step_time_ms'] / 1000 if step_ms else (
      seconds / steps)
  timing = Timing(step_seconds=step_seconds,
                  overhead_seconds=max(0.0, seconds - steps * step_seconds),
                  base_macs=base_macs)
  with open(path, 'w') as f:
    json.dump(dataclasses.asdict(timing), f)
  return timing
