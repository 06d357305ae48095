"""Keras applications EfficientNetB0-B7 and EfficientNetV2 weights (KERAS:
keras/src/applications efficientnet.py, efficientnet_v2.py).

Three file layouts are read directly with h5py (no keras import):
- legacy HDF5, as `keras.applications` publishes its ImageNet weights
  (efficientnetb0.h5: one group per layer name, `weight_names` attributes) and
  as `model.save('x.h5')` writes (the same under `model_weights`, plus the
  model config);
- Keras 3 `.weights.h5` (`layers/<class>_<n>/vars/<i>`: layers are keyed by
  class name, numbered in model order, variables by creation index);
- Keras 3 `.keras` zip (config.json + model.weights.h5 in the Keras 3 layout).

Layer names (KERAS): `stem_conv`, `stem_bn`; per block `block<stage><a,b,..>_`
+ `expand_conv`, `expand_bn`, `dwconv` (depthwise, (k, k, C, 1)), `bn`,
`se_reduce`, `se_expand` (1x1 convs with bias), `project_conv`, `project_bn`;
`top_conv`, `top_bn`, `predictions`. V2 names its depthwise conv `dwconv2`;
its Fused-MBConv blocks have `expand_conv`/`expand_bn` (k x k) and
`project_conv`/`project_bn`, or with e=1 the k x k `project_conv` alone. BN
epsilon is Keras' default 1e-3, ours.

The model normalises its own input: Rescaling(1/255), Normalization, and for
`weights='imagenet'` one more Rescaling(1/sqrt(std)) because the ImageNet std
is stored in the Normalization's variance slot (tensorflow/tensorflow#49930).
Our network takes normalised images, so those layers become the mean_rgb /
std_rgb on [0, 255] recorded in the converted checkpoint
(`input_normalization`).
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
from typing import Any, Mapping, Sequence

from absl import logging
import h5py
import numpy as np

from efficientnet_jax import arch
from efficientnet_jax.convert import placement

# Variables of each weighted layer class, in creation order (the index under
# `vars/` in the Keras 3 layout).
CLASS_VARIABLES = {
    'Conv2D': ('kernel', 'bias'),
    'DepthwiseConv2D': ('kernel', 'bias'),
    'BatchNormalization': ('gamma', 'beta', 'moving_mean', 'moving_variance'),
    'Dense': ('kernel', 'bias'),
    'Normalization': ('mean', 'variance', 'count'),
}
# Keras 3 keys layers by the snake-cased class name (saving_lib).
CLASS_KEYS = {
    'Conv2D': 'conv2d',
    'DepthwiseConv2D': 'depthwise_conv2d',
    'BatchNormalization': 'batch_normalization',
    'Dense': 'dense',
    'Normalization': 'normalization',
}
BN_NAMES = ('gamma', 'beta', 'moving_mean', 'moving_variance')
# Our role -> Keras layer suffix inside a block (KERAS `block`).
BLOCK_LAYERS = dict(expand_conv='expand_conv', expand_bn='expand_bn',
                    depthwise_conv='dwconv', depthwise_bn='bn',
                    se_reduce='se_reduce', se_expand='se_expand',
                    project_conv='project_conv', project_bn='project_bn')
OUTER_LAYERS = dict(stem_conv='stem_conv', stem_bn='stem_bn',
                    head_conv='top_conv', head_bn='top_bn',
                    classifier='predictions')
KIND_CLASSES = dict(conv='Conv2D', depthwise='DepthwiseConv2D',
                    bn='BatchNormalization', dense='Dense')
# Keras applications' ImageNet std (IMAGENET_STDDEV_RGB), stored as variance.
KERAS_IMAGENET_STD = (0.229, 0.224, 0.225)
# keras.backend.epsilon(): Normalization divides by max(sqrt(var), this).
KERAS_EPSILON = 1e-7


def layer_name(layer: placement.Layer, family: str = 'efficientnet') -> str:
  """The Keras layer name of one of our layers."""
  if layer.block is None:
    return OUTER_LAYERS[layer.role]
  block = layer.block
  suffix = BLOCK_LAYERS[layer.role]
  if family == 'v2' and layer.role == 'depthwise_conv':
    suffix = 'dwconv2'  # KERAS efficientnet_v2.py MBConvBlock.
  # KERAS: name=f"block{i + 1}{chr(j + 97)}_" for stage i, repeat j.
  return f'block{block.stage}{chr(97 + block.index)}_{suffix}'


def layer_class(layer: placement.Layer) -> str:
  """The Keras class of one of our layers (KERAS builds SE as 1x1 convs)."""
  if layer.role in ('se_reduce', 'se_expand'):
    return 'Conv2D'
  return KIND_CLASSES[layer.kind]


def model_layers(spec: arch.ArchSpec) -> list[tuple[str, str]]:
  """(layer name, class) of every weighted layer, in Keras model order."""
  return [('normalization', 'Normalization')] + [
      (layer_name(layer, spec.family), layer_class(layer))
      for layer in placement.network_layers(spec)]


def entries(spec: arch.ArchSpec) -> list[placement.Entry]:
  """Where each of our tensors lives, as '<layer>/<variable>' names."""
  result = []
  for layer in placement.network_layers(spec):
    name = layer_name(layer, spec.family)
    if layer.kind == 'bn':
      result += [placement.Entry(target, f'{name}/{var}', placement.IDENTITY)
                 for target, var in zip(placement.bn_targets(layer.module),
                                        BN_NAMES)]
    elif layer.kind == 'conv':
      result.append(placement.Entry(('params', *layer.module, 'kernel'),
                                    f'{name}/kernel', placement.IDENTITY))
    elif layer.kind == 'depthwise':
      result.append(placement.Entry(('params', *layer.module, 'kernel'),
                                    f'{name}/kernel', placement.TF_DEPTHWISE))
    else:
      layout = (placement.IDENTITY if layer.role == 'classifier' else
                placement.TF_SE)
      result += [
          placement.Entry(('params', *layer.module, 'kernel'),
                          f'{name}/kernel', layout),
          placement.Entry(('params', *layer.module, 'bias'), f'{name}/bias',
                          placement.IDENTITY)]
  return result


def _text(value: Any) -> str:
  return value.decode('utf8') if isinstance(value, bytes) else str(value)


def _read_legacy(group: h5py.Group) -> dict[str, np.ndarray]:
  """Legacy HDF5: group per layer, `weight_names` like 'stem_bn/gamma:0'."""
  arrays = {}
  for layer in group.attrs['layer_names']:
    layer = _text(layer)
    for weight in group[layer].attrs.get('weight_names', []):
      weight = _text(weight)
      variable = weight.split('/')[-1].split(':')[0]
      # Keras 2 named the depthwise weight 'depthwise_kernel', Keras 3 'kernel'.
      variable = 'kernel' if variable == 'depthwise_kernel' else variable
      arrays[f'{layer}/{variable}'] = np.asarray(group[layer][weight])
  return arrays


def _read_keras3(group: h5py.Group,
                 layers: Sequence[tuple[str, str]]) -> dict[str, np.ndarray]:
  """Keras 3 layout: maps `<class>_<n>/vars/<i>` back to layer names.

  Args:
    group: the file's root.
    layers: (name, class) of the weighted layers in model order, from the
      saved config or, for a bare .weights.h5, from our spec.
  """
  stored = group['layers']
  counts: dict[str, int] = {}
  arrays = {}
  keyed = set()
  for name, class_name in layers:
    base = CLASS_KEYS[class_name]
    count = counts.get(base, 0)
    counts[base] = count + 1
    key = base if count == 0 else f'{base}_{count}'
    if key not in stored or 'vars' not in stored[key]:
      continue
    keyed.add(key)
    values = stored[key]['vars']
    for index, variable in enumerate(CLASS_VARIABLES[class_name]):
      if str(index) in values:
        arrays[f'{name}/{variable}'] = np.asarray(values[str(index)])
  # Weighted groups that no expected layer claimed stay visible as leftovers.
  for key in stored:
    if key not in keyed and 'vars' in stored[key] and len(stored[key]['vars']):
      for index in stored[key]['vars']:
        arrays[f'{key}/vars/{index}'] = np.asarray(stored[key]['vars'][index])
  return arrays


def _config_layers(config: Mapping[str, Any]) -> list[dict[str, Any]]:
  """The layer list of a saved Functional model config."""
  inner = config.get('config', config)
  layers = inner.get('layers')
  if not isinstance(layers, list):
    raise placement.ConversionError(
        'The saved Keras model is not a Functional EfficientNet (no layer '
        'list in its config); save the keras.applications model itself.')
  return layers


def _layer_class(layer: Mapping[str, Any]) -> str:
  return layer.get('class_name', '')


def _layer_config_name(layer: Mapping[str, Any]) -> str:
  return layer.get('config', {}).get('name', layer.get('name', ''))


class KerasFile:
  """A Keras weight or model file: arrays by '<layer>/<variable>' + config."""

  def __init__(self, path: str, spec: arch.ArchSpec):
    self.path = path
    self.config: dict[str, Any] | None = None
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if not {'config.json', 'model.weights.h5'} <= names:
          raise placement.ConversionError(
              f'{path!r} is a zip but not a .keras model (no config.json and '
              'model.weights.h5 inside).')
        self.config = json.loads(archive.read('config.json'))
        weights = io.BytesIO(archive.read('model.weights.h5'))
      with h5py.File(weights, 'r') as root:
        self.arrays = self._read_root(root, spec)
      return
    if not h5py.is_hdf5(path):
      raise placement.ConversionError(
          f'{path!r} is neither HDF5 (.h5, .weights.h5) nor a .keras zip: not '
          'a Keras weights or model file.')
    with h5py.File(path, 'r') as root:
      if 'model_config' in root.attrs:
        self.config = json.loads(_text(root.attrs['model_config']))
      self.arrays = self._read_root(root, spec)

  def _read_root(self, root: h5py.Group,
                 spec: arch.ArchSpec) -> dict[str, np.ndarray]:
    if 'model_weights' in root:
      root = root['model_weights']
    if 'layer_names' in root.attrs:
      return _read_legacy(root)
    if 'layers' in root:
      if self.config is not None:
        layers = [(_layer_config_name(layer), _layer_class(layer))
                  for layer in _config_layers(self.config)
                  if _layer_class(layer) in CLASS_KEYS]
      else:
        layers = model_layers(spec)
      return _read_keras3(root, layers)
    raise placement.ConversionError(
        f'{self.path!r} is HDF5 but holds no Keras weights (neither the '
        'legacy layer_names layout nor the Keras 3 layers/ layout).')


def _per_channel(value: Any) -> np.ndarray:
  return np.broadcast_to(np.asarray(value, np.float64).reshape(-1), (3,))


def _normalization_stats(arrays: Mapping[str, np.ndarray], name: str,
                         config: Mapping[str, Any] | None
                         ) -> tuple[np.ndarray, np.ndarray]:
  """A Normalization layer's mean and variance (config constants or weights)."""
  if config and config.get('mean') is not None:
    return _per_channel(config['mean']), _per_channel(config['variance'])
  if f'{name}/mean' not in arrays:
    raise placement.ConversionError(
        f'The Keras Normalization layer {name!r} has no stored mean/variance; '
        'pass --mean_rgb and --std_rgb.')
  return (_per_channel(arrays[f'{name}/mean']),
          _per_channel(arrays[f'{name}/variance']))


def input_normalization(keras_file: KerasFile,
                        spec: arch.ArchSpec | None = None
                        ) -> tuple[tuple[float, ...], tuple[float, ...], str]:
  """The (mean_rgb, std_rgb) on [0, 255] that the Keras input layers apply.

  The layers before the stem conv are composed into one per-channel affine
  map y = a * x + b on [0, 255] input; our model expects (x - mean) / std,
  so std = 1 / a and mean = -b / a.

  Returns:
    (mean_rgb, std_rgb, explanation for the log).
  """
  scale = np.ones(3)
  offset = np.zeros(3)
  arrays = keras_file.arrays
  if keras_file.config is not None:
    for layer in _config_layers(keras_file.config):
      class_name = _layer_class(layer)
      config = layer.get('config', {})
      if class_name in ('Conv2D', 'ZeroPadding2D'):
        break
      if class_name == 'Rescaling':
        factor = _per_channel(config.get('scale', 1.0))
        scale, offset = scale * factor, offset * factor + _per_channel(
            config.get('offset', 0.0))
      elif class_name == 'Normalization':
        if config.get('invert'):
          raise placement.ConversionError(
              'The Keras model inverts its Normalization layer; that is not '
              'an EfficientNet input; pass --mean_rgb and --std_rgb.')
        mean, variance = _normalization_stats(
            arrays, _layer_config_name(layer), config)
        denominator = np.maximum(np.sqrt(variance), KERAS_EPSILON)
        scale, offset = scale / denominator, (offset - mean) / denominator
    how = 'composed from the saved model\'s input layers'
  elif spec is not None and spec.family == 'v2':
    # KERAS efficientnet_v2.py: the input layers hold no weights; B0-B3
    # apply the ImageNet mean/std, S/M/L (x / 128 - 1), as our presets do.
    return (tuple(spec.mean_rgb), tuple(spec.std_rgb),
            'keras.applications EfficientNetV2 preprocessing of this variant')
  else:
    # A weights-only file: the application always starts with Rescaling(1/255)
    # and Normalization; the extra Rescaling(1/sqrt(variance)) exists exactly
    # when the variance slot holds the ImageNet std (weights='imagenet').
    names = sorted(name[:-len('/mean')] for name in arrays
                   if re.fullmatch(r'normalization(_\d+)?/mean', name))
    mean, variance = _normalization_stats(
        arrays, names[0] if names else 'normalization', None)
    scale = np.full(3, 1 / 255) / np.sqrt(variance)
    offset = -mean / np.sqrt(variance)
    how = 'Rescaling(1/255) + the stored Normalization'
    if np.allclose(variance, KERAS_IMAGENET_STD, rtol=0, atol=1e-6):
      scale, offset = scale / np.sqrt(variance), offset / np.sqrt(variance)
      how += (' + the ImageNet-weights Rescaling(1/sqrt(std)) (the variance '
              'slot holds the ImageNet std)')
  std = 1 / scale
  mean = -offset / scale
  return (tuple(float(v) for v in mean), tuple(float(v) for v in std), how)


def load(path: str, spec: arch.ArchSpec, variant: str, *,
         allow_unused: bool = False
         ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a Keras EfficientNet file into our variables.

  Returns:
    (variables, facts): facts hold 'num_classes', 'mean_rgb', 'std_rgb' and
    'normalization' (how they were derived).
  """
  if spec.family in ('lite', 'edgetpu'):
    raise placement.ConversionError(
        f'keras.applications has no EfficientNet-'
        f'{dict(lite="Lite", edgetpu="EdgeTPU")[spec.family]}; '
        'convert those weights with --source tf or --source timm.')
  keras_file = KerasFile(path, spec)
  description = f'Keras file {path!r}'
  has_se = any(re.search(r'_se_(reduce|expand)/', name)
               for name in keras_file.arrays)
  placement.check_family(spec, has_se, description, variant)
  if 'predictions/kernel' not in keras_file.arrays:
    raise placement.ConversionError(
        f'{description} has no classifier (predictions/kernel): an '
        'include_top=False export cannot become a full checkpoint.')
  num_classes = int(keras_file.arrays['predictions/kernel'].shape[-1])
  mean_rgb, std_rgb, how = input_normalization(keras_file, spec)
  # The input normalisation is metadata, not a parameter of ours.
  model_arrays = {name: value for name, value in keras_file.arrays.items()
                  if not name.startswith('normalization')}
  source = placement.DictSource(description, model_arrays)
  expected = placement.expected_variables(spec, num_classes)
  variables = placement.place(
      entries(spec), source, expected, variant=variant,
      allow_unused=allow_unused,
      unused_callback=lambda names: logging.warning(
          'Ignoring %d unused tensors: %s', len(names),
          placement.name_list(names)))
  logging.info('Keras input normalisation %s: mean_rgb %s, std_rgb %s.', how,
               mean_rgb, std_rgb)
  if not all(math.isfinite(v) and v > 0 for v in std_rgb):
    raise placement.ConversionError(
        f'{description} implies a non-positive input std {std_rgb}; pass '
        '--mean_rgb and --std_rgb.')
  return variables, dict(num_classes=num_classes, mean_rgb=mean_rgb,
                         std_rgb=std_rgb, normalization=how)
