"""Offline demo: EfficientNet-B0 at 32 px on sklearn's handwritten digits.

Command (what `make demo` runs; no download, CPU is enough):

  python train.py --config=configs/demo.py --workdir=runs/demo
  python eval.py --config=configs/demo.py --checkpoint=runs/demo

The B0 layout (16 blocks, 4.0M parameters with a 10-class head) trained from
scratch with the ImageNet recipe's optimiser, loss and EMA, on the 8x8 digits
that scikit-learn ships, upsampled to 32 px (the 'digits' TFDS builder in
efficientnet_jax/datasets). Expected test top-1 >= 95%; wall time and
accuracy measured on a 2-core CPU are in the README.
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo recipe; `arg` picks the variant (default b0)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = common.model_config(arg or 'b0')
  config.model.resolution = 32  # The digits are 8x8; 32 px keeps CPU fast.
  config.execution = common.execution_config('float32')  # bf16 is slow on CPU.

  config.dataset = 'digits'
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.train_split = 'train'
  config.eval_split = 'test'
  config.augment = 'none'
  config.randaugment_num_layers = 2
  config.randaugment_magnitude = 10
  config.crop_padding = 0  # Eval on the whole 32 px digit (no centre crop).
  # How images leave the host: 'auto' is uint8 where the preprocessing ends in
  # integers (AutoAugment/RandAugment training), float32 elsewhere, both
  # exact; 'uint8' rounds the others too (a quarter of the bytes, not the
  # TPU-PRE input); 'float32' everywhere. The steps normalise on the device.
  config.host_image_dtype = 'auto'
  config.shuffle_buffer_size = 2048  # The whole training split.
  # None: train at the model's resolution (V2 trains below its eval size).
  config.train_image_size = ml_collections.FieldReference(None, field_type=int)
  config.train_crop_min_area = 0.08  # TPU-PRE Inception crop area [0.08, 1].
  config.eval_center_crop = True  # TPU-PRE; False resizes the whole image.
  config.mixup_alpha = 0.0  # Mixup and CutMix off (mixing.py).
  config.cutmix_alpha = 0.0
  # One stage: no progressive learning (configs/imagenet_v2.py has it).
  config.progressive = common.progressive_config()

  config.batch_size = 64
  config.eval_batch_size = 72  # 360 test digits = 5 full batches.
  # Micro-batches per optimizer step (the batch is split; same update).
  config.grad_accum_steps = 1
  config.num_epochs = 25.0  # 561 steps.
  config.num_train_steps = ml_collections.FieldReference(None, field_type=int)
  # The recipe's schedule shape, compressed for a short run from scratch
  # (ours, measured): a quarter of the reference rate per 256 images (at
  # batch 64 the full rate makes the loss spike), 1 warm-up epoch, x0.85
  # every epoch. The test accuracy lags the training accuracy until the rate
  # is small: BN's running statistics (momentum 0.99, ~100-step memory) only
  # settle once the weights stop moving quickly.
  config.learning_rate = 0.004
  config.warmup_epochs = 1.0
  config.lr_decay_epochs = 1.0
  config.lr_decay_factor = 0.85
  config.rmsprop_decay = 0.9  # TPU-UTILS build_optimizer.
  config.rmsprop_momentum = 0.9
  config.rmsprop_epsilon = 1e-3
  config.weight_decay = 1e-5  # TPU-MAIN.
  config.weight_decay_biases = True  # TPU-MAIN decays SE/classifier biases.
  config.label_smoothing = 0.1  # TPU-MAIN.
  config.ema_decay = 0.9999  # TPU-MAIN; its warm-up dominates a short run.
  config.init_checkpoint = ml_collections.FieldReference(None, field_type=str)

  config.eval_every_epochs = 5.0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  config.profile_steps = 0
  return config
