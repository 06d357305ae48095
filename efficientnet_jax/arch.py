"""EfficientNet architecture arithmetic: block table, rounding, compound scaling.

Pure Python (no jax): the model, the input pipeline, the FLOP counter and the
checkpoint converters all read the `ArchSpec` that `resolve` builds here, so
the numbers of the paper live in exactly one place.

Sources are tagged as in docs/reference.md (TPU-BUILD is
tensorflow/tpu models/official/efficientnet/efficientnet_builder.py, TPU-MODEL
its efficientnet_model.py, TPU-LITE lite/efficientnet_lite_builder.py).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

# TPU-BUILD: the B0 stage table; every other B variant scales it.
# Format: r<repeats>_k<kernel>_s<stride><stride>_e<expand>_i<in>_o<out>_se<ratio>.
B0_BLOCKS = (
    'r1_k3_s11_e1_i32_o16_se0.25',
    'r2_k3_s22_e6_i16_o24_se0.25',
    'r2_k5_s22_e6_i24_o40_se0.25',
    'r3_k3_s22_e6_i40_o80_se0.25',
    'r3_k5_s11_e6_i80_o112_se0.25',
    'r4_k5_s22_e6_i112_o192_se0.25',
    'r1_k3_s11_e6_i192_o320_se0.25',
)
# TPU-LITE: the same stages without squeeze-excitation.
LITE_BLOCKS = tuple(s.replace('_se0.25', '') for s in B0_BLOCKS)

# Paper Sec. 3.3: grid search at phi=1 under alpha * beta^2 * gamma^2 ~= 2.
ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15
BASE_RESOLUTION = 224
BASE_STEM_FILTERS = 32
BASE_HEAD_FILTERS = 1280

# docs/reference.md §6.3: mean/std on [0, 255] RGB that each checkpoint family expects.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
LITE_MEAN = (127.0, 127.0, 127.0)
LITE_STD = (128.0, 128.0, 128.0)
ADVPROP_MEAN = (127.5, 127.5, 127.5)
ADVPROP_STD = (127.5, 127.5, 127.5)


@dataclasses.dataclass(frozen=True)
class Preset:
  """One row of the published table: the four numbers the official code looks up."""
  width_coefficient: float
  depth_coefficient: float
  resolution: int
  dropout_rate: float
  family: str = 'efficientnet'


# TPU-BUILD `efficientnet_params` and TPU-LITE `efficientnet_lite_params`,
# verbatim. From B4 up these are not alpha**phi etc. (docs/reference.md §2.3).
PRESETS: dict[str, Preset] = {
    'b0': Preset(1.0, 1.0, 224, 0.2),
    'b1': Preset(1.0, 1.1, 240, 0.2),
    'b2': Preset(1.1, 1.2, 260, 0.3),
    'b3': Preset(1.2, 1.4, 300, 0.3),
    'b4': Preset(1.4, 1.8, 380, 0.4),
    'b5': Preset(1.6, 2.2, 456, 0.4),
    'b6': Preset(1.8, 2.6, 528, 0.5),
    'b7': Preset(2.0, 3.1, 600, 0.5),
    'b8': Preset(2.2, 3.6, 672, 0.5),
    'l2': Preset(4.3, 5.3, 800, 0.5),
    'lite0': Preset(1.0, 1.0, 224, 0.2, 'lite'),
    'lite1': Preset(1.0, 1.1, 240, 0.2, 'lite'),
    'lite2': Preset(1.1, 1.2, 260, 0.3, 'lite'),
    'lite3': Preset(1.2, 1.4, 280, 0.3, 'lite'),
    'lite4': Preset(1.4, 1.8, 300, 0.3, 'lite'),
}
FAMILIES = ('efficientnet', 'lite')


@dataclasses.dataclass(frozen=True)
class BlockArgs:
  """One stage as written in a block string (before depth scaling)."""
  repeats: int
  kernel_size: int
  stride: int
  expand_ratio: int
  in_filters: int
  out_filters: int
  se_ratio: float | None
  id_skip: bool = True


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One MBConv block after width and depth scaling: all a module needs."""
  stage: int  # 1-based stage of the B0 table.
  index: int  # 0-based position inside the stage.
  kernel_size: int
  stride: int
  expand_ratio: int
  in_filters: int
  out_filters: int
  se_filters: int  # 0 means no squeeze-excitation (Lite).
  drop_path_rate: float

  @property
  def mid_filters(self) -> int:
    return self.in_filters * self.expand_ratio

  @property
  def has_skip(self) -> bool:
    # TPU-MODEL: identity skip only when shapes match.
    return self.stride == 1 and self.in_filters == self.out_filters

  @property
  def name(self) -> str:
    return f'blocks_{self.stage}_{self.index}'


@dataclasses.dataclass(frozen=True)
class ArchSpec:
  """A fully resolved network: what the model, pipeline and summary read."""
  name: str
  family: str
  phi: float | None  # None for a published preset (table lookup).
  width_coefficient: float
  depth_coefficient: float
  resolution: int
  dropout_rate: float
  drop_path_rate: float
  stem_filters: int
  head_filters: int
  blocks: tuple[BlockSpec, ...]
  activation: str  # 'swish' or 'relu6'.
  mean_rgb: tuple[float, float, float]
  std_rgb: tuple[float, float, float]
  resize_method: str  # 'bicubic' (B) or 'bilinear' (Lite), TPU-MAIN.

  @property
  def num_stages(self) -> int:
    return self.blocks[-1].stage

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def decode_block_string(block_string: str) -> BlockArgs:
  """Parses 'r1_k3_s11_e1_i32_o16_se0.25' (TPU-BUILD `BlockDecoder`)."""
  fields = {}
  for token in block_string.split('_'):
    match = re.fullmatch(r'([a-z]+)([\d.]+)', token)
    if token == 'noskip':
      fields['noskip'] = ''
    elif match is None:
      raise ValueError(f'Bad block string {block_string!r}: cannot read token '
                       f'{token!r}; expected e.g. r1_k3_s11_e1_i32_o16_se0.25.')
    else:
      fields[match.group(1)] = match.group(2)
  strides = fields['s']
  if len(strides) != 2 or strides[0] != strides[1]:
    raise ValueError(f'Bad block string {block_string!r}: only equal strides '
                     'such as s11 or s22 are supported.')
  return BlockArgs(
      repeats=int(fields['r']),
      kernel_size=int(fields['k']),
      stride=int(strides[0]),
      expand_ratio=int(fields['e']),
      in_filters=int(fields['i']),
      out_filters=int(fields['o']),
      se_ratio=float(fields['se']) if 'se' in fields else None,
      id_skip='noskip' not in fields)


def round_filters(filters: int, width_coefficient: float,
                  divisor: int = 8) -> int:
  """Scales a channel count by width and rounds to a multiple of `divisor`.

  TPU-MODEL `round_filters`: nearest multiple (halves up), at least `divisor`,
  and never more than 10% below the unrounded value.
  """
  scaled = filters * width_coefficient
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * scaled:
    rounded += divisor
  return int(rounded)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
  """TPU-MODEL `round_repeats`: ceil of the scaled repeat count."""
  return int(math.ceil(depth_coefficient * repeats))


def compound_coefficients(phi: float, alpha: float = ALPHA, beta: float = BETA,
                          gamma: float = GAMMA) -> tuple[float, float, int]:
  """The paper's rule: (width, depth, resolution) for compound coefficient phi.

  Resolution is 224 * gamma**phi rounded to a multiple of 4, as every published
  resolution is.
  """
  if phi < 0:
    raise ValueError(f'phi must be >= 0 (got {phi}); phi=0 is EfficientNet-B0.')
  width = beta**phi
  depth = alpha**phi
  resolution = int(round(BASE_RESOLUTION * gamma**phi / 4)) * 4
  return width, depth, resolution


def formula_dropout_rate(phi: float) -> float:
  """Head dropout for a non-published phi.

  The published table steps 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.5, 0.5 for B0-B7,
  i.e. 0.2 + 0.1 * floor(index / 2) capped at 0.5; we apply the same step to phi.
  """
  return min(5, 2 + math.floor(phi / 2)) / 10


def implied_phi(preset: Preset, alpha: float = ALPHA, beta: float = BETA,
                gamma: float = GAMMA) -> dict[str, float]:
  """The phi each published coefficient corresponds to (docs/reference.md §2.3)."""
  return dict(
      width=math.log(preset.width_coefficient) / math.log(beta),
      depth=math.log(preset.depth_coefficient) / math.log(alpha),
      resolution=math.log(preset.resolution / BASE_RESOLUTION) / math.log(gamma))


def build_blocks(block_strings: tuple[str, ...], width_coefficient: float,
                 depth_coefficient: float, *, family: str, drop_path_rate: float,
                 divisor: int = 8) -> tuple[BlockSpec, ...]:
  """Expands stage strings into per-block specs with scaled width and depth."""
  stages = [decode_block_string(s) for s in block_strings]
  last_stage = len(stages) - 1
  scaled = []
  for stage_index, args in enumerate(stages):
    in_filters = round_filters(args.in_filters, width_coefficient, divisor)
    out_filters = round_filters(args.out_filters, width_coefficient, divisor)
    # TPU-LITE: the first and last stage keep one block at every depth.
    fixed = family == 'lite' and stage_index in (0, last_stage)
    repeats = args.repeats if fixed else round_repeats(args.repeats,
                                                       depth_coefficient)
    scaled.append((args, in_filters, out_filters, repeats))
  if family == 'lite':
    # TPU-LITE fix_head_stem: the stem stays 32 wide, so stage 1 reads 32.
    args, _, out_filters, repeats = scaled[0]
    scaled[0] = (args, BASE_STEM_FILTERS, out_filters, repeats)

  total = sum(repeats for *_, repeats in scaled)
  blocks = []
  for stage_index, (args, in_filters, out_filters, repeats) in enumerate(scaled):
    for index in range(repeats):
      block_in = in_filters if index == 0 else out_filters
      se_filters = 0
      if args.se_ratio is not None:
        # TPU-MODEL: the SE width comes from the block's *input* filters.
        se_filters = max(1, int(block_in * args.se_ratio))
      blocks.append(BlockSpec(
          stage=stage_index + 1,
          index=index,
          kernel_size=args.kernel_size,
          stride=args.stride if index == 0 else 1,
          expand_ratio=args.expand_ratio,
          in_filters=block_in,
          out_filters=out_filters,
          se_filters=se_filters,
          # TPU-MODEL: linear in the global block index, 0 for the first block.
          drop_path_rate=drop_path_rate * len(blocks) / total))
  return tuple(blocks)


def resolve(model_config: Mapping[str, Any]) -> ArchSpec:
  """Resolves a config's model section into the network to build.

  Args:
    model_config: needs `variant` (a key of PRESETS: it picks the family and,
      when `phi` is None, the published row), `phi` (None, or a float that
      switches to the compound-scaling rule), `alpha`, `beta`, `gamma`,
      `depth_divisor`, `drop_path_rate`, `dropout_rate` and `resolution`
      (None: the variant's own).

  Returns:
    The ArchSpec.
  """
  variant = str(model_config['variant']).lower()
  if variant not in PRESETS:
    raise ValueError(f'Unknown EfficientNet variant {variant!r}; choose one of '
                     f'{", ".join(PRESETS)} (or set model.phi for the rule).')
  preset = PRESETS[variant]
  family = preset.family
  phi = model_config['phi']
  if phi is None:
    width, depth, resolution = (preset.width_coefficient,
                                preset.depth_coefficient, preset.resolution)
    default_dropout = preset.dropout_rate
    name = f'efficientnet-{variant}'
  else:
    phi = float(phi)
    width, depth, resolution = compound_coefficients(
        phi, model_config['alpha'], model_config['beta'], model_config['gamma'])
    default_dropout = formula_dropout_rate(phi)
    prefix = 'efficientnet-lite' if family == 'lite' else 'efficientnet'
    name = f'{prefix}-phi{phi:g}'
  dropout_rate = model_config['dropout_rate']
  if dropout_rate is None:
    dropout_rate = default_dropout
  if model_config['resolution'] is not None:
    resolution = int(model_config['resolution'])
  drop_path_rate = float(model_config['drop_path_rate'])
  divisor = int(model_config['depth_divisor'])
  lite = family == 'lite'
  blocks = build_blocks(LITE_BLOCKS if lite else B0_BLOCKS, width, depth,
                        family=family, drop_path_rate=drop_path_rate,
                        divisor=divisor)
  return ArchSpec(
      name=name,
      family=family,
      phi=phi,
      width_coefficient=width,
      depth_coefficient=depth,
      resolution=resolution,
      dropout_rate=float(dropout_rate),
      drop_path_rate=drop_path_rate,
      stem_filters=(BASE_STEM_FILTERS if lite else
                    round_filters(BASE_STEM_FILTERS, width, divisor)),
      head_filters=(BASE_HEAD_FILTERS if lite else
                    round_filters(BASE_HEAD_FILTERS, width, divisor)),
      blocks=blocks,
      activation='relu6' if lite else 'swish',
      mean_rgb=LITE_MEAN if lite else IMAGENET_MEAN,
      std_rgb=LITE_STD if lite else IMAGENET_STD,
      resize_method='bilinear' if lite else 'bicubic')


def default_model_config(variant: str = 'b0') -> dict[str, Any]:
  """The model section's fields with the reference defaults, as a plain dict."""
  return dict(
      variant=variant,
      phi=None,
      alpha=ALPHA,
      beta=BETA,
      gamma=GAMMA,
      depth_divisor=8,  # TPU-BUILD depth_divisor.
      drop_path_rate=0.2,  # TPU-BUILD survival_prob 0.8.
      dropout_rate=None,  # None: the variant's published (or rule) value.
      resolution=None)  # None: the variant's; set to train/eval at another.


def parse_variant(arg: str) -> dict[str, Any]:
  """'b3' -> the b3 row; 'phi=2.5' or 'lite-phi=1' -> the rule, at that phi."""
  arg = arg.strip().lower()
  match = re.fullmatch(r'(lite-)?phi=([0-9.eE+-]+)', arg)
  if match:
    variant = 'lite0' if match.group(1) else 'b0'
    config = default_model_config(variant)
    config['phi'] = float(match.group(2))
    compound_coefficients(config['phi'])  # Rejects phi < 0 early.
    return config
  if arg not in PRESETS:
    raise ValueError(f'Unknown EfficientNet variant {arg!r}; choose one of '
                     f'{", ".join(PRESETS)}, or phi=<float>.')
  return default_model_config(arg)


def spec_for(variant: str, **overrides: Any) -> ArchSpec:
  """Shorthand: the ArchSpec of a named variant, with model-field overrides."""
  config = parse_variant(variant)
  unknown = set(overrides) - set(config)
  if unknown:
    raise ValueError(f'Unknown model option(s) {sorted(unknown)}; valid: '
                     f'{sorted(config)}.')
  config.update(overrides)
  return resolve(config)


def feature_size(size: int, strides: int) -> int:
  """Spatial size after `strides` stride-2 'SAME' layers (ceil division)."""
  for _ in range(strides):
    size = -(-size // 2)
  return size


def count_macs(spec: ArchSpec, num_classes: int = 1000,
               resolution: int | None = None) -> int:
  """Multiply-adds of one forward pass (conv + dense), as the paper counts FLOPs.

  BN, activations, pooling and the SE gate multiply are not counted, matching
  the independent count in docs/reference.md §3.
  """
  size = resolution or spec.resolution
  size = feature_size(size, 1)
  macs = size * size * 3 * 3 * 3 * spec.stem_filters
  for block in spec.blocks:
    mid = block.mid_filters
    if block.expand_ratio != 1:
      macs += size * size * block.in_filters * mid
    size = feature_size(size, 1) if block.stride == 2 else size
    macs += size * size * block.kernel_size**2 * mid
    if block.se_filters:
      macs += 2 * mid * block.se_filters
    macs += size * size * mid * block.out_filters
  macs += size * size * spec.blocks[-1].out_filters * spec.head_filters
  macs += spec.head_filters * num_classes
  return macs
