"""The official TF checkpoints: tensorflow/tpu models/official/efficientnet
(V1, Lite, EdgeTPU) and google/automl efficientnetv2 (V2).

Variable names, verified against TPU-MODEL (efficientnet_model.py),
TPU-BUILD (efficientnet_builder.py), TPU-EDGE and V2-MODEL
(effnetv2_model.py); the Lite and EdgeTPU builders reuse the TPU model code:
- everything lives under the model name's scope, e.g. `efficientnet-b0/`,
  `efficientnet-lite0/`, `efficientnet-edgetpu-S/` (`build_model`:
  tf.variable_scope(model_name)) or `efficientnetv2-s/` (V2-MODEL: the Keras
  model's name);
- `stem/conv2d/kernel`, `stem/tpu_batch_normalization/{gamma,beta,
  moving_mean,moving_variance}` (utils.BatchNormalization is named
  'tpu_batch_normalization' on every platform, in both code bases);
- `blocks_N/...` numbered globally 0..N-1. Inside a block the convs and batch
  norms are named by a counter in creation order: `conv2d`, `conv2d_1` and
  `tpu_batch_normalization`, `_1`, `_2` (TPU-MODEL through tf.layers' name
  uniquification, V2-MODEL through explicit get_conv_name/get_norm_name
  counters). So MBConv's expansion is `conv2d` and its projection
  `conv2d_1`, or the projection is `conv2d` when expand_ratio is 1; the same
  counter numbers the fused blocks (V2 Fused-MBConv, EdgeTPU's block without
  depthwise conv); `depthwise_conv2d/depthwise_kernel` (k, k, C, 1);
  `se/conv2d` (reduce) and `se/conv2d_1` (expand), 1x1 kernels with biases;
- `head/conv2d/kernel`, `head/tpu_batch_normalization/...`,
  `head/dense/{kernel,bias}` (kernel (features, classes); V2-MODEL calls its
  Dense inside tf.name_scope('head'), marked "legacy", to keep this name).
- EdgeTPU's classifier has 1001 outputs, class 0 the background (TPU-EDGE
  num_classes=1001); `convert` drops or keeps it.
- Training checkpoints add `<name>/ExponentialMovingAverage` for every
  trainable variable and BN moving statistic (utils.get_ema_vars in both code
  bases) and the optimizer slots; the official evals restore the EMA copies,
  and so do we unless told otherwise.

Reading uses `tf.train.load_checkpoint`; tensorflow is imported only here.
"""

from __future__ import annotations

import glob
import os
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from efficientnet_jax import arch
from efficientnet_jax.convert import placement

EMA_SUFFIX = '/ExponentialMovingAverage'
# Optimizer slots and bookkeeping that a training checkpoint may carry.
SLOT_SUFFIXES = ('/RMSProp', '/RMSProp_1', '/Momentum')
BOOKKEEPING = ('global_step',)
# TF's BatchNormalization variable names, in our BN_VARIABLES order.
TF_BN_NAMES = ('gamma', 'beta', 'moving_mean', 'moving_variance')
STEM_KERNEL = '/stem/conv2d/kernel'


def block_layer_names(layers: Sequence[placement.Layer]) -> dict[str, str]:
  """Our role -> TF layer scope inside `blocks_N`, for one block's layers in
  creation order: convs and batch norms each take the next name of their
  counter (`conv2d`, `conv2d_1`; `tpu_batch_normalization`, `_1`, `_2`)."""
  counters = {'conv': 0, 'bn': 0}
  bases = {'conv': 'conv2d', 'bn': 'tpu_batch_normalization'}
  names = {}
  for layer in layers:
    if layer.role == 'depthwise_conv':
      names[layer.role] = 'depthwise_conv2d'
    elif layer.role in ('se_reduce', 'se_expand'):
      names[layer.role] = ('se/conv2d' if layer.role == 'se_reduce' else
                           'se/conv2d_1')
    else:
      kind = 'bn' if layer.kind == 'bn' else 'conv'
      count = counters[kind]
      counters[kind] += 1
      names[layer.role] = bases[kind] + (f'_{count}' if count else '')
  return names


HEAD_LAYERS = dict(stem_conv='stem/conv2d',
                   stem_bn='stem/tpu_batch_normalization',
                   head_conv='head/conv2d',
                   head_bn='head/tpu_batch_normalization',
                   classifier='head/dense')


def entries(spec: arch.ArchSpec, prefix: str) -> list[placement.Entry]:
  """Where each of our tensors lives in an official checkpoint."""
  layers = placement.network_layers(spec)
  by_block: dict[int, list[placement.Layer]] = {}
  for layer in layers:
    if layer.block is not None:
      by_block.setdefault(layer.block_number, []).append(layer)
  scopes = {number: block_layer_names(block_layers)
            for number, block_layers in by_block.items()}
  result = []
  for layer in layers:
    if layer.block is None:
      scope = f'{prefix}/{HEAD_LAYERS[layer.role]}'
    else:
      scope = (f'{prefix}/blocks_{layer.block_number}/'
               f'{scopes[layer.block_number][layer.role]}')
    if layer.kind == 'bn':
      for target, name in zip(placement.bn_targets(layer.module), TF_BN_NAMES):
        result.append(placement.Entry(target, f'{scope}/{name}',
                                      placement.IDENTITY))
    elif layer.kind == 'conv':
      result.append(placement.Entry(('params', *layer.module, 'kernel'),
                                    f'{scope}/kernel', placement.IDENTITY))
    elif layer.kind == 'depthwise':
      result.append(placement.Entry(('params', *layer.module, 'kernel'),
                                    f'{scope}/depthwise_kernel',
                                    placement.TF_DEPTHWISE))
    else:  # Dense: SE 1x1 convs (reshaped) or the classifier.
      layout = (placement.IDENTITY if layer.role == 'classifier' else
                placement.TF_SE)
      result += [
          placement.Entry(('params', *layer.module, 'kernel'),
                          f'{scope}/kernel', layout),
          placement.Entry(('params', *layer.module, 'bias'),
                          f'{scope}/bias', placement.IDENTITY)]
  return result


def find_checkpoint(path: str) -> str:
  """The checkpoint prefix for a prefix, an .index file or a directory.

  A directory is searched the way the official eval does (its `checkpoint`
  state file), then for a single `*.index` file in it or one level below
  (the published tarballs unpack into efficientnet-bN/model.ckpt.*).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if path.endswith('.index') and os.path.isfile(path):
    return path[:-len('.index')]
  if os.path.isfile(path + '.index'):
    return path
  if os.path.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest and os.path.isfile(latest + '.index'):
      return latest
    found = sorted(glob.glob(os.path.join(path, '*.index')) +
                   glob.glob(os.path.join(path, '*', '*.index')))
    if len(found) == 1:
      return found[0][:-len('.index')]
    if len(found) > 1:
      raise placement.ConversionError(
          f'{path!r} holds {len(found)} TF checkpoints '
          f'({placement.name_list(found)}); pass the one to convert '
          '(its prefix, e.g. DIR/model.ckpt).')
  raise placement.ConversionError(
      f'No TF checkpoint at {path!r}: expected a directory with model.ckpt.* '
      'files, a checkpoint prefix (DIR/model.ckpt) or its .index file.')


class CheckpointSource(placement.TensorSource):
  """The model variables of an official checkpoint, EMA copies preferred."""

  def __init__(self, prefix: str, use_ema: bool):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    try:
      self._reader = tf.train.load_checkpoint(prefix)
      all_shapes = self._reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as e:
      message = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise placement.ConversionError(
          f'Cannot read {prefix!r} as a TF checkpoint ({type(e).__name__}: '
          f'{message}).') from None
    self._names = {}  # Our logical name -> the stored variable to read.
    shapes = {}
    ema = {name[:-len(EMA_SUFFIX)] for name in all_shapes
           if name.endswith(EMA_SUFFIX)}
    self.ema_used = 0
    for name, shape in all_shapes.items():
      if (name.endswith(EMA_SUFFIX) or name.endswith(SLOT_SUFFIXES) or
          name in BOOKKEEPING):
        continue
      stored = name + EMA_SUFFIX if use_ema and name in ema else name
      self.ema_used += stored != name
      self._names[name] = stored
      shapes[name] = tuple(shape)
    # EMA copies whose raw variable is absent still hold a model variable.
    for name in ema - set(self._names):
      self._names[name] = name + EMA_SUFFIX
      shapes[name] = tuple(all_shapes[name + EMA_SUFFIX])
      self.ema_used += 1
    super().__init__(f'TF checkpoint {prefix!r}', shapes)

  def read(self, name: str) -> np.ndarray:
    return np.asarray(self._reader.get_tensor(self._names[name]))


def model_prefix(source: placement.TensorSource) -> str:
  """The model-name scope ('efficientnet-b0'), found from the stem kernel."""
  prefixes = sorted(name[:-len(STEM_KERNEL)] for name in source.shapes
                    if name.endswith(STEM_KERNEL))
  if not prefixes:
    raise placement.ConversionError(
        f'{source.description} has no EfficientNet stem '
        f'(<model>{STEM_KERNEL}): not an official EfficientNet checkpoint.')
  if len(prefixes) > 1:
    raise placement.ConversionError(
        f'{source.description} holds several networks '
        f'({placement.name_list(prefixes)}); convert one checkpoint per model.')
  return prefixes[0]


def load(path: str, spec: arch.ArchSpec, variant: str, *, use_ema: bool = True,
         allow_unused: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads an official checkpoint into our variables.

  Returns:
    (variables, facts): facts hold 'num_classes', 'prefix', 'ema' and
    'checkpoint' for the meta and the log.
  """
  prefix_path = find_checkpoint(path)
  source = CheckpointSource(prefix_path, use_ema)
  prefix = model_prefix(source)
  # TPU-EDGE names its scopes 'efficientnet-edgetpu-S'; ours are lower case.
  if prefix.lower() != spec.name.lower():
    logging.warning('The checkpoint is %s, converting it as %s.', prefix,
                    spec.name)
  has_se = any(f'{prefix}/blocks_' in name and '/se/' in name
               for name in source.shapes)
  placement.check_family(spec, has_se, source.description, variant)
  dense = f'{prefix}/head/dense/kernel'
  if dense not in source.shapes:
    raise placement.ConversionError(
        f'{source.description} has no classifier ({dense}): a features-only '
        'export cannot become a full checkpoint.')
  num_classes = int(source.shapes[dense][-1])
  expected = placement.expected_variables(spec, num_classes)
  variables = placement.place(
      entries(spec, prefix), source, expected, variant=variant,
      allow_unused=allow_unused,
      unused_callback=lambda names: logging.warning(
          'Ignoring %d unused tensors: %s', len(names),
          placement.name_list(names)))
  logging.info('Read %s (%s, %d EMA copies used).', prefix_path, prefix,
               source.ema_used)
  return variables, dict(num_classes=num_classes, prefix=prefix,
                         ema=source.ema_used > 0, checkpoint=prefix_path)


def export_arrays(spec: arch.ArchSpec, variables: Mapping[str, Any],
                  prefix: str) -> dict[str, np.ndarray]:
  """Our variables under the official names (the inverse of `load`)."""
  return placement.export(entries(spec, prefix), variables)


def write_checkpoint(arrays: Mapping[str, np.ndarray], prefix_path: str) -> str:
  """Writes arrays under exactly these variable names as a TF V2 checkpoint.

  The SaveV2 op stores names verbatim (object-based tf.train.Checkpoint would
  rename them), which is what the official readers expect. Also writes the
  `checkpoint` state file so the directory works with latest_checkpoint.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  names = sorted(arrays)
  os.makedirs(os.path.dirname(os.path.abspath(prefix_path)), exist_ok=True)
  tf.raw_ops.SaveV2(prefix=prefix_path, tensor_names=names,
                    shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(arrays[name]) for name in names])
  # The text-proto state file tf.train.latest_checkpoint reads; a relative
  # name keeps the directory movable.
  directory, name = os.path.split(os.path.abspath(prefix_path))
  with open(os.path.join(directory, 'checkpoint'), 'w') as f:
    f.write(f'model_checkpoint_path: "{name}"\n'
            f'all_model_checkpoint_paths: "{name}"\n')
  return prefix_path


def export(spec: arch.ArchSpec, variables: Mapping[str, Any], prefix_path: str,
           *, model_name: str | None = None) -> str:
  """Writes our variables as an official-style checkpoint (raw names, no EMA).

  Args:
    spec: the network.
    variables: {'params', 'batch_stats'}.
    prefix_path: e.g. 'out/efficientnet-b0/model.ckpt'.
    model_name: the scope; default the spec's name ('efficientnet-b0').
  """
  return write_checkpoint(
      export_arrays(spec, variables, model_name or spec.name), prefix_path)
