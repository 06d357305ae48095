"""Tests for progressive.py: the stage schedule against hand-worked cases."""

import pytest

from configs import common
from efficientnet_jax import progressive


def v2_s_stages(schedule, total_steps=1000, **minima):
  section = common.progressive_config(4, schedule, **minima)
  return progressive.build_stages(
      section, total_steps=total_steps, image_size=300,
      randaugment_magnitude=10.0, mixup_alpha=0.0, cutmix_alpha=0.0,
      dropout_rate=0.2)


def test_code_reading_never_trains_at_the_minimum_size():
  # google/automl main.py, V2-S: int(128 + 172 * (i + 1) / 4); RandAugment
  # np.linspace(5, 10, 4); dropout constant (its list is deleted).
  stages = v2_s_stages('code', min_image_size=128,
                       min_randaugment_magnitude=5.0)
  assert [s.image_size for s in stages] == [171, 214, 257, 300]
  assert [s.randaugment_magnitude for s in stages] == pytest.approx(
      [5.0, 20 / 3, 25 / 3, 10.0])
  assert [s.dropout_rate for s in stages] == [0.2] * 4
  assert [(s.start_step, s.end_step) for s in stages] == [
      (0, 250), (250, 500), (500, 750), (750, 1000)]


def test_paper_reading_spans_min_to_max():
  # Table 6, V2-S: size 128 -> 300, dropout 0.1 -> 0.3 (here to the run's
  # 0.2): int(128 + 172 * i / 3) = 128, 185, 242, 300.
  stages = v2_s_stages('paper', min_image_size=128, min_dropout_rate=0.1)
  assert [s.image_size for s in stages] == [128, 185, 242, 300]
  assert [s.dropout_rate for s in stages] == pytest.approx(
      [0.1, 0.4 / 3, 0.5 / 3, 0.2])
  assert [s.randaugment_magnitude for s in stages] == [10.0] * 4


def test_v2_b2_sizes_and_the_mixing_ramp():
  # B2 trains at 208 px: 148, 168, 188, 208; mixup np.linspace(0, 0.5, 4).
  section = common.progressive_config(4, 'code', min_image_size=128,
                                      min_mixup_alpha=0.0)
  stages = progressive.build_stages(
      section, total_steps=350, image_size=208, randaugment_magnitude=0.0,
      mixup_alpha=0.5, cutmix_alpha=0.5, dropout_rate=0.3)
  assert [s.image_size for s in stages] == [148, 168, 188, 208]
  assert [s.mixup_alpha for s in stages] == pytest.approx(
      [0.0, 1 / 6, 1 / 3, 0.5])
  assert [s.cutmix_alpha for s in stages] == [0.5] * 4  # min None: constant.
  assert [s.start_step for s in stages] == [0, 87, 175, 262]


def test_stage_for_step_at_the_boundaries():
  stages = v2_s_stages('code', total_steps=350, min_image_size=128)
  found = {step: progressive.stage_for_step(step, stages).index
           for step in (0, 86, 87, 174, 175, 261, 262, 349, 350)}
  assert found == {0: 0, 86: 0, 87: 1, 174: 1, 175: 2, 261: 2, 262: 3,
                   349: 3, 350: 3}


def test_one_stage_is_the_run_itself():
  section = common.progressive_config(min_image_size=128,
                                      min_randaugment_magnitude=5.0)
  (stage,) = progressive.build_stages(
      section, total_steps=10, image_size=224, randaugment_magnitude=10,
      mixup_alpha=0.2, cutmix_alpha=0.0, dropout_rate=0.2)
  assert (stage.start_step, stage.end_step, stage.image_size,
          stage.randaugment_magnitude, stage.mixup_alpha) == (0, 10, 224, 10,
                                                              0.2)
