"""ImageNet recipe of Tan & Le (2019), as the official TPU code runs it.

Command (variant after the colon: b0..b8, l2, lite0..lite4, edgetpu-s/m/l,
v2-b0..v2-b3, v2-s/m/l/xl, or phi=<float>):

  python train.py --config=configs/imagenet.py:b0 --workdir=runs/b0 \
      --config.data_dir=/data/tfds

Expected top-1 with these defaults (official README, docs/reference.md §8, baseline
preprocessing; `--config.augment=autoaugment` for the AA row): B0 76.7 (AA
77.1), B1 78.7, B2 79.8, B3 81.1, B4 82.5, B5 83.1; B6 84.0 and B7 84.3 are AA
only. The published runs took 350 epochs at global batch 4096 on TPU pods
(TPU-README); we have not yet measured wall time on our hardware. Every
number below is the TPU reference's unless the comment says otherwise.
"""

from __future__ import annotations

import os

import ml_collections

from configs import common
from configs import scaling
from efficientnet_jax.scaling import plan

# TPU-README / TPU-MAIN randaugment_magnitude per variant (docs/reference.md §5.9);
# the flag default 10 elsewhere.
RANDAUGMENT_MAGNITUDE = {'b5': 17, 'b7': 28, 'b8': 28}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The recipe for one variant: 'b0'..'b8', 'l2', 'lite0'..'lite4',
  'edgetpu-s'.., 'v2-b0'..'v2-xl', 'phi=x'.

  EdgeTPU and V2 presets train with this (V1) recipe at their eval
  resolution; V2's progressive learning and per-variant RandAugment/mixup
  are configs/imagenet_v2.py (docs/reference.md §10.7).
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = common.model_config(arg)
  # TPU-MAIN use_bfloat16 (True since 2020; docs/reference.md §5.8): bf16 compute,
  # float32 variables and loss. Set 'float32' on CPU.
  config.execution = common.execution_config('bfloat16')

  config.dataset = 'imagenet2012'
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.train_split = 'train'
  config.eval_split = 'validation'
  # TPU-MAIN augment_name default None: crop + flip only (the README's
  # baseline row); 'autoaugment' (policy v0) or 'randaugment' for the others.
  config.augment = 'none'
  config.randaugment_num_layers = 2  # TPU-MAIN randaugment_num_layers.
  config.randaugment_magnitude = RANDAUGMENT_MAGNITUDE.get(
      config.model.variant, 10)
  config.crop_padding = 32  # TPU-PRE CROP_PADDING (docs/reference.md §6.2).
  # How images leave the host: 'auto' is uint8 where the preprocessing ends in
  # integers (AutoAugment/RandAugment training), float32 elsewhere, both
  # exact; 'uint8' rounds the others too (a quarter of the bytes, not the
  # TPU-PRE input); 'float32' everywhere. The steps normalise on the device.
  config.host_image_dtype = 'auto'
  # Ours: enough to mix examples across ImageNet's 1024 training shards.
  config.shuffle_buffer_size = 16 * 1024
  # None: train at the model's resolution (V2 trains below its eval size).
  config.train_image_size = ml_collections.FieldReference(None, field_type=int)
  config.train_crop_min_area = 0.08  # TPU-PRE Inception crop area [0.08, 1].
  config.eval_center_crop = True  # TPU-PRE; False resizes the whole image.
  config.mixup_alpha = 0.0  # Mixup and CutMix off (mixing.py).
  config.cutmix_alpha = 0.0
  # One stage: no progressive learning (configs/imagenet_v2.py has it).
  config.progressive = common.progressive_config()

  # Global batch 4096 for every published model (docs/reference.md §5.1, issue 546).
  config.batch_size = 4096
  config.eval_batch_size = 1024  # Ours; any multiple of the device count.
  # Micro-batches per optimizer step (the batch is split; same update).
  config.grad_accum_steps = 1
  config.num_epochs = 350.0  # TPU-MAIN train_steps at batch 2048.
  # None: int(num_epochs * train examples / batch_size), as TPU-MAIN.
  config.num_train_steps = ml_collections.FieldReference(None, field_type=int)
  config.learning_rate = 0.016  # Per 256 images, scaled linearly (TPU-MAIN).
  config.warmup_epochs = 5.0  # TPU-MAIN lr_warmup_epochs.
  config.lr_decay_epochs = 2.4  # TPU-MAIN lr_decay_epoch, staircase.
  config.lr_decay_factor = 0.97  # TPU-MAIN lr_decay_factor.
  config.rmsprop_decay = 0.9  # TPU-UTILS build_optimizer.
  config.rmsprop_momentum = 0.9  # TPU-UTILS build_optimizer.
  config.rmsprop_epsilon = 1e-3  # TPU-UTILS build_optimizer (inside sqrt).
  config.weight_decay = 1e-5  # TPU-MAIN, coupled L2 on non-BN tensors.
  config.weight_decay_biases = True  # TPU-MAIN decays SE/classifier biases.
  config.label_smoothing = 0.1  # TPU-MAIN.
  config.ema_decay = 0.9999  # TPU-MAIN moving_average_decay.
  # A train.py workdir or converter output to start from (fine-tuning).
  config.init_checkpoint = ml_collections.FieldReference(None, field_type=str)

  # Bookkeeping (ours).
  config.eval_every_epochs = 5.0
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  config.keep_checkpoints = 3
  config.profile_steps = 5  # Profile a few early steps; 0 turns it off.
  return config


def sweep() -> list[dict[str, float]]:
  """The compound-scaling rule at phi = 0..3 (resolution follows gamma**phi).

  The overrides of `python -m efficientnet_jax.scaling sweep
  --config=configs/scaling.py:b0 --config.recipe=configs/imagenet.py`, one
  dict per phi (its seed-0 runs), which also trains and plots them.
  """
  config = scaling.get_config('b0')
  config.recipe = os.path.join(os.path.dirname(__file__), 'imagenet.py')
  return [{key: value for key, value in run.overrides if key != 'seed'}
          for run in plan.sweep_plan(config, num_classes=1000)
          if run.seed == 0]
