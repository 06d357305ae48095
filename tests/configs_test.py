"""Every recipe loads with every variant argument and holds the reference numbers."""

import os
import subprocess
import sys

import pytest

from configs import demo
from configs import demo_v2
from configs import finetune
from configs import imagenet
from configs import imagenet_v2
from efficientnet_jax import arch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = [*arch.PRESETS, 'phi=0', 'phi=2.5', 'lite-phi=1']
# Fields the input pipeline reads (efficientnet_jax/input_pipeline.py) and the
# training loop reads (efficientnet_jax/train_lib.py, optim.py): every recipe
# must define all of them.
REQUIRED_FIELDS = (
    'seed', 'dataset', 'data_dir', 'train_split', 'eval_split', 'augment',
    'randaugment_num_layers', 'randaugment_magnitude', 'crop_padding',
    'host_image_dtype',
    'shuffle_buffer_size', 'batch_size', 'eval_batch_size', 'grad_accum_steps',
    'num_epochs',
    'num_train_steps', 'learning_rate', 'warmup_epochs', 'lr_decay_epochs',
    'lr_decay_factor', 'rmsprop_decay', 'rmsprop_momentum', 'rmsprop_epsilon',
    'weight_decay', 'label_smoothing', 'ema_decay', 'init_checkpoint',
    'eval_every_epochs', 'log_every_steps', 'checkpoint_every_steps',
    'keep_checkpoints', 'profile_steps', 'model', 'execution',
    'train_image_size', 'train_crop_min_area', 'eval_center_crop',
    'mixup_alpha', 'cutmix_alpha', 'weight_decay_biases', 'progressive')
V2_ARGS = [*imagenet_v2.VARIANTS, *(f'{v},paper' for v in imagenet_v2.PAPER)]


def all_configs():
  for variant in VARIANTS:
    yield f'imagenet:{variant}', imagenet.get_config(variant)
    yield f'finetune:{variant}', finetune.get_config(f'{variant},cifar100')
    yield f'demo:{variant}', demo.get_config(variant)
  for arg in V2_ARGS:
    yield f'imagenet_v2:{arg}', imagenet_v2.get_config(arg)
  for arg in demo_v2.READINGS:
    yield f'demo_v2:{arg}', demo_v2.get_config(arg)


@pytest.mark.parametrize('name,config', list(all_configs()),
                         ids=lambda x: x if isinstance(x, str) else '')
def test_recipe_defines_every_field_and_resolves(name, config):
  assert set(REQUIRED_FIELDS) <= set(config.keys()), name
  assert set(config.keys()) <= set(REQUIRED_FIELDS), (
      f'{name}: new fields must be added to REQUIRED_FIELDS and read somewhere')
  spec = arch.resolve(config.model)
  assert spec.resolution > 0 and spec.blocks


def test_imagenet_recipe_is_the_reference():
  config = imagenet.get_config('b0')
  assert config.batch_size == 4096  # docs/reference.md §5.1
  assert config.learning_rate == 0.016
  assert config.warmup_epochs == 5.0
  assert (config.lr_decay_epochs, config.lr_decay_factor) == (2.4, 0.97)
  assert (config.rmsprop_decay, config.rmsprop_momentum,
          config.rmsprop_epsilon) == (0.9, 0.9, 1e-3)
  assert config.weight_decay == 1e-5
  assert config.label_smoothing == 0.1
  assert config.ema_decay == 0.9999
  assert config.num_epochs == 350.0
  assert config.crop_padding == 32
  assert config.model.drop_path_rate == 0.2
  assert config.model.bn_group_size is None  # Synchronised (global) BN.
  assert arch.resolve(config.model).dropout_rate == 0.2
  assert arch.resolve(imagenet.get_config('b7').model).dropout_rate == 0.5
  # RandAugment magnitudes of the published RA checkpoints (docs/reference.md §5.9).
  assert imagenet.get_config('b5').randaugment_magnitude == 17
  assert imagenet.get_config('b7').randaugment_magnitude == 28
  assert imagenet.get_config('b3').randaugment_magnitude == 10


def test_v2_recipe_is_the_official_code_and_the_paper():
  s = imagenet_v2.get_config('v2-s')
  # google/automl effnetv2_configs.py / hparams.py (docs/reference.md §10.7).
  assert (s.train_image_size, arch.resolve(s.model).resolution) == (300, 384)
  assert (s.model.dropout_rate, s.randaugment_magnitude, s.mixup_alpha) == (
      0.2, 10.0, 0.0)
  assert (s.train_crop_min_area, s.eval_center_crop, s.weight_decay_biases,
          s.augment) == (0.05, False, False, 'randaugment')
  assert arch.resolve(s.model).bn_momentum == 0.9
  assert (s.progressive.num_stages, s.progressive.schedule,
          s.progressive.min_image_size, s.progressive.min_dropout_rate) == (
              4, 'code', 128, None)
  l = imagenet_v2.get_config('v2-l')
  assert (l.mixup_alpha, l.cutmix_alpha, l.randaugment_magnitude) == (
      0.5, 0.5, 20.0)
  b0 = imagenet_v2.get_config('v2-b0')
  assert (b0.augment, b0.eval_center_crop, b0.train_image_size) == (
      'autoaugment', True, 192)
  paper = imagenet_v2.get_config('v2-m,paper')  # Table 6.
  assert (paper.train_image_size, paper.randaugment_magnitude,
          paper.mixup_alpha, paper.model.dropout_rate,
          paper.progressive.min_dropout_rate,
          paper.progressive.schedule) == (380, 20.0, 0.2, 0.4, 0.1, 'paper')
  assert imagenet_v2.target_top1('v2-s') == 83.9
  with pytest.raises(ValueError, match='Table 6'):
    imagenet_v2.get_config('v2-xl,paper')


def test_configs_are_locked_against_typos():
  config = imagenet.get_config('b0')
  config.lock()  # As config_flags does (lock_config=True).
  with pytest.raises(AttributeError):
    config.batch_sise = 8
  config.model.phi = 2.5  # The typed placeholders accept their type.
  config.data_dir = '/data'
  config.num_train_steps = 10
  config.init_checkpoint = '/ckpt'
  assert arch.resolve(config.model).name == 'efficientnet-phi2.5'


def test_sweep_overrides_name_real_fields():
  config = imagenet.get_config('b0')
  overrides = imagenet.sweep()
  assert len(overrides) >= 2
  for override in overrides:
    for key, value in override.items():
      node = config
      *parents, leaf = key.split('.')
      for parent in parents:
        node = node[parent]
      assert leaf in node, key
      node[leaf] = value
    arch.resolve(config.model)


def test_finetune_takes_any_dataset_and_the_v2_setting():
  config = finetune.get_config('b0,mnist')  # Any TFDS name: train/test.
  assert (config.dataset, config.train_split, config.eval_split) == (
      'mnist', 'train', 'test')
  v2 = finetune.get_config('v2-s,cifar10')
  # google/automl ImagenetFt (docs/reference.md §10.7).
  assert (v2.batch_size, v2.num_epochs, v2.learning_rate, v2.lr_decay_factor,
          v2.warmup_epochs, v2.ema_decay) == (512, 15.0, 0.0005, 1.0, 1.0,
                                              0.9996)
  assert v2.train_image_size is None and not v2.eval_center_crop
  assert v2.progressive.num_stages == 1 and not v2.weight_decay_biases
  assert finetune.get_config('b0,cifar10').weight_decay_biases
  config = finetune.get_config('b3,oxford_flowers102')
  assert (config.train_split, config.eval_split) == ('train+validation', 'test')
  assert config.model.variant == 'b3'
  assert config.num_epochs == finetune.DATASETS['oxford_flowers102'][2]


def test_configs_load_without_jax():
  # configs/ and arch.py are pure Python: loading every recipe imports
  # neither jax nor TensorFlow (the package's __init__ is lazy).
  code = ('import sys; from configs import demo, finetune, imagenet; '
          'imagenet.get_config("b3"); finetune.get_config("b0,cifar10"); '
          'demo.get_config(); print(sorted(m for m in ("jax", "flax", '
          '"orbax", "tensorflow") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == '[]'

