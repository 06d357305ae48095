"""ImageNet recipe of EfficientNetV2 (Tan & Le, 2021) with progressive learning.

Commands (variant after the colon: v2-b0..v2-b3, v2-s, v2-m, v2-l, v2-xl;
add ',paper' for the paper's Table 6 instead of the official code):

  python train.py --config=configs/imagenet_v2.py:v2-s --workdir=runs/v2-s \
      --config.data_dir=/data/tfds
  python train.py --config=configs/imagenet_v2.py:v2-s,paper \
      --workdir=runs/v2-s-paper --config.data_dir=/data/tfds

Targets (ImageNet-1k top-1 at the eval size; google/automl efficientnetv2
README, docs/reference.md §10.7): v2-b0 78.7, v2-b1 79.8, v2-b2 80.5, v2-b3
82.1, v2-s 83.9, v2-m 85.2, v2-l 85.7; v2-xl was only published pretrained on
ImageNet-21k (87.3), so no 1k-only target. The paper reading targets the
paper's Table 7 (S 83.9, M 85.1, L 85.7). Published runs: 350 epochs at global
batch 4096 on TPU; we have not trained them, so no wall time yet.

Default reading: google/automl efficientnetv2 as its code runs
(effnetv2_configs.py per variant, hparams.py, main.py): 4 stages, the image
size from 128 to the train size without training at 128, RandAugment
magnitude 5 -> `ram`, mixup and CutMix 0 -> alpha, dropout constant; TF1
RMSProp, exponential staircase, EMA 0.9999, weight decay 1e-5 on every
tensor but BN and biases, label smoothing 0.1, survival 0.8, BN momentum 0.9
and epsilon 1e-3 (arch.py's 'v2' family). S-XL crop area 0.05-1, resize
bilinear, eval resizes the whole image at >= 320 px, (x - 128) / 128;
B0-B3 take the V1 input path (bicubic, mean/std, centre crop) with
AutoAugment, as the official `effnetv1_autoaug` does.

',paper' (S, M, L only; the paper has no Table 6 row for the others): size
128 -> 300/380/380 with 128 trained, RandAugment 5 -> 15/20/25, mixup 0 ->
0/0.2/0.4 and no CutMix, dropout 0.1 -> 0.3/0.4/0.5. The paper's BN
momentum 0.99 is not applied: the momentum belongs to the network family.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from configs import common


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of google/automl effnetv2_configs.py:190-231 (its comments give
  the top-1): sizes, dropout, RandAugment max (`ram`), mixup = CutMix alpha."""
  train_size: int
  eval_size: int
  dropout_rate: float
  randaugment_magnitude: float
  mixup_alpha: float
  augment: str
  top1: float | None


VARIANTS = {
    'v2-b0': Variant(192, 224, 0.2, 0, 0.0, 'autoaugment', 78.7),
    'v2-b1': Variant(192, 240, 0.2, 0, 0.0, 'autoaugment', 79.8),
    'v2-b2': Variant(208, 260, 0.3, 0, 0.0, 'autoaugment', 80.5),
    'v2-b3': Variant(240, 300, 0.3, 0, 0.0, 'autoaugment', 82.1),
    'v2-s': Variant(300, 384, 0.2, 10, 0.0, 'randaugment', 83.9),
    'v2-m': Variant(384, 480, 0.3, 15, 0.2, 'randaugment', 85.2),
    'v2-l': Variant(384, 480, 0.4, 20, 0.5, 'randaugment', 85.7),
    'v2-xl': Variant(384, 512, 0.4, 20, 0.5, 'randaugment', None),
}

# Paper Table 6 (leondgarse/keras_efficientnet_v2 README transcription):
# (max size, RandAugment max, mixup max, dropout max); the minima are 128,
# 5, 0 and 0.1 for all three. Top-1: Table 7.
PAPER = {
    'v2-s': (300, 15, 0.0, 0.3, 83.9),
    'v2-m': (380, 20, 0.2, 0.4, 85.1),
    'v2-l': (380, 25, 0.4, 0.5, 85.7),
}
# google/automl preprocessing.py: centre crop only below this eval size.
CENTER_CROP_BELOW = 320


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """'v2-s' (official code) or 'v2-s,paper' (Table 6); default 'v2-s'."""
  variant, _, reading = (arg or 'v2-s').partition(',')
  variant = variant.lower()
  if variant not in VARIANTS:
    raise ValueError(f'Unknown V2 variant {variant!r}; choose one of '
                     f'{", ".join(VARIANTS)} (e.g. configs/imagenet_v2.py:'
                     'v2-s).')
  if reading not in ('', 'code', 'paper'):
    raise ValueError(f'Unknown reading {reading!r}: use '
                     f'configs/imagenet_v2.py:{variant} or {variant},paper.')
  if reading == 'paper' and variant not in PAPER:
    raise ValueError(f'The paper gives progressive settings (Table 6) for '
                     f'{", ".join(PAPER)} only, not {variant}; use '
                     f'configs/imagenet_v2.py:{variant}.')
  row = VARIANTS[variant]
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = common.model_config(variant)
  config.model.dropout_rate = row.dropout_rate  # effnetv2_configs.py.
  # hparams.py mixed_precision: bf16 compute. Set 'float32' on CPU.
  config.execution = common.execution_config('bfloat16')

  config.dataset = 'imagenet2012'
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.augment = row.augment
  config.randaugment_num_layers = 2  # hparams.py: 2 layers.
  config.randaugment_magnitude = float(row.randaugment_magnitude)
  config.crop_padding = 32  # preprocessing.py centre crop s / (s + 32).
  # 'auto': uint8 where the preprocessing ends in integers (AutoAugment/
  # RandAugment training), float32 elsewhere; see configs/imagenet.py.
  config.host_image_dtype = 'auto'
  config.shuffle_buffer_size = 16 * 1024
  config.train_image_size = row.train_size
  # preprocessing.py: area 0.05-1 on the V2 path; B0-B3 use the V1 crop.
  config.train_crop_min_area = 0.08 if row.augment == 'autoaugment' else 0.05
  config.eval_center_crop = row.eval_size < CENTER_CROP_BELOW
  config.mixup_alpha = row.mixup_alpha
  config.cutmix_alpha = row.mixup_alpha
  # main.py: 4 stages, ibase 128, linspace(5, ram) and linspace(0, alpha);
  # the dropout schedule is deleted before use, so dropout stays constant.
  config.progressive = common.progressive_config(
      4, 'code', min_image_size=128,
      # B0-B3 use AutoAugment, which has no magnitude to schedule.
      min_randaugment_magnitude=(5.0 if row.augment == 'randaugment' else
                                 None),
      min_mixup_alpha=0.0, min_cutmix_alpha=0.0)

  config.batch_size = 4096  # hparams.py.
  config.eval_batch_size = 1024  # Ours; any multiple of the device count.
  # Micro-batches per optimizer step (the batch is split; same update).
  config.grad_accum_steps = 1
  config.num_epochs = 350.0  # hparams.py.
  config.num_train_steps = ml_collections.FieldReference(None, field_type=int)
  config.learning_rate = 0.016  # hparams.py lr_base, per 256 images.
  config.warmup_epochs = 5.0  # hparams.py.
  config.lr_decay_epochs = 2.4  # hparams.py exponential staircase.
  config.lr_decay_factor = 0.97
  config.rmsprop_decay = 0.9  # utils.py build_optimizer.
  config.rmsprop_momentum = 0.9
  config.rmsprop_epsilon = 1e-3
  config.weight_decay = 1e-5  # hparams.py.
  config.weight_decay_biases = False  # main.py skips bias/gamma/beta.
  config.label_smoothing = 0.1  # hparams.py.
  config.ema_decay = 0.9999  # hparams.py, num_updates=global_step.
  config.init_checkpoint = ml_collections.FieldReference(None, field_type=str)

  config.eval_every_epochs = 5.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3
  config.profile_steps = 5
  if reading == 'paper':
    size, magnitude, mixup, dropout, _ = PAPER[variant]
    config.train_image_size = size
    config.randaugment_magnitude = float(magnitude)
    config.mixup_alpha = mixup
    config.cutmix_alpha = 0.0  # Table 6 lists mixup only.
    config.model.dropout_rate = dropout
    config.progressive = common.progressive_config(
        4, 'paper', min_image_size=128, min_randaugment_magnitude=5.0,
        min_mixup_alpha=0.0, min_cutmix_alpha=None, min_dropout_rate=0.1)
  return config


def target_top1(arg: str | None = None) -> float | None:
  """The published ImageNet-1k top-1 the recipe `arg` aims at."""
  variant, _, reading = (arg or 'v2-s').partition(',')
  if reading == 'paper':
    return PAPER[variant.lower()][-1]
  return VARIANTS[variant.lower()].top1
