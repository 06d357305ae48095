"""Offline demo of EfficientNetV2 training: V2-B0 on sklearn's digits.

Commands (no download, CPU is enough; one per reading):

  python train.py --config=configs/demo_v2.py:staged --workdir=runs/demo_v2
  python train.py --config=configs/demo_v2.py:unstaged \
      --workdir=runs/demo_v2_unstaged
  python eval.py --config=configs/demo_v2.py --checkpoint=runs/demo_v2

The demo recipe (configs/demo.py: optimiser, schedule, EMA, 25 epochs of the
'digits' builder) with the V2-B0 network evaluated at 48 px. ':staged' trains
with progressive learning as google/automl runs it (4 stages, sizes
int(32 + 16 * (i + 1) / 4) = 36, 40, 44, 48 px; mixup 0 -> 0.1), ':unstaged'
trains at 48 px with mixup 0.1 throughout. Digits are centred scans, so there
is no crop, flip or RandAugment to schedule (input_pipeline.CENTRED_DATASETS).
Top-1, wall time and the share spent compiling, measured on a 2-core CPU:
docs/experiments.md.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs import demo

READINGS = ('staged', 'unstaged')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """'staged' (default) or 'unstaged'."""
  reading = arg or 'staged'
  if reading not in READINGS:
    raise ValueError(f'Unknown reading {reading!r}: use '
                     'configs/demo_v2.py:staged or configs/demo_v2.py:unstaged.')
  config = demo.get_config('v2-b0')
  config.model.resolution = 48  # Eval size; the digits are 8x8.
  config.train_image_size = 48
  config.mixup_alpha = 0.1  # Ours: light mixing for a 25-epoch run.
  config.weight_decay_biases = False  # google/automl efficientnetv2 main.py.
  if reading == 'staged':
    config.progressive = common.progressive_config(
        4, 'code', min_image_size=32, min_mixup_alpha=0.0)
  return config
