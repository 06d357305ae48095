"""Tests for validate.py: every recipe passes, every bad value is one line."""

import pytest

from configs import demo
from configs import demo_v2
from configs import finetune
from configs import imagenet
from configs import imagenet_v2
from efficientnet_jax import arch
from efficientnet_jax import errors
from efficientnet_jax import validate

VARIANTS = [*arch.PRESETS, 'phi=0', 'phi=2.5', 'lite-phi=1']


@pytest.mark.parametrize('variant', VARIANTS)
def test_every_recipe_passes(variant):
  for config in (imagenet.get_config(variant), demo.get_config(variant),
                 finetune.get_config(f'{variant},cifar100')):
    validate.check_config(config)


@pytest.mark.parametrize('arg', [*imagenet_v2.VARIANTS, 'v2-s,paper',
                                 'v2-m,paper', 'v2-l,paper'])
def test_every_v2_recipe_passes(arg):
  validate.check_config(imagenet_v2.get_config(arg))
  validate.check_config(demo_v2.get_config('staged' if 'b' in arg else
                                           'unstaged'))


def test_stages_fit_the_steps_when_steps_are_given():
  config = demo_v2.get_config('staged').to_dict()
  config['num_train_steps'] = 3
  with pytest.raises(errors.ConfigError, match=r'num_stages=4 does not fit '
                     r'config.num_train_steps=3: use at most one stage per '
                     r'step\.$'):
    validate.check_config(config)


BAD = [
    ('model.phi', 100.0, 'config.model.phi=100.0 is not allowed: use a finite '
     'number in [0, 14]'),
    ('model.phi', -1.0, 'in [0, 14]'),
    ('model.alpha', 0.0, 'config.model.alpha=0.0 is not allowed: use a finite '
     'number > 0'),
    ('model.gamma', -1.0, '> 0'),
    ('model.resolution', 0, 'config.model.resolution=0 is not allowed: use an '
     'integer >= 32 or None'),
    ('model.resolution', -5, '>= 32'),
    ('model.resolution', 100000, 'TMACs per image'),
    ('model.variant', 'b9', "config.model.variant='b9' is not allowed: use one "
     'of b0'),
    ('model.dropout_rate', 1.0, 'in [0, 1)'),
    ('model.drop_path_rate', -0.1, 'in [0, 1)'),
    ('execution.dtype', 'float64', "one of 'float32', 'bfloat16', 'float16'"),
    ('execution.dtype', 'float16', 'loss scaling'),
    ('model.padding', 'valid', "one of 'same', 'symmetric'"),
    ('execution.recompute', 'some', "'all', 'project', 'none', True or False"),
    ('execution.depthwise_impl', 'fast', "one of 'auto'"),
    ('model.bn_group_size', 0, 'an integer >= 1 or None'),
    ('execution.recompute_min_bytes', -1, '>= 0'),
    ('batch_size', 0, 'config.batch_size=0 is not allowed: use an integer >= 1'),
    ('batch_size', True, 'an integer >= 1'),
    ('eval_batch_size', -8, '>= 1'),
    ('num_epochs', 0.0, 'config.num_epochs=0.0 is not allowed: use a finite '
     'number > 0'),
    ('num_epochs', float('nan'), 'finite'),
    ('num_train_steps', 0, 'an integer >= 1 or None'),
    ('warmup_epochs', -1.0, '>= 0'),
    ('lr_decay_epochs', 0.0, '> 0'),
    ('lr_decay_factor', 1.5, 'in (0, 1]'),
    ('learning_rate', 0.0, '> 0'),
    ('label_smoothing', 1.0, 'in [0, 1)'),
    ('ema_decay', 1.0, 'in [0, 1)'),
    ('rmsprop_decay', -0.5, 'in [0, 1)'),
    ('rmsprop_epsilon', 0.0, '> 0'),
    ('weight_decay', -1e-5, '>= 0'),
    ('augment', 'mixup', "config.augment='mixup' is not allowed: use one of "
     "'none', 'autoaugment', 'randaugment'"),
    ('randaugment_num_layers', -1, '>= 0'),
    ('crop_padding', -1, '>= 0'),
    ('shuffle_buffer_size', 0, '>= 1'),
    ('log_every_steps', -1, '>= 0'),
    ('checkpoint_every_steps', -1, '>= 0'),
    ('keep_checkpoints', 0, '>= 1'),
    ('profile_steps', -2, '>= 0'),
    ('eval_every_epochs', float('inf'), 'a finite number'),
    ('dataset', 'Not A Name', 'is not a dataset name'),
    ('dataset', 'no_such_dataset_xyz', 'is not a known dataset'),
    ('init_checkpoint', '/no/such/dir', 'is not a directory'),
    ('train_split', '', 'a non-empty string'),
    ('progressive.num_stages', 30, 'config.progressive.num_stages=30 does '
     'not fit config.num_epochs=25.0: use at most one stage per epoch'),
    ('progressive.num_stages', 0, 'an integer >= 1'),
    ('progressive.schedule', 'linear', "one of 'code', 'paper'"),
    ('progressive.min_image_size', 16, 'config.progressive.min_image_size=16 '
     'is not allowed: use an integer in [32, 32] or None (the stages rise to '
     'the train image size, 32)'),
    ('progressive.min_randaugment_magnitude', 12.0, 'in [0, 10] or None'),
    ('progressive.min_randaugment_magnitude', -1.0, 'in [0, 10] or None'),
    ('progressive.min_mixup_alpha', 0.5, 'in [0, 0] or None (the stages rise '
     'to config.mixup_alpha, 0.0)'),
    ('progressive.min_dropout_rate', 0.5, 'in [0, 0.2] or None'),
    ('mixup_alpha', -0.1, 'config.mixup_alpha=-0.1 is not allowed: use a '
     'finite number >= 0'),
    ('cutmix_alpha', -1.0, '>= 0'),
    ('train_image_size', 16, 'an integer >= 32 or None'),
    ('train_crop_min_area', 0.0, 'in (0, 1]'),
    ('eval_center_crop', 'yes', 'True or False'),
    ('weight_decay_biases', 1, 'True or False'),
]


@pytest.mark.parametrize('field,value,message', BAD,
                         ids=[f'{f}={v!r}' for f, v, _ in BAD])
def test_bad_value_is_one_line_naming_field_value_and_allowed(field, value,
                                                              message):
  config = demo.get_config().to_dict()  # Plain dicts: any type can go in.
  *parents, leaf = field.split('.')
  section = config
  for parent in parents:
    section = section[parent]
  section[leaf] = value
  with pytest.raises(errors.ConfigError) as raised:
    validate.check_config(config)
  text = str(raised.value)
  assert message in text and '\n' not in text, text


def test_float16_is_allowed_for_eval_only():
  config = demo.get_config().to_dict()
  config['execution']['dtype'] = 'float16'
  validate.check_config(config, training=False)


def test_execution_fields_are_found_in_either_section():
  config = demo.get_config().to_dict()
  # An older recipe keeps them in its model section; a missing one defaults.
  config['model'].update(dtype='float16', recompute='project')
  del config['execution']
  with pytest.raises(errors.ConfigError, match=r"config\.model\.dtype='float16'"):
    validate.check_config(config)
  config['model']['dtype'] = 'float32'
  validate.check_config(config)
  config['model']['recompute'] = 'sometimes'
  with pytest.raises(errors.ConfigError, match=r'config\.model\.recompute'):
    validate.check_config(config)


def test_large_depth_is_refused_before_the_block_list_is_built():
  config = demo.get_config().to_dict()
  config['model'].update(phi=10.0, alpha=10.0)  # depth 1e10: 1.6e11 blocks.
  with pytest.raises(errors.ConfigError, match='blocks'):
    validate.check_config(config)
  config['model'].update(phi=14.0, alpha=1e300)  # Overflows a float.
  with pytest.raises(errors.ConfigError, match='blocks'):
    validate.check_config(config)


def test_phi_max_is_the_largest_that_fits():
  fits = validate.check_variant(f'phi={validate.PHI_MAX}')
  params, macs = validate.network_size(fits)
  assert params <= validate.MAX_PARAMS and macs <= validate.MAX_MACS_PER_IMAGE
  params, macs = validate.network_size(
      arch.spec_for(f'phi={validate.PHI_MAX + 0.5}'))
  assert params > validate.MAX_PARAMS or macs > validate.MAX_MACS_PER_IMAGE
  # Every published network fits, L2 included.
  for variant in arch.PRESETS:
    validate.check_variant(variant)


def test_network_size_counts_the_published_parameters():
  # parity_test.py: B0 5,288,548 and B7 66,347,960 trainable parameters.
  assert validate.network_size(arch.spec_for('b0'))[0] == 5_288_548
  assert validate.network_size(arch.spec_for('b7'))[0] == 66_347_960
  assert validate.num_blocks('efficientnet', arch.B0_BLOCKS, 3.1) == len(
      arch.spec_for('b7').blocks)
  assert validate.num_blocks('lite', arch.LITE_BLOCKS, 1.8) == len(
      arch.spec_for('lite4').blocks)


def test_check_variant_names_the_flag():
  with pytest.raises(errors.ConfigError, match=r"--variant='b9': Unknown"):
    validate.check_variant('b9')
  with pytest.raises(errors.ConfigError,
                     match=r'--resolution=0 is not allowed: use an integer '
                     '>= 32'):
    validate.check_variant('b0', resolution=0)
  with pytest.raises(errors.ConfigError, match=r'--variant.phi=20.0'):
    validate.check_variant('phi=20')


def test_create_model_applies_the_same_checks():
  import efficientnet_jax  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.ConfigError,
                     match=r"create_model\('b0'\)\.phi=30\.0 is not allowed"):
    efficientnet_jax.create_model('b0', phi=30.0)
  with pytest.raises(errors.ConfigError, match=r'resolution=0 is not allowed'):
    efficientnet_jax.create_model('b0', resolution=0)
  with pytest.raises(errors.ConfigError,
                     match=r'num_classes=0 is not allowed: use an integer >= 1'):
    efficientnet_jax.create_model('b0', num_classes=0)
