"""Progressive learning (EfficientNetV2, Tan & Le 2021, Sec. 4.2).

Training is cut into `num_stages` equal runs of steps. Each stage trains at
its own image size, RandAugment magnitude, mixup and CutMix alpha and head
dropout, all rising from a minimum to the run's own (maximum) setting; the
optimizer, EMA and learning-rate schedule run on across the stages unchanged.
Two readings of how the settings rise (docs/reference.md §10.7):

- 'code', google/automl efficientnetv2 main.py: stage i of N (0-based) trains
  at int(min + (max - min) * (i + 1) / N), so the minimum size itself is never
  used; the other settings are np.linspace(min, max, N)[i].
- 'paper', Table 6: every setting is linspace(min, max, N)[i], sizes
  truncated to int, so stage 0 trains at the minimum and the last at the
  maximum.

A minimum of None keeps that setting constant at its maximum (the official
code builds a dropout list and deletes it, so its dropout is constant).
Stage i covers steps [i * total // N, (i + 1) * total // N): the official
int(i / N * epochs) epoch boundaries, counted in steps.

Pure Python, no jax: the loop and validate.py both read it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

SCHEDULES = ('code', 'paper')


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage's steps [start_step, end_step) and its settings."""
  index: int
  num_stages: int
  start_step: int
  end_step: int
  image_size: int
  randaugment_magnitude: float
  mixup_alpha: float
  cutmix_alpha: float
  dropout_rate: float

  def describe(self) -> str:
    return (f'stage {self.index + 1}/{self.num_stages} (steps '
            f'{self.start_step}-{self.end_step}): {self.image_size}px, '
            f'RandAugment magnitude {self.randaugment_magnitude:.4g}, mixup '
            f'{self.mixup_alpha:.4g}, CutMix {self.cutmix_alpha:.4g}, dropout '
            f'{self.dropout_rate:.4g}')


def interpolate(low: float | None, high: float, index: int,
                num_stages: int) -> float:
  """np.linspace(low, high, num_stages)[index]; `high` for one stage or a
  None `low`."""
  if low is None or num_stages == 1:
    return float(high)
  return low + (high - low) * index / (num_stages - 1)


def stage_image_size(low: int, high: int, index: int, num_stages: int,
                     schedule: str) -> int:
  """The image size of stage `index` under `schedule` ('code' or 'paper')."""
  if schedule == 'code':
    return int(low + (high - low) * (index + 1) / num_stages)
  if schedule == 'paper':
    return int(interpolate(low, high, index, num_stages))
  raise ValueError(f'schedule {schedule!r}: use one of {SCHEDULES}.')


def stage_bounds(index: int, num_stages: int, total_steps: int
                 ) -> tuple[int, int]:
  """[start, end) steps of stage `index`."""
  return (index * total_steps // num_stages,
          (index + 1) * total_steps // num_stages)


def build_stages(progressive: Mapping[str, Any], *, total_steps: int,
                 image_size: int, randaugment_magnitude: float,
                 mixup_alpha: float, cutmix_alpha: float,
                 dropout_rate: float) -> tuple[Stage, ...]:
  """Every stage of a run.

  Args:
    progressive: the config's progressive section (num_stages, schedule and
      the min_* fields).
    total_steps: the run's steps.
    image_size, randaugment_magnitude, mixup_alpha, cutmix_alpha,
      dropout_rate: the run's own settings, which the last stage reaches.

  Returns:
    num_stages Stages covering [0, total_steps) in order.
  """
  num_stages = progressive['num_stages']
  stages = []
  for index in range(num_stages):
    start, end = stage_bounds(index, num_stages, total_steps)
    min_size = progressive['min_image_size']
    stages.append(Stage(
        index=index, num_stages=num_stages, start_step=start, end_step=end,
        image_size=(image_size if min_size is None or num_stages == 1 else
                    stage_image_size(min_size, image_size, index, num_stages,
                                     progressive['schedule'])),
        randaugment_magnitude=interpolate(
            progressive['min_randaugment_magnitude'], randaugment_magnitude,
            index, num_stages),
        mixup_alpha=interpolate(progressive['min_mixup_alpha'], mixup_alpha,
                                index, num_stages),
        cutmix_alpha=interpolate(progressive['min_cutmix_alpha'],
                                 cutmix_alpha, index, num_stages),
        dropout_rate=interpolate(progressive['min_dropout_rate'],
                                 dropout_rate, index, num_stages)))
  return tuple(stages)


def stage_for_step(step: int, stages: Sequence[Stage]) -> Stage:
  """The stage that trains step `step` (0-based; the last one at the end)."""
  for stage in stages:
    if step < stage.end_step:
      return stage
  return stages[-1]
