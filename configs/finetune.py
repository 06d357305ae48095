"""Transfer recipe: fine-tune an ImageNet checkpoint on a small dataset.

Command (variant and dataset after the colon; datasets: cifar10, cifar100,
oxford_flowers102):

  python train.py --config=configs/finetune.py:b0,cifar10 \
      --workdir=runs/b0_cifar10 --config.init_checkpoint=CKPT \
      --config.data_dir=/data/tfds

CKPT is a train.py workdir or a converted checkpoint of the same variant; its
EMA weights are loaded, its normalisation is kept, and the classifier is
re-initialised for the new classes. Images are upsampled to the variant's
resolution, as the paper does for its transfer results. The optimiser is the
ImageNet recipe's (RMSProp, L2, label smoothing, EMA) with a shorter,
smaller-batch schedule that is our choice, not the paper's (its transfer
hyperparameters were not available to us). Expected top-1, wall time and
hardware: not measured yet.
"""

from __future__ import annotations

import ml_collections

from configs import common

# TFDS names -> (train split, eval split, epochs). Flowers trains on
# train+validation and reports test, the usual protocol for this dataset.
DATASETS = {
    'cifar10': ('train', 'test', 20.0),
    'cifar100': ('train', 'test', 30.0),
    'oxford_flowers102': ('train+validation', 'test', 200.0),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """'b0,cifar10': the variant and the dataset (default 'b0,cifar10')."""
  variant, _, dataset = (arg or 'b0,cifar10').partition(',')
  dataset = dataset or 'cifar10'
  if dataset not in DATASETS:
    raise ValueError(f'Unknown fine-tuning dataset {dataset!r}; choose one of '
                     f'{", ".join(DATASETS)} (e.g. configs/finetune.py:b0,'
                     'cifar100).')
  train_split, eval_split, epochs = DATASETS[dataset]
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
  config.label_smoothing = 0.1  # TPU-MAIN.
  # Ours: ~3 epochs of CIFAR at batch 512, a shorter run than ImageNet's.
  config.ema_decay = 0.999
  config.init_checkpoint = ml_collections.FieldReference(None, field_type=str)

  config.eval_every_epochs = 1.0
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.profile_steps = 0
  return config
