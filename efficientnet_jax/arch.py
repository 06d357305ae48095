"""EfficientNet architecture arithmetic: block table, rounding, compound scaling.

Pure Python (no jax): the model, the input pipeline, the FLOP counter and the
checkpoint converters all read the `ArchSpec` that `resolve` builds here, so
the numbers of the paper live in exactly one place.

Each family is one `Family`: its block table, rounding and scaling rules and
input format; `PRESETS` are the published rows of every family. Block strings
name their block type (`BLOCK_TYPES`).

Sources are tagged as in docs/reference.md (TPU-BUILD is
tensorflow/tpu models/official/efficientnet/efficientnet_builder.py, TPU-MODEL
its efficientnet_model.py, TPU-LITE lite/efficientnet_lite_builder.py,
TPU-EDGE edgetpu/efficientnet_edgetpu_builder.py, V2-CONF google/automl
efficientnetv2/effnetv2_configs.py, V2-MODEL its effnetv2_model.py, V2-HP its
hparams.py; docs/reference.md §10 collects the V2 and EdgeTPU facts).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

# TPU-BUILD: the B0 stage table; every other B variant scales it.
# Format: r<repeats>_k<kernel>_s<stride><stride>_e<expand>_i<in>_o<out>_se<ratio>,
# optionally c<block type> and noskip (see decode_block_string).
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
# TPU-EDGE: S's table, no SE; c1 is the fused-expand block (TPU-MODEL
# MBConvBlockWithoutDepthwise). Stage 1 declares 24 inputs but reads the
# stem's 32; its expansion is 24 * 4 wide all the same.
EDGETPU_BLOCKS = (
    'r1_k3_s11_e4_i24_o24_c1_noskip',
    'r2_k3_s22_e8_i24_o32_c1',
    'r4_k3_s22_e8_i32_o48_c1',
    'r5_k5_s22_e8_i48_o96',
    'r4_k5_s11_e8_i96_o144',
    'r2_k5_s22_e8_i144_o192',
)
# V2-CONF: single-digit strides, c1 = Fused-MBConv. The base table scaled by
# B0-B3 (`efficientnetv2_base`), then S, M, L and XL, each its own table.
V2_BASE_BLOCKS = (
    'r1_k3_s1_e1_i32_o16_c1',
    'r2_k3_s2_e4_i16_o32_c1',
    'r2_k3_s2_e4_i32_o48_c1',
    'r3_k3_s2_e4_i48_o96_se0.25',
    'r5_k3_s1_e6_i96_o112_se0.25',
    'r8_k3_s2_e6_i112_o192_se0.25',
)
V2_S_BLOCKS = (
    'r2_k3_s1_e1_i24_o24_c1',
    'r4_k3_s2_e4_i24_o48_c1',
    'r4_k3_s2_e4_i48_o64_c1',
    'r6_k3_s2_e4_i64_o128_se0.25',
    'r9_k3_s1_e6_i128_o160_se0.25',
    'r15_k3_s2_e6_i160_o256_se0.25',
)
V2_M_BLOCKS = (
    'r3_k3_s1_e1_i24_o24_c1',
    'r5_k3_s2_e4_i24_o48_c1',
    'r5_k3_s2_e4_i48_o80_c1',
    'r7_k3_s2_e4_i80_o160_se0.25',
    'r14_k3_s1_e6_i160_o176_se0.25',
    'r18_k3_s2_e6_i176_o304_se0.25',
    'r5_k3_s1_e6_i304_o512_se0.25',
)
V2_L_BLOCKS = (
    'r4_k3_s1_e1_i32_o32_c1',
    'r7_k3_s2_e4_i32_o64_c1',
    'r7_k3_s2_e4_i64_o96_c1',
    'r10_k3_s2_e4_i96_o192_se0.25',
    'r19_k3_s1_e6_i192_o224_se0.25',
    'r25_k3_s2_e6_i224_o384_se0.25',
    'r7_k3_s1_e6_i384_o640_se0.25',
)
V2_XL_BLOCKS = (
    'r4_k3_s1_e1_i32_o32_c1',
    'r8_k3_s2_e4_i32_o64_c1',
    'r8_k3_s2_e4_i64_o96_c1',
    'r16_k3_s2_e4_i96_o192_se0.25',
    'r24_k3_s1_e6_i192_o256_se0.25',
    'r32_k3_s2_e6_i256_o512_se0.25',
    'r8_k3_s1_e6_i512_o640_se0.25',
)

# What a block string's c<type> means. tensorflow/tpu's BlockDecoder (V1,
# Lite, EdgeTPU: two-digit strides) reads c1 as MBConvBlockWithoutDepthwise:
# a k x k expansion at stride 1, then a 1x1 projection at the block's stride.
# google/automl's efficientnetv2 BlockDecoder (one-digit strides) reads c1 as
# Fused-MBConv: the k x k expansion at the block's stride, then a 1x1
# projection (with e=1, the k x k conv alone). c0 (or no c) is MBConv in both.
BLOCK_TYPES = ('mbconv', 'fused_mbconv', 'fused_expand')
_CONV_TYPES = {
    'tpu': {0: 'mbconv', 1: 'fused_expand'},
    'automl': {0: 'mbconv', 1: 'fused_mbconv'},
}

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
V2_MEAN = (128.0, 128.0, 128.0)
V2_STD = (128.0, 128.0, 128.0)
ADVPROP_MEAN = (127.5, 127.5, 127.5)
ADVPROP_STD = (127.5, 127.5, 127.5)


@dataclasses.dataclass(frozen=True)
class Family:
  """A family's block table, rounding and scaling rules and input format.

  Attributes:
    name: 'efficientnet' (B0-B8, L2), 'lite', 'edgetpu' or 'v2'.
    prefix: model names are `<prefix>-<variant>` and `<prefix>-phi<phi>`.
    blocks: the stage table that presets scale (a preset may bring its own).
    stem_filters: the stem's width before scaling; None: the first stage's
      declared input width (V2-MODEL).
    head_filters: the head conv's width before scaling.
    scale_stem_head: False keeps stem and head at their base widths
      (TPU-LITE fix_head_stem).
    fixed_end_stages: True keeps one block in the first and last stage at
      every depth (TPU-LITE).
    round_limit: True applies TPU-MODEL round_filters' "never more than 10%
      below the unrounded value" rule; V2-MODEL round_filters has none.
    activation: 'swish', 'relu6' or 'relu'.
    bn_momentum: BN moving-average decay (TF meaning).
    mean_rgb, std_rgb, resize_method: the input format the published
      weights expect (a preset may override it).
  """
  name: str
  prefix: str
  blocks: tuple[str, ...]
  stem_filters: int | None
  head_filters: int
  scale_stem_head: bool
  fixed_end_stages: bool
  round_limit: bool
  activation: str
  bn_momentum: float
  mean_rgb: tuple[float, float, float]
  std_rgb: tuple[float, float, float]
  resize_method: str


# docs/reference.md §6.3 (V1, Lite) and §10 (EdgeTPU, V2) for the input
# formats; BN momentum TPU-BUILD 0.99, TPU-EDGE 0.99, V2-HP 0.9.
FAMILY_TABLE: dict[str, Family] = {
    'efficientnet': Family(
        'efficientnet', 'efficientnet', B0_BLOCKS, BASE_STEM_FILTERS,
        BASE_HEAD_FILTERS, scale_stem_head=True, fixed_end_stages=False,
        round_limit=True, activation='swish', bn_momentum=0.99,
        mean_rgb=IMAGENET_MEAN, std_rgb=IMAGENET_STD, resize_method='bicubic'),
    'lite': Family(
        'lite', 'efficientnet-lite', LITE_BLOCKS, BASE_STEM_FILTERS,
        BASE_HEAD_FILTERS, scale_stem_head=False, fixed_end_stages=True,
        round_limit=True, activation='relu6', bn_momentum=0.99,
        mean_rgb=LITE_MEAN, std_rgb=LITE_STD, resize_method='bilinear'),
    # TPU-EDGE: ReLU, no SE, min_depth None (= divisor), (x - 127) / 128.
    'edgetpu': Family(
        'edgetpu', 'efficientnet-edgetpu', EDGETPU_BLOCKS, BASE_STEM_FILTERS,
        BASE_HEAD_FILTERS, scale_stem_head=True, fixed_end_stages=False,
        round_limit=True, activation='relu', bn_momentum=0.99,
        mean_rgb=LITE_MEAN, std_rgb=LITE_STD, resize_method='bicubic'),
    # V2-HP: SiLU (= swish), BN momentum 0.9 and eps 1e-3, feature_size 1280;
    # the official V2 input pipeline resizes bilinear and feeds
    # (x - 128) / 128; B0-B3 override it with V1's (see PRESETS).
    'v2': Family(
        'v2', 'efficientnetv2', V2_BASE_BLOCKS, None, BASE_HEAD_FILTERS,
        scale_stem_head=True, fixed_end_stages=False, round_limit=False,
        activation='swish', bn_momentum=0.9, mean_rgb=V2_MEAN, std_rgb=V2_STD,
        resize_method='bilinear'),
}
FAMILIES = tuple(FAMILY_TABLE)


@dataclasses.dataclass(frozen=True)
class Preset:
  """One row of a published table: the numbers the official code looks up."""
  width_coefficient: float
  depth_coefficient: float
  resolution: int
  dropout_rate: float
  family: str = 'efficientnet'
  blocks: tuple[str, ...] | None = None  # None: the family's table.
  # None: the family's input format; else (mean_rgb, std_rgb, resize_method).
  input_format: tuple[Any, ...] | None = None


# V2-MODEL: B0-B3 go through the V1 input pipeline (effnetv1 preprocessing).
_V1_INPUT = (IMAGENET_MEAN, IMAGENET_STD, 'bicubic')

# TPU-BUILD `efficientnet_params`, TPU-LITE `efficientnet_lite_params`,
# TPU-EDGE `efficientnet_edgetpu_params` and V2-CONF's (width, depth, eval
# size, dropout), verbatim. From B4 up the V1 rows are not alpha**phi etc.
# (docs/reference.md §2.3). V2's resolution is its eval size; the official
# recipe trains progressively up to a smaller size (§10.3).
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
    'edgetpu-s': Preset(1.0, 1.0, 224, 0.2, 'edgetpu'),
    'edgetpu-m': Preset(1.0, 1.1, 240, 0.2, 'edgetpu'),
    'edgetpu-l': Preset(1.2, 1.4, 300, 0.3, 'edgetpu'),
    'v2-b0': Preset(1.0, 1.0, 224, 0.2, 'v2', input_format=_V1_INPUT),
    'v2-b1': Preset(1.0, 1.1, 240, 0.2, 'v2', input_format=_V1_INPUT),
    'v2-b2': Preset(1.1, 1.2, 260, 0.3, 'v2', input_format=_V1_INPUT),
    'v2-b3': Preset(1.2, 1.4, 300, 0.3, 'v2', input_format=_V1_INPUT),
    'v2-s': Preset(1.0, 1.0, 384, 0.2, 'v2', V2_S_BLOCKS),
    'v2-m': Preset(1.0, 1.0, 480, 0.3, 'v2', V2_M_BLOCKS),
    'v2-l': Preset(1.0, 1.0, 480, 0.4, 'v2', V2_L_BLOCKS),
    'v2-xl': Preset(1.0, 1.0, 512, 0.4, 'v2', V2_XL_BLOCKS),
}


def preset_name(variant: str) -> str:
  """The official model name of a preset: 'efficientnet-b0',
  'efficientnet-lite0', 'efficientnet-edgetpu-s', 'efficientnetv2-s'."""
  family = FAMILY_TABLE[PRESETS[variant].family]
  if family.name in ('efficientnet', 'lite'):
    return f'efficientnet-{variant}'
  return f'{family.prefix}-{variant.split("-", 1)[1]}'


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
  block_type: str = 'mbconv'


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One block after width and depth scaling: all a module needs."""
  stage: int  # 1-based stage of the family's table.
  index: int  # 0-based position inside the stage.
  kernel_size: int
  stride: int
  expand_ratio: int
  in_filters: int
  out_filters: int
  se_filters: int  # 0 means no squeeze-excitation (Lite).
  drop_path_rate: float
  block_type: str = 'mbconv'  # One of BLOCK_TYPES.
  id_skip: bool = True  # False: the block string said noskip.
  # The expansion's width when it is not in_filters * expand_ratio: a stage
  # whose declared input differs from what it reads (EdgeTPU's first stage).
  expanded_filters: int | None = None

  @property
  def mid_filters(self) -> int:
    if self.expanded_filters is not None:
      return self.expanded_filters
    return self.in_filters * self.expand_ratio

  @property
  def has_skip(self) -> bool:
    # TPU-MODEL, V2-MODEL: identity skip only when shapes match and the
    # block string does not say noskip.
    return (self.id_skip and self.stride == 1 and
            self.in_filters == self.out_filters)

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
  activation: str  # 'swish', 'relu6' or 'relu'.
  mean_rgb: tuple[float, float, float]
  std_rgb: tuple[float, float, float]
  resize_method: str  # 'bicubic' (B) or 'bilinear' (Lite), TPU-MAIN.
  bn_momentum: float = 0.99  # TF meaning (decay); Family.bn_momentum.

  @property
  def num_stages(self) -> int:
    return self.blocks[-1].stage

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def decode_block_string(block_string: str) -> BlockArgs:
  """Parses a stage's block string.

  tensorflow/tpu's form (TPU-BUILD `BlockDecoder`) writes both strides,
  'r1_k3_s11_e1_i32_o16_se0.25'; google/automl's V2 form (V2-MODEL
  `BlockDecoder`) one, 'r1_k3_s1_e1_i24_o24_c1'. c<n> is the conv type as
  that decoder reads it (`_CONV_TYPES`); noskip drops the residual.
  """
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
  missing = [key for key in ('r', 'k', 's', 'e', 'i', 'o') if key not in fields]
  if missing:
    raise ValueError(f'Bad block string {block_string!r}: no '
                     f'{", ".join(missing)} field; expected e.g. '
                     'r1_k3_s11_e1_i32_o16_se0.25.')
  strides = fields['s']
  decoder = 'automl' if len(strides) == 1 else 'tpu'
  if len(strides) > 2 or strides[0] != strides[-1]:
    raise ValueError(f'Bad block string {block_string!r}: the stride is one '
                     'digit (s2) or two equal ones (s22).')
  conv_type = int(fields.get('c', 0))
  if conv_type not in _CONV_TYPES[decoder]:
    raise ValueError(f'Bad block string {block_string!r}: conv type c'
                     f'{conv_type}; with s{strides} use one of '
                     f'{", ".join(f"c{c}" for c in _CONV_TYPES[decoder])}.')
  return BlockArgs(
      repeats=int(fields['r']),
      kernel_size=int(fields['k']),
      stride=int(strides[0]),
      expand_ratio=int(fields['e']),
      in_filters=int(fields['i']),
      out_filters=int(fields['o']),
      se_ratio=float(fields['se']) if 'se' in fields else None,
      id_skip='noskip' not in fields,
      block_type=_CONV_TYPES[decoder][conv_type])


def round_filters(filters: int, width_coefficient: float,
                  divisor: int = 8, round_limit: bool = True) -> int:
  """Scales a channel count by width and rounds to a multiple of `divisor`.

  TPU-MODEL `round_filters`: nearest multiple (halves up), at least `divisor`,
  and never more than 10% below the unrounded value. V2-MODEL's has no such
  limit (round_limit=False).
  """
  scaled = filters * width_coefficient
  rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if round_limit and rounded < 0.9 * scaled:
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
                 depth_coefficient: float, *, family: Family,
                 drop_path_rate: float, stem_filters: int,
                 divisor: int = 8) -> tuple[BlockSpec, ...]:
  """Expands stage strings into per-block specs with scaled width and depth.

  The first block reads the stem's `stem_filters`, whatever its stage
  declares; an expansion keeps the declared width (TPU-MODEL and TPU-EDGE
  size it from the declared input).
  """
  stages = [decode_block_string(s) for s in block_strings]
  last_stage = len(stages) - 1
  scaled = []
  for stage_index, args in enumerate(stages):
    in_filters = round_filters(args.in_filters, width_coefficient, divisor,
                               family.round_limit)
    out_filters = round_filters(args.out_filters, width_coefficient, divisor,
                                family.round_limit)
    # TPU-LITE: the first and last stage keep one block at every depth.
    fixed = family.fixed_end_stages and stage_index in (0, last_stage)
    repeats = args.repeats if fixed else round_repeats(args.repeats,
                                                       depth_coefficient)
    scaled.append((args, in_filters, out_filters, repeats))

  total = sum(repeats for *_, repeats in scaled)
  blocks = []
  for stage_index, (args, in_filters, out_filters, repeats) in enumerate(scaled):
    for index in range(repeats):
      block_in = in_filters if index == 0 else out_filters
      expanded = None
      if not blocks and block_in != stem_filters:
        if args.expand_ratio != 1:
          expanded = block_in * args.expand_ratio
        # TPU-LITE fix_head_stem: the stem stays 32 wide, so stage 1 reads 32.
        block_in = stem_filters
      se_filters = 0
      if args.se_ratio is not None:
        # TPU-MODEL, V2-MODEL: the SE width comes from the block's *input*.
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
          # TPU-MODEL, V2-MODEL: linear in the global block index, 0 for the
          # first block.
          drop_path_rate=drop_path_rate * len(blocks) / total,
          block_type=args.block_type,
          id_skip=args.id_skip,
          expanded_filters=expanded))
  return tuple(blocks)


def resolve(model_config: Mapping[str, Any]) -> ArchSpec:
  """Resolves a config's model section into the network to build.

  Args:
    model_config: needs `variant` (a key of PRESETS: it picks the family and,
      when `phi` is None, the published row), `phi` (None, or a float that
      switches to the compound-scaling rule), `alpha`, `beta`, `gamma`
      (read only with phi), `depth_divisor`, `drop_path_rate`,
      `dropout_rate`, `resolution` (None: the variant's own) and `blocks`
      (None: the variant's stage table; see base_block_strings).

  Returns:
    The ArchSpec.
  """
  variant = str(model_config['variant']).lower()
  if variant not in PRESETS:
    raise ValueError(f'Unknown EfficientNet variant {variant!r}; choose one of '
                     f'{", ".join(PRESETS)} (or set model.phi for the rule).')
  preset = PRESETS[variant]
  family = FAMILY_TABLE[preset.family]
  phi = model_config['phi']
  coefficients = tuple(model_config[k] for k in ('alpha', 'beta', 'gamma'))
  if phi is None:
    if coefficients != (ALPHA, BETA, GAMMA):
      raise ValueError(f'model.alpha/beta/gamma {coefficients} apply only '
                       f'with model.phi; {variant} is a published row (set '
                       'model.phi to scale by the rule).')
    width, depth, resolution = (preset.width_coefficient,
                                preset.depth_coefficient, preset.resolution)
    default_dropout = preset.dropout_rate
    name = preset_name(variant)
  else:
    phi = float(phi)
    width, depth, resolution = compound_coefficients(phi, *coefficients)
    default_dropout = formula_dropout_rate(phi)
    name = f'{family.prefix}-phi{phi:g}'
  dropout_rate = model_config['dropout_rate']
  if dropout_rate is None:
    dropout_rate = default_dropout
  if model_config['resolution'] is not None:
    resolution = int(model_config['resolution'])
  drop_path_rate = float(model_config['drop_path_rate'])
  divisor = int(model_config['depth_divisor'])
  block_strings = base_block_strings(model_config)
  stem_filters = family.stem_filters
  if stem_filters is None:
    stem_filters = decode_block_string(block_strings[0]).in_filters
  head_filters = family.head_filters
  if family.scale_stem_head:
    stem_filters = round_filters(stem_filters, width, divisor,
                                 family.round_limit)
    head_filters = round_filters(head_filters, width, divisor,
                                 family.round_limit)
  blocks = build_blocks(block_strings, width, depth, family=family,
                        drop_path_rate=drop_path_rate,
                        stem_filters=stem_filters, divisor=divisor)
  mean_rgb, std_rgb, resize_method = preset.input_format or (
      family.mean_rgb, family.std_rgb, family.resize_method)
  return ArchSpec(
      name=name,
      family=family.name,
      phi=phi,
      width_coefficient=width,
      depth_coefficient=depth,
      resolution=resolution,
      dropout_rate=float(dropout_rate),
      drop_path_rate=drop_path_rate,
      stem_filters=stem_filters,
      head_filters=head_filters,
      blocks=blocks,
      activation=family.activation,
      mean_rgb=mean_rgb,
      std_rgb=std_rgb,
      resize_method=resize_method,
      bn_momentum=family.bn_momentum)


def base_block_strings(model_config: Mapping[str, Any]) -> tuple[str, ...]:
  """The unscaled stage table a model section builds: its own `blocks`
  (block strings, e.g. a base of one's own for the scaling search), else the
  variant's (a preset's own table, else its family's)."""
  # Checkpoints recorded before the `blocks` field have none.
  custom = model_config.get('blocks')
  if custom is not None:
    return tuple(str(b) for b in custom)
  preset = PRESETS[str(model_config['variant']).lower()]
  return preset.blocks or FAMILY_TABLE[preset.family].blocks


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
      # None: the variant's stage table; a tuple of block strings replaces
      # it (the family's stem, head, rounding and scaling rules still apply).
      blocks=None,
      resolution=None)  # None: the variant's; set to train/eval at another.


def parse_variant(arg: str) -> dict[str, Any]:
  """'b3' -> the b3 row; 'phi=2.5' or 'lite-phi=1' -> the rule, at that phi
  (also 'edgetpu-phi=1' and 'v2-phi=1', from edgetpu-s and V2's base)."""
  arg = arg.strip().lower()
  match = re.fullmatch(r'(lite-|edgetpu-|v2-)?phi=([0-9.eE+-]+)', arg)
  if match:
    variant = {None: 'b0', 'lite-': 'lite0', 'edgetpu-': 'edgetpu-s',
               'v2-': 'v2-b0'}[match.group(1)]
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

  Per block type (see BLOCK_TYPES). BN, activations, pooling and the SE gate
  multiply are not counted, matching the independent count in
  docs/reference.md §3.
  """
  size = resolution or spec.resolution
  size = feature_size(size, 1)
  macs = size * size * 3 * 3 * 3 * spec.stem_filters
  for block in spec.blocks:
    mid, k2 = block.mid_filters, block.kernel_size**2
    out_size = feature_size(size, 1) if block.stride == 2 else size
    if block.block_type == 'mbconv':
      if block.expand_ratio != 1:
        macs += size * size * block.in_filters * mid
      macs += out_size * out_size * k2 * mid  # Depthwise, at the stride.
      macs += out_size * out_size * mid * block.out_filters
    elif block.block_type == 'fused_mbconv':
      if block.expand_ratio == 1:  # The k x k conv alone, at the stride.
        macs += out_size * out_size * k2 * block.in_filters * block.out_filters
      else:  # k x k expansion at the stride, then the 1x1 projection.
        macs += out_size * out_size * k2 * block.in_filters * mid
        macs += out_size * out_size * mid * block.out_filters
    elif block.block_type == 'fused_expand':
      # k x k expansion at stride 1, then the 1x1 projection at the stride.
      macs += size * size * k2 * block.in_filters * mid
      macs += out_size * out_size * mid * block.out_filters
    else:
      raise ValueError(f'Unknown block type {block.block_type!r}.')
    if block.se_filters:
      macs += 2 * mid * block.se_filters
    size = out_size
  macs += size * size * spec.blocks[-1].out_filters * spec.head_filters
  macs += spec.head_filters * num_classes
  return macs
