"""What the converters share: our layer list, tensor layouts, placement.

Every source (official TF, Keras applications, timm) builds the same network
in the same order: stem conv and BN; per block the optional expansion conv and
BN, the depthwise conv and BN (MBConv only), the optional squeeze-excitation
pair, the projection conv and BN; the head conv and BN; the classifier.
`network_layers` lists those layers for a resolved `arch.ArchSpec`, read off
our model's own parameter tree in that order; a source module names the
tensors of each layer in its own vocabulary (a list of `Entry`s), and `place`
fetches them, checks every shape before any conversion, converts the layout and
builds our `{'params', 'batch_stats'}` tree. Anything missing, left over or of
the wrong shape is a `ConversionError` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from efficientnet_jax import arch
from efficientnet_jax import checkpoints
from efficientnet_jax import execution
from efficientnet_jax import models

Shape = tuple[int, ...]
# Our variables of a batch-norm layer: (collection, name) in flax's vocabulary.
BN_VARIABLES = (('params', 'scale'), ('params', 'bias'),
                ('batch_stats', 'mean'), ('batch_stats', 'var'))
# How many names a one-line error lists before summarising the rest.
LISTED_NAMES = 8


class ConversionError(ValueError):
  """A checkpoint that cannot become our parameters; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer of our network, in the order every reference creates them.

  Attributes:
    role: 'stem_conv', 'stem_bn', 'expand_conv', 'expand_bn',
      'depthwise_conv', 'depthwise_bn', 'se_reduce', 'se_expand',
      'project_conv', 'project_bn', 'head_conv', 'head_bn' or 'classifier'.
    kind: 'conv', 'depthwise', 'bn' or 'dense' (our SE 1x1 convs and the
      classifier are flax Dense layers with a bias).
    module: the module path in our tree, e.g. ('blocks_2_0', 'expand_conv').
    block: the block's spec (None for stem, head and classifier).
    block_number: the block's global 0-based position (TF's blocks_N).
  """
  role: str
  kind: str
  module: tuple[str, ...]
  block: arch.BlockSpec | None = None
  block_number: int | None = None


# The order in which every reference creates a block's layers (TPU-MODEL,
# V2-MODEL, KERAS, TIMM); which of them a block has comes from our tree.
BLOCK_LAYER_ORDER = ('expand_conv', 'expand_bn', 'depthwise_conv',
                     'depthwise_bn', 'se', 'project_conv', 'project_bn')
TOP_LAYERS = ('stem_conv', 'stem_bn')
HEAD_LAYERS = ('head_conv', 'head_bn', 'classifier')


@functools.lru_cache(maxsize=16)
def _parameter_tree(spec: arch.ArchSpec) -> Mapping[str, Any]:
  """Our abstract parameters for spec (the classifier's width is immaterial)."""
  model = models.EfficientNet(spec, num_classes=1, execution=execution.PLAIN)
  return models.abstract_variables(model)['params']


def _kind(name: str, variables: Mapping[str, Any]) -> str:
  """'bn', 'dense', 'depthwise' or 'conv', from a layer's variables."""
  if 'scale' in variables:
    return 'bn'
  if len(variables['kernel'].shape) == 2:
    return 'dense'
  return 'depthwise' if name == 'depthwise_conv' else 'conv'


def network_layers(spec: arch.ArchSpec) -> list[Layer]:
  """All layers with variables, in creation order (TPU-MODEL, KERAS, TIMM).

  Read off our model's parameter tree, so every block type lists exactly the
  layers its module declares.

  Raises:
    ValueError: the tree has a layer that `BLOCK_LAYER_ORDER` (or the stem and
      head names) does not place.
  """
  tree = _parameter_tree(spec)
  block_names = {block.name for block in spec.blocks}
  unplaced = set(tree) - block_names - set(TOP_LAYERS) - set(HEAD_LAYERS)
  layers = [Layer(name, _kind(name, tree[name]), (name,))
            for name in TOP_LAYERS]
  for number, block in enumerate(spec.blocks):
    block_tree = tree[block.name]
    unplaced |= {f'{block.name}/{name}' for name in block_tree
                 if name not in BLOCK_LAYER_ORDER}
    for name in BLOCK_LAYER_ORDER:
      if name not in block_tree:
        continue
      if name == 'se':
        layers += [Layer(f'se_{part}', 'dense', (block.name, 'se', part),
                         block, number) for part in ('reduce', 'expand')]
      else:
        layers.append(Layer(name, _kind(name, block_tree[name]),
                            (block.name, name), block, number))
  if unplaced:
    raise ValueError(f'Layers the converters cannot place: '
                     f'{name_list(sorted(unplaced))}.')
  layers += [Layer(name, _kind(name, tree[name]), (name,))
             for name in HEAD_LAYERS]
  return layers


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a source stores one kind of tensor, and the exact map to ours.

  Only transposes and reshapes: conversion never changes a value.
  """
  name: str
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_source: Callable[[np.ndarray], np.ndarray]
  source_shape: Callable[[Shape], Shape]  # Our shape -> the source's.


def _reverse(shape: Shape) -> Shape:
  return tuple(reversed(shape))


# TF/Keras conv kernels are HWIO like flax's; vectors need nothing either.
IDENTITY = Layout('identity', np.asarray, np.asarray, tuple)
# TF/Keras depthwise kernels are (k, k, C, 1); flax's grouped layout is
# (k, k, 1, C) (feature_group_count=C, one input feature per group).
TF_DEPTHWISE = Layout(
    'tf_depthwise',
    lambda x: np.transpose(x, (0, 1, 3, 2)),
    lambda x: np.transpose(x, (0, 1, 3, 2)),
    lambda s: (s[0], s[1], s[3], s[2]))
# TF/Keras SE layers are 1x1 convs (1, 1, in, out); ours are Dense (in, out).
TF_SE = Layout(
    'tf_se',
    lambda x: np.reshape(x, x.shape[2:]),
    lambda x: np.reshape(x, (1, 1) + x.shape),
    lambda s: (1, 1) + tuple(s))
# PyTorch convs are OIHW; a depthwise weight (C, 1, k, k) is the same
# transpose away from flax's (k, k, 1, C).
TORCH_CONV = Layout(
    'torch_conv',
    lambda x: np.transpose(x, (2, 3, 1, 0)),
    lambda x: np.transpose(x, (3, 2, 0, 1)),
    lambda s: (s[3], s[2], s[0], s[1]))
# PyTorch SE convs are (out, in, 1, 1); ours Dense (in, out).
TORCH_SE = Layout(
    'torch_se',
    lambda x: np.transpose(np.reshape(x, x.shape[:2])),
    lambda x: np.reshape(np.transpose(x), x.shape[::-1] + (1, 1)),
    lambda s: _reverse(s) + (1, 1))
# torch.nn.Linear weights are (out, in).
TORCH_DENSE = Layout('torch_dense', np.transpose, np.transpose, _reverse)


@dataclasses.dataclass(frozen=True)
class Entry:
  """One tensor of our tree and the source tensor it comes from."""
  target: tuple[str, ...]  # e.g. ('params', 'stem_conv', 'kernel').
  source: str  # The source's name, e.g. 'efficientnet-b0/stem/conv2d/kernel'.
  layout: Layout


class TensorSource:
  """Named arrays of a source checkpoint, read lazily.

  Subclasses fill `shapes` (name -> shape of every tensor that should find a
  place) and implement `read`. `description` names the file in messages.
  """

  def __init__(self, description: str, shapes: Mapping[str, Shape]):
    self.description = description
    self.shapes = dict(shapes)

  def read(self, name: str) -> np.ndarray:
    raise NotImplementedError


class DictSource(TensorSource):
  """A source already in memory (timm state dicts, Keras weight files)."""

  def __init__(self, description: str, arrays: Mapping[str, np.ndarray]):
    super().__init__(description,
                     {k: tuple(np.shape(v)) for k, v in arrays.items()})
    self._arrays = dict(arrays)

  def read(self, name: str) -> np.ndarray:
    return np.asarray(self._arrays[name])


def expected_variables(spec: arch.ArchSpec, num_classes: int) -> Any:
  """Our abstract {'params', 'batch_stats'} for this network (no allocation)."""
  model = models.EfficientNet(spec, num_classes=num_classes)
  return models.abstract_variables(model)


def _lookup(tree: Mapping[str, Any], path: Sequence[str]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def name_list(names: Iterable[str]) -> str:
  """'a, b, c and 5 more': names for a one-line message."""
  names = list(names)
  listed = ', '.join(names[:LISTED_NAMES])
  if len(names) > LISTED_NAMES:
    listed += f' and {len(names) - LISTED_NAMES} more'
  return listed


def place(entries: Sequence[Entry], source: TensorSource, expected: Any, *,
          variant: str, allow_unused: bool = False,
          unused_callback: Callable[[list[str]], None] | None = None
          ) -> dict[str, Any]:
  """Builds our variables from `source` following `entries`.

  Args:
    entries: where each of our tensors comes from (all of them, in order).
    source: the checkpoint's tensors.
    expected: our abstract variables (`expected_variables`).
    variant: the requested variant, for messages.
    allow_unused: tolerate source tensors that no entry reads (listed through
      `unused_callback`) instead of failing.
    unused_callback: receives the unused names when allow_unused is set.

  Returns:
    {'params': ..., 'batch_stats': ...} of float32 numpy arrays.

  Raises:
    ConversionError: at the first tensor whose shape does not fit (naming it
      and both shapes, in the source's layout), or listing the missing and
      the left-over tensors.
  """
  missing = []
  used = set()
  variables: dict[str, Any] = {}
  for entry in entries:
    want = tuple(_lookup(expected, entry.target).shape)
    if entry.source not in source.shapes:
      missing.append(entry.source)
      continue
    have = tuple(source.shapes[entry.source])
    want_source = tuple(entry.layout.source_shape(want))
    if have != want_source:
      raise ConversionError(
          f'{source.description} does not fit EfficientNet-{variant}: tensor '
          f'{entry.source} has shape {have}, the model needs {want_source} '
          f'there; is the checkpoint for another variant?')
    used.add(entry.source)
    value = entry.layout.to_ours(source.read(entry.source))
    node = variables
    for key in entry.target[:-1]:
      node = node.setdefault(key, {})
    node[entry.target[-1]] = np.ascontiguousarray(value, dtype=np.float32)
  unused = [name for name in source.shapes if name not in used]
  problems = []
  if missing:
    problems.append(f'{len(missing)} tensor(s) missing: {name_list(missing)}')
  if unused and not allow_unused:
    problems.append(f'{len(unused)} tensor(s) with no place in '
                    f'EfficientNet-{variant}: {name_list(unused)}')
  if problems:
    raise ConversionError(f'{source.description} does not fit '
                          f'EfficientNet-{variant}: {"; ".join(problems)}.')
  if unused and unused_callback is not None:
    unused_callback(unused)
  mismatch = checkpoints.first_mismatch(expected, variables)
  if mismatch:  # The entries of a source module do not cover our tree.
    raise AssertionError(f'converter bug for EfficientNet-{variant}: '
                         f'{mismatch}')
  return variables


def export(entries: Sequence[Entry], variables: Mapping[str, Any]
           ) -> dict[str, np.ndarray]:
  """The inverse of `place`: our variables under the source's names."""
  return {entry.source: np.ascontiguousarray(
              entry.layout.to_source(np.asarray(_lookup(variables,
                                                        entry.target))))
          for entry in entries}


def bn_targets(module: tuple[str, ...]) -> list[tuple[str, ...]]:
  """Our four BN tensors of a module: scale, bias, mean, var."""
  return [(collection, *module, name) for collection, name in BN_VARIABLES]


def check_family(spec: arch.ArchSpec, has_se: bool, description: str,
                  variant: str) -> None:
  """One-line error when an SE-less checkpoint meets a variant with SE, or
  vice versa.

  Lite and EdgeTPU are the families without squeeze-excitation (TPU-LITE,
  TPU-EDGE use_se=False), so the presence of SE tensors tells them from B and
  V2 before any shape does.
  """
  wants_se = any(block.se_filters for block in spec.blocks)
  if wants_se and not has_se:
    raise ConversionError(
        f'{description} has no squeeze-excitation tensors, so it is an '
        f'EfficientNet-Lite or EdgeTPU checkpoint, but --variant {variant} '
        'has SE; pass --variant lite0..lite4 or edgetpu-s/m/l.')
  if has_se and not wants_se:
    family = {'lite': 'Lite', 'edgetpu': 'EdgeTPU'}.get(spec.family,
                                                        spec.family)
    raise ConversionError(
        f'{description} has squeeze-excitation tensors, so it is an '
        f'EfficientNet-B or V2 checkpoint, but --variant {variant} is an '
        f'EfficientNet-{family} model without SE; pass --variant b0..b8, l2 '
        'or v2-*.')


def drop_background_class(variables: dict[str, Any]) -> None:
  """Removes output 0 of the classifier in place.

  The official EdgeTPU classifier has 1001 outputs, output 0 the background
  class and 1..1000 the ImageNet classes in their usual order (TPU-EDGE
  num_classes=1001); without output 0 it is a 1000-class classifier.
  """
  classifier = variables['params']['classifier']
  classifier['kernel'] = np.ascontiguousarray(classifier['kernel'][:, 1:])
  classifier['bias'] = np.ascontiguousarray(classifier['bias'][1:])


def fold_bn_epsilon(variables: dict[str, Any], source_epsilon: float,
                    epsilon: float) -> None:
  """Rescales every BN scale so inference with `epsilon` equals the source's.

  Our BatchNorm has TF's eps 1e-3; timm's own models use PyTorch's 1e-5.
  With moving statistics, scale / sqrt(var + eps) is all that eps touches, so
  multiplying the scale by sqrt((var + epsilon) / (var + source_epsilon))
  reproduces the source's eval output exactly (up to float rounding). In
  training mode the batch variance replaces `var`, where the fold is only as
  close as the batch variance is to the moving one.
  """
  def visit(params, stats):
    for key, value in params.items():
      if key == 'scale' and 'var' in stats:
        var = stats['var'].astype(np.float64)
        factor = np.sqrt((var + epsilon) / (var + source_epsilon))
        params[key] = (value * factor).astype(np.float32)
      elif isinstance(value, dict) and key in stats:
        visit(value, stats[key])
  visit(variables['params'], variables['batch_stats'])


def path_tokens(path: str) -> str:
  """The lower-cased path, for the name-based guesses (AdvProp, timm kind)."""
  return path.replace('\\', '/').lower()


def looks_like_advprop(path: str) -> bool:
  """'advprop' anywhere, or timm's '_ap' weight tag (tf_efficientnet_b0_ap-...,
  tf_efficientnet_b0.ap_in1k)."""
  text = path_tokens(path)
  return 'advprop' in text or re.search(r'[._]ap([-_.]|$)', text) is not None
