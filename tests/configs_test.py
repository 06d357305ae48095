"""Every recipe loads with every variant argument and holds the reference numbers."""

import os
import subprocess
import sys

import pytest

from configs import demo
from configs import finetune
from configs import imagenet
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
    'keep_checkpoints', 'profile_steps', 'model', 'execution')


def all_configs():
  for variant in VARIANTS:
    yield f'imagenet:{variant}', imagenet.get_config(variant)
    yield f'finetune:{variant}', finetune.get_config(f'{variant},cifar100')
    yield f'demo:{variant}', demo.get_config(variant)


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


def test_finetune_rejects_unknown_dataset():
  with pytest.raises(ValueError, match='Unknown fine-tuning dataset'):
    finetune.get_config('b0,mnist')
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

