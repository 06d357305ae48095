"""One check of a config before anything runs: every field's type and range.

`check_config(config)` raises `errors.ConfigError` with one line that names the
field, its value and what is allowed. train.py and eval.py call it before the
library touches the dataset or the workdir; `create_model` and the converters
check their variant and resolution with `check_model_section`.

Pure Python (no jax, no TensorFlow): a bad value fails in well under a second.
Execution fields (dtype, recompute, ...) are found by name in `config.model`
or `config.execution`, wherever the recipe keeps them.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Mapping

from efficientnet_jax import arch
from efficientnet_jax import errors
from efficientnet_jax import progressive

# The input pipeline's augmentations (input_pipeline.AUGMENTATIONS).
AUGMENTATIONS = ('none', 'autoaugment', 'randaugment')
# The dtype images leave the host in (input_pipeline.host_image_dtype).
HOST_IMAGE_DTYPES = ('auto', 'uint8', 'float32')
# Datasets the recipes name; any other TFDS name is looked up in its registry.
KNOWN_DATASETS = ('digits', 'imagenet2012', 'cifar10', 'cifar100',
                  'oxford_flowers102')
DTYPES = ('float32', 'bfloat16', 'float16')
PADDINGS = ('same', 'symmetric')
# execution.py's choices; 'auto' picks the backend's.
KERNELS = ('auto', 'cpu', 'xla')
DEPTHWISE_IMPLS = ('auto', 'shifted', 'grouped')
RECOMPUTE_POLICIES = ('auto', 'all', 'project', 'none')
SECTIONS = ('model', 'execution')
PROGRESSIVE_FIELDS = ('num_stages', 'schedule', 'min_image_size',
                      'min_randaugment_magnitude', 'min_mixup_alpha',
                      'min_cutmix_alpha', 'min_dropout_rate')

# The size of network one accelerator can train. The largest published
# network, L2 (width 4.3, depth 5.3, 800 px), has 480M parameters and 0.48
# TMACs per image (`network_size`). A training state is about five float32
# copies of the parameters (weights, EMA, two RMSProp slots, gradients), so 2e9
# parameters take ~40 GB, half an 80 GB accelerator, before activations; 4
# TMACs per image (8x L2; B7 at 600 px is 0.038) is where the activations one
# image keeps for the backward pass reach tens of GB.
MAX_PARAMS = 2_000_000_000
MAX_MACS_PER_IMAGE = 4_000_000_000_000
# Refused before the block list is built, which for a large depth runs in
# pure Python until memory runs out (L2 has 88 blocks, the rule at PHI_MAX 208).
MAX_BLOCKS = 1_000
# With the paper's alpha, beta, gamma, phi = 14 (878M parameters, 3.4 TMACs
# at 1584 px) is the last step of 0.5 under both limits; 14.5 needs 5.0 TMACs
# (test_phi_max_is_the_largest_that_fits).
PHI_MAX = 14.0
MIN_RESOLUTION = 32  # Five stride-2 layers reduce the image 32 times.

Rule = Callable[[Any], str | None]  # None when the value is allowed.


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool) and
          math.isfinite(value))


def integer(low: int | None = None, high: int | None = None, *,
            optional: bool = False) -> Rule:
  """An int in [low, high] (None: unbounded); `optional` also allows None."""
  def rule(value):
    if value is None and optional:
      return None
    if not _is_int(value) or (low is not None and value < low) or (
        high is not None and value > high):
      return 'an integer' + _bounds(low, high, '[') + (' or None' if optional
                                                       else '')
    return None
  return rule


def number(low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False,
           optional: bool = False) -> Rule:
  """A finite number in the interval; `optional` also allows None."""
  def rule(value):
    if value is None and optional:
      return None
    ok = _is_number(value)
    if ok and low is not None:
      ok = value > low if low_open else value >= low
    if ok and high is not None:
      ok = value < high if high_open else value <= high
    if not ok:
      return ('a finite number' + _bounds(low, high, '(' if low_open else '[',
                                          ')' if high_open else ']') +
              (' or None' if optional else ''))
    return None
  return rule


def _bounds(low, high, left='[', right=']') -> str:
  if low is None and high is None:
    return ''
  if high is None:
    return f' {">" if left == "(" else ">="} {low:g}'
  if low is None:
    return f' {"<" if right == ")" else "<="} {high:g}'
  return f' in {left}{low:g}, {high:g}{right}'


def one_of(choices: tuple[Any, ...]) -> Rule:
  def rule(value):
    if value not in choices:
      return 'one of ' + ', '.join(repr(c) for c in choices)
    return None
  return rule


def text(*, optional: bool = False) -> Rule:
  def rule(value):
    if value is None and optional:
      return None
    if not isinstance(value, str) or not value.strip():
      return 'a non-empty string' + (' or None' if optional else '')
    return None
  return rule


def boolean() -> Rule:
  def rule(value):
    if not isinstance(value, bool):
      return 'True or False'
    return None
  return rule


def _recompute(value: Any) -> str | None:
  if isinstance(value, bool) or value in RECOMPUTE_POLICIES:
    return None
  return ('one of ' + ', '.join(repr(p) for p in RECOMPUTE_POLICIES) +
          ', True or False')


def _variant(value: Any) -> str | None:
  if isinstance(value, str) and value.lower() in arch.PRESETS:
    return None
  return 'one of ' + ', '.join(arch.PRESETS)


# The model section: what the network is.
MODEL_RULES: dict[str, Rule] = dict(
    variant=_variant,
    phi=number(0, PHI_MAX, optional=True),
    alpha=number(0, low_open=True),
    beta=number(0, low_open=True),
    gamma=number(0, low_open=True),
    depth_divisor=integer(1),
    drop_path_rate=number(0, 1, high_open=True),
    dropout_rate=number(0, 1, high_open=True, optional=True),
    resolution=integer(MIN_RESOLUTION, optional=True),
    padding=one_of(PADDINGS),
    bn_group_size=integer(1, optional=True),
)
# How the network runs (execution.py): in `config.execution`, or in
# `config.model` for an older recipe; a missing one takes execution.DEFAULTS.
EXECUTION_RULES: dict[str, Rule] = dict(
    dtype=one_of(DTYPES),
    kernels=one_of(KERNELS),
    depthwise_impl=one_of(DEPTHWISE_IMPLS),
    recompute=_recompute,
    recompute_min_bytes=integer(0),
    inference_chunk_bytes=integer(0, optional=True),
)
# Every top-level field of the recipes (tests/configs_test.py REQUIRED_FIELDS).
TOP_RULES: dict[str, Rule] = dict(
    seed=integer(),
    dataset=text(),
    data_dir=text(optional=True),
    train_split=text(),
    eval_split=text(),
    augment=one_of(AUGMENTATIONS),
    randaugment_num_layers=integer(0),
    randaugment_magnitude=number(0),  # TPU-AA levels, never clipped (B7: 28).
    crop_padding=integer(0),
    host_image_dtype=one_of(HOST_IMAGE_DTYPES),
    shuffle_buffer_size=integer(1),
    train_image_size=integer(MIN_RESOLUTION, optional=True),
    train_crop_min_area=number(0, 1, low_open=True),
    eval_center_crop=boolean(),
    mixup_alpha=number(0),
    cutmix_alpha=number(0),
    batch_size=integer(1),
    eval_batch_size=integer(1),
    grad_accum_steps=integer(1),
    num_epochs=number(0, low_open=True),
    num_train_steps=integer(1, optional=True),
    learning_rate=number(0, low_open=True),
    warmup_epochs=number(0),
    lr_decay_epochs=number(0, low_open=True),
    lr_decay_factor=number(0, 1, low_open=True),
    rmsprop_decay=number(0, 1, high_open=True),
    rmsprop_momentum=number(0, 1, high_open=True),
    rmsprop_epsilon=number(0, low_open=True),
    weight_decay=number(0),
    weight_decay_biases=boolean(),
    label_smoothing=number(0, 1, high_open=True),
    ema_decay=number(0, 1, high_open=True),
    init_checkpoint=text(optional=True),
    eval_every_epochs=number(),  # <= 0: no periodic eval (the last step is).
    log_every_steps=integer(0),
    checkpoint_every_steps=integer(0),
    # orbax max_to_keep: 0 would delete every checkpoint as it is written.
    keep_checkpoints=integer(1),
    profile_steps=integer(0),
)


def _fail(field: str, value: Any, allowed: str) -> errors.ConfigError:
  return errors.ConfigError(f'{field}={value!r} is not allowed: use {allowed}.')


def check_field(field: str, value: Any, rule: Rule) -> None:
  """Raises the one-line ConfigError when `rule` refuses `value`."""
  allowed = rule(value)
  if allowed is not None:
    raise _fail(field, value, allowed)


def _find(config: Any, name: str) -> tuple[str, Any] | None:
  """('config.model.dtype', value) wherever a model/execution field lives."""
  for section_name in SECTIONS:
    section = config[section_name] if section_name in config else None
    if section is not None and name in section:
      return f'config.{section_name}.{name}', section[name]
  return None


def check_config(config: Mapping[str, Any], *, training: bool = True) -> None:
  """Checks every field of a recipe; raises errors.ConfigError on the first bad one.

  Args:
    config: a recipe from configs/ after the command line's overrides.
    training: also refuse what only training cannot do (float16 without loss
      scaling); eval.py passes False.

  Raises:
    errors.ConfigError: one line naming the field, the value and what is
      allowed.
  """
  for name, rule in TOP_RULES.items():
    if name not in config:
      raise errors.ConfigError(f'config has no field {name!r}; every recipe '
                               'defines it (see configs/imagenet.py).')
    check_field(f'config.{name}', config[name], rule)
  if 'model' not in config:
    raise errors.ConfigError('config has no model section (config.model).')
  if config['batch_size'] % config['grad_accum_steps']:
    raise errors.ConfigError(
        f'config.grad_accum_steps={config["grad_accum_steps"]!r} does not '
        f'divide config.batch_size={config["batch_size"]!r}: use a divisor '
        'of the batch.')
  check_dataset_name(config['dataset'])
  if config['init_checkpoint'] is not None and not os.path.isdir(
      config['init_checkpoint']):
    raise errors.ConfigError(
        f'config.init_checkpoint={config["init_checkpoint"]!r} is not a '
        'directory: pass a train.py workdir or a convert --output.')
  spec = check_model_section(config['model'], execution=config,
                             training=training)
  if training:
    check_progressive(config, spec)


def check_progressive(config: Mapping[str, Any], spec: arch.ArchSpec) -> None:
  """The stage list must fit the run (efficientnet_jax/progressive.py).

  At most one stage per epoch (or per step with num_train_steps), sizes
  the network takes, and each minimum inside [lowest allowed, the run's own
  value] it rises to.
  """
  if 'progressive' not in config:
    raise errors.ConfigError('config has no progressive section '
                             '(config.progressive; configs/common.py).')
  section = config['progressive']
  for name in PROGRESSIVE_FIELDS:
    if name not in section:
      raise errors.ConfigError(f'config.progressive has no field {name!r}.')
  num_stages = section['num_stages']
  check_field('config.progressive.num_stages', num_stages, integer(1))
  check_field('config.progressive.schedule', section['schedule'],
              one_of(progressive.SCHEDULES))
  if config['num_train_steps'] is None:
    limit, what = config['num_epochs'], f'num_epochs={config["num_epochs"]!r}'
  else:
    limit = config['num_train_steps']
    what = f'num_train_steps={config["num_train_steps"]!r}'
  if num_stages > limit:
    raise errors.ConfigError(
        f'config.progressive.num_stages={num_stages!r} does not fit '
        f'config.{what}: use at most one stage per '
        f'{"epoch" if config["num_train_steps"] is None else "step"}.')
  train_size = config['train_image_size'] or spec.resolution
  maxima = dict(
      min_image_size=(MIN_RESOLUTION, train_size, 'the train image size'),
      min_randaugment_magnitude=(0, config['randaugment_magnitude'],
                                 'config.randaugment_magnitude'),
      min_mixup_alpha=(0, config['mixup_alpha'], 'config.mixup_alpha'),
      min_cutmix_alpha=(0, config['cutmix_alpha'], 'config.cutmix_alpha'),
      min_dropout_rate=(0, spec.dropout_rate, 'config.model.dropout_rate'))
  for name, (low, high, source) in maxima.items():
    rule = (integer(low, high, optional=True) if name == 'min_image_size'
            else number(low, high, optional=True))
    allowed = rule(section[name])
    if allowed is not None:
      raise errors.ConfigError(
          f'config.progressive.{name}={section[name]!r} is not allowed: use '
          f'{allowed} (the stages rise to {source}, {high!r}).')


def check_model_section(model: Mapping[str, Any], *,
                        execution: Mapping[str, Any] | None = None,
                        training: bool = False,
                        prefix: str = 'config.model') -> arch.ArchSpec:
  """Checks a model section's fields and the network's size; returns its spec.

  Args:
    model: the model section (configs/common.py model_config, or the dict
      arch.parse_variant returns plus overrides).
    execution: the whole config, to find the execution fields in its `model`
      or `execution` section; None checks only those present in `model`.
    training: refuse float16 (the loop has no loss scaling).
    prefix: how messages name the section ('--variant' for the converters).

  Returns:
    The resolved arch.ArchSpec.
  """
  for name, rule in MODEL_RULES.items():
    if name not in model:
      if execution is None and name not in arch.default_model_config():
        continue  # A variant's fields (arch.parse_variant) lack `padding`.
      raise errors.ConfigError(f'{prefix} has no field {name!r}.')
    check_field(f'{prefix}.{name}', model[name], rule)
  for name, rule in EXECUTION_RULES.items():
    found = (_find(execution, name) if execution is not None else
             ((f'{prefix}.{name}', model[name]) if name in model else None))
    if found is None:
      continue
    field, value = found
    check_field(field, value, rule)
    if name == 'dtype' and value == 'float16' and training:
      raise errors.ConfigError(
          f"{field}='float16' is not allowed for training: float16 "
          'gradients underflow without loss scaling, which the training '
          "loop does not do (issue 16); use 'bfloat16' or 'float32'.")
  return check_network_size(model, prefix=prefix)


def check_network_size(model: Mapping[str, Any], *,
                       prefix: str = 'config.model') -> arch.ArchSpec:
  """Refuses a network too large for one accelerator, before building it."""
  preset = arch.PRESETS[str(model['variant']).lower()]
  if model['phi'] is None:
    width, depth, resolution = (preset.width_coefficient,
                                preset.depth_coefficient, preset.resolution)
    how = f'{prefix}.variant={model["variant"]!r}'
  else:
    try:
      width, depth, resolution = arch.compound_coefficients(
          float(model['phi']), model['alpha'], model['beta'], model['gamma'])
    except OverflowError:
      width = depth = resolution = math.inf
    how = (f'{prefix}.phi={model["phi"]!r} with alpha={model["alpha"]!r}, '
           f'beta={model["beta"]!r}, gamma={model["gamma"]!r}')
  if model['resolution'] is not None:
    resolution = model['resolution']
    how += f', resolution={resolution}'
  block_strings = check_block_strings(model, prefix=prefix)
  blocks = (math.inf if not math.isfinite(depth) else
            num_blocks(preset.family, block_strings, depth))
  if blocks > MAX_BLOCKS or not math.isfinite(width) or not math.isfinite(
      resolution):
    raise errors.ConfigError(
        f'{how} asks for {blocks:,.0f} blocks (depth {depth:.3g}), width '
        f'{width:.3g} at {resolution:.3g}px: more than one accelerator trains '
        f'(at most {MAX_BLOCKS:,} blocks; phi <= {PHI_MAX:g} with the '
        "paper's coefficients).")
  if resolution < MIN_RESOLUTION:
    raise errors.ConfigError(
        f'{how} gives a {resolution}px input: use a resolution of at least '
        f'{MIN_RESOLUTION} (five stride-2 layers).')
  spec = arch.resolve(dict(model) | dict(resolution=int(resolution)))
  params, macs = network_size(spec)
  if params > MAX_PARAMS or macs > MAX_MACS_PER_IMAGE:
    raise errors.ConfigError(
        f'{how} gives {spec.name} at {spec.resolution}px with {params:,} '
        f'parameters and {macs / 1e9:,.0f} GMACs per image: more than one '
        f'accelerator trains (at most {MAX_PARAMS / 1e9:g}B parameters and '
        f'{MAX_MACS_PER_IMAGE / 1e12:g} TMACs per image; phi <= {PHI_MAX:g} '
        "with the paper's coefficients).")
  return spec


def check_block_strings(model: Mapping[str, Any], *,
                        prefix: str = 'config.model') -> tuple[str, ...]:
  """The section's stage table, each block string decoded once to refuse a
  malformed one by name."""
  block_strings = arch.base_block_strings(model)
  for block_string in block_strings:
    try:
      arch.decode_block_string(block_string)
    except ValueError as error:
      raise errors.ConfigError(
          f'{prefix}.blocks: {block_string!r} is not a block string ({error}); '
          "write e.g. 'r1_k3_s11_e1_i32_o16_se0.25' (docs/reference.md "
          '§10).') from None
  if not block_strings:
    raise errors.ConfigError(f'{prefix}.blocks is empty: give at least one '
                             'block string, or None for the variant\'s.')
  return block_strings


def num_blocks(family: str, block_strings: tuple[str, ...],
               depth: float) -> int:
  """Blocks of a network of that depth coefficient, without building them."""
  blocks = 0
  for index, block_string in enumerate(block_strings):
    repeats = arch.decode_block_string(block_string).repeats
    fixed = family == 'lite' and index in (0, len(block_strings) - 1)
    blocks += repeats if fixed else arch.round_repeats(repeats, depth)
  return blocks


def network_size(spec: arch.ArchSpec, num_classes: int = 1000
                 ) -> tuple[int, int]:
  """(trainable parameters, multiply-adds per image), from the spec alone.

  The parameters counted as models.EfficientNet creates them (BN scale and
  bias, SE biases, classifier bias; parity_test pins B0 at 5,288,548).
  """
  params = 3 * 3 * 3 * spec.stem_filters + 2 * spec.stem_filters
  for block in spec.blocks:
    mid = block.mid_filters
    if block.expand_ratio != 1:
      params += block.in_filters * mid + 2 * mid
    params += block.kernel_size**2 * mid + 2 * mid
    if block.se_filters:
      params += 2 * mid * block.se_filters + block.se_filters + mid
    params += mid * block.out_filters + 2 * block.out_filters
  last = spec.blocks[-1].out_filters
  params += last * spec.head_filters + 2 * spec.head_filters
  params += spec.head_filters * num_classes + num_classes
  return params, arch.count_macs(spec, num_classes)


def check_variant(variant: str, *, resolution: int | None = None,
                  name: str = '--variant') -> arch.ArchSpec:
  """A converter's or create_model's variant (and resolution), checked."""
  try:
    model = arch.parse_variant(variant)
  except ValueError as error:
    raise errors.ConfigError(f'{name}={variant!r}: {error}') from None
  if resolution is not None:
    check_field('--resolution', resolution, integer(MIN_RESOLUTION))
    model['resolution'] = resolution
  return check_model_section(model, prefix=name)


# TFDS names: 'name', 'name/config', optionally ':1.2.3' (tfds.core.naming).
_TFDS_NAME = re.compile(r'[a-z][a-z0-9_]*(/[\w.-]+)?(:[\d.*]+)?')


def check_dataset_name(name: str) -> None:
  """A recipe's dataset or any registered TFDS name; one line otherwise.

  Only names that are not the recipes' own import tensorflow_datasets (its
  registry lookup does not import TensorFlow or reach the network).
  """
  if not _TFDS_NAME.fullmatch(name):
    raise errors.ConfigError(
        f'config.dataset={name!r} is not a dataset name: use one of '
        f'{", ".join(KNOWN_DATASETS)} or a TFDS name such as cifar10 or '
        'imagenet2012:5.1.0.')
  base = name.split(':')[0].split('/')[0]
  if base in KNOWN_DATASETS:
    return
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    tfds.builder_cls(base)
  except Exception:  # pylint: disable=broad-except
    # DatasetNotFoundError, or a registry that cannot be read at all.
    raise errors.ConfigError(
        f'config.dataset={name!r} is not a known dataset: use one of '
        f'{", ".join(KNOWN_DATASETS)} or a TFDS name (tfds.list_builders()).'
    ) from None
