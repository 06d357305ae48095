"""Transfer recipe: fine-tune an ImageNet checkpoint on a small dataset.

Command (variant and dataset after the colon: cifar10, cifar100,
oxford_flowers102, or any TFDS image dataset with 'train' and 'test' splits):

  python train.py --config=configs/finetune.py:b0,cifar10 \
      --workdir=runs/b0_cifar10 --config.init_checkpoint=CKPT \
      --config.data_dir=/data/tfds
  python train.py --config=configs/finetune.py:v2-s,cifar100 \
      --workdir=runs/v2s_cifar100 --config.init_checkpoint=CKPT

CKPT is a train.py workdir or a converted checkpoint (any family) of the same
variant; its EMA weights are loaded, its normalisation is kept, and only the
classifier is re-initialised for the new classes (train_lib.load_pretrained
logs one line saying so). Images are upsampled to the variant's resolution.

V1, EdgeTPU and Lite variants: the ImageNet recipe's optimiser (RMSProp, L2,
label smoothing, EMA) with a shorter, smaller-batch schedule that is our
choice (the V1 paper's transfer hyperparameters were not available to us).

V2 variants: google/automl efficientnetv2 `ImagenetFt` (datasets.py:730-760,
docs/reference.md §10.7), which its CIFAR/Flowers/Cars fine-tunes use: batch
512, 15 epochs, a constant 0.0005 per 256 images after 1 warm-up epoch, EMA
0.9996, weight decay 1e-5 off BN and biases, label smoothing 0.1, training
at the eval size, no progressive learning. Not followed: its 10,000-step
minimum (set --config.num_train_steps) and its cutout augmentation (we have
crop and flip). Published V2 transfer top-1 (paper Table 8, not checked
against a stored source): not claimed here; expected top-1, wall time and
hardware: not measured yet.
"""

from __future__ import annotations

import ml_collections

from configs import common
from efficientnet_jax import arch

# TFDS names -> (train split, eval split, epochs). Flowers trains on
# train+validation and reports test, the usual protocol for this dataset.
DATASETS = {
    'cifar10': ('train', 'test', 20.0),
    'cifar100': ('train', 'test', 30.0),
    'oxford_flowers102': ('train+validation', 'test', 200.0),
}
# Any other TFDS dataset (check_config looks the name up in TFDS).
OTHER_DATASET = ('train', 'test', 20.0)
V2_EPOCHS = 15.0  # google/automl ImagenetFt.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """'b0,cifar10': the variant and the dataset (default 'b0,cifar10')."""
  variant, _, dataset = (arg or 'b0,cifar10').partition(',')
  dataset = dataset or 'cifar10'
  train_split, eval_split, epochs = DATASETS.get(dataset, OTHER_DATASET)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = common.model_config(variant)
  # As the ImageNet recipe; 'float32' on CPU.
  config.execution = common.execution_config('bfloat16')

  config.dataset = dataset
  config.data_dir = ml_collections.FieldReference(None, field_type=str)
  config.train_split = train_split
  config.eval_split = eval_split
  config.augment = 'none'
  config.randaugment_num_layers = 2
  config.randaugment_magnitude = 10
  config.crop_padding = 32  # TPU-PRE eval crop, as for ImageNet.
  # How images leave the host: 'auto' is uint8 where the preprocessing ends in
  # integers (AutoAugment/RandAugment training), float32 elsewhere, both
  # exact; 'uint8' rounds the others too (a quarter of the bytes, not the
  # TPU-PRE input); 'float32' everywhere. The steps normalise on the device.
  config.host_image_dtype = 'auto'
  config.shuffle_buffer_size = 16 * 1024
  # None: train at the model's resolution (V2 trains below its eval size).
  config.train_image_size = ml_collections.FieldReference(None, field_type=int)
  config.train_crop_min_area = 0.08  # TPU-PRE Inception crop area [0.08, 1].
  config.eval_center_crop = True  # TPU-PRE; False resizes the whole image.
  config.mixup_alpha = 0.0  # Mixup and CutMix off (mixing.py).
  config.cutmix_alpha = 0.0
  # One stage: no progressive learning (configs/imagenet_v2.py has it).
  config.progressive = common.progressive_config()

  config.batch_size = 512
  config.eval_batch_size = 512
  # Micro-batches per optimizer step (the batch is split; same update).
  config.grad_accum_steps = 1
  config.num_epochs = epochs
  config.num_train_steps = ml_collections.FieldReference(None, field_type=int)
  # Per 256 images; a quarter of the ImageNet rate, as the weights are
  # already trained (ours).
  config.learning_rate = 0.004
  config.warmup_epochs = 1.0
  config.lr_decay_epochs = 2.4  # TPU-MAIN staircase shape.
  config.lr_decay_factor = 0.97
  config.rmsprop_decay = 0.9  # TPU-UTILS build_optimizer.
  config.rmsprop_momentum = 0.9
  config.rmsprop_epsilon = 1e-3
  config.weight_decay = 1e-5  # TPU-MAIN.
  config.weight_decay_biases = True  # TPU-MAIN decays SE/classifier biases.
  config.label_smoothing = 0.1  # TPU-MAIN.
  # Ours: ~3 epochs of CIFAR at batch 512, a shorter run than ImageNet's.
  config.ema_decay = 0.999
  config.init_checkpoint = ml_collections.FieldReference(None, field_type=str)

  config.eval_every_epochs = 1.0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.profile_steps = 0
  if config.model.variant.startswith('v2-'):
    use_v2_finetuning(config)
  return config


def use_v2_finetuning(config: ml_collections.ConfigDict) -> None:
  """google/automl efficientnetv2 ImagenetFt (datasets.py:730-760)."""
  config.batch_size = 512
  config.num_epochs = V2_EPOCHS
  config.learning_rate = 0.0005  # lr_base, per 256 images; constant:
  config.lr_decay_factor = 1.0  # a staircase of factor 1.
  config.warmup_epochs = 1.0
  config.ema_decay = 0.9996
  config.weight_decay = 1e-5
  config.weight_decay_biases = False  # main.py skips bias/gamma/beta.
  config.label_smoothing = 0.1
  config.train_image_size = None  # isize=1.0: train at the eval size.
  # preprocessing.py: centre crop only below 320 px.
  config.eval_center_crop = (
      arch.resolve(config.model.to_dict()).resolution < 320)
