"""Pretrained EfficientNet weights from TF, Keras and timm into our checkpoints.

  python -m efficientnet_jax.convert --source=tf --input=efficientnet-b0 \\
      --variant=b0 --output=converted/b0

or from Python::

  converted = convert.convert('tf', 'efficientnet-b0', 'b0')
  convert.save(converted, 'converted/b0')

The output is a checkpoint directory in our format (checkpoints.py): state
{'params', 'batch_stats'} and meta {'model' (the config's model section),
'num_classes', 'padding', 'mean_rgb', 'std_rgb', 'source', 'ema_weights'
(TF: whether the ExponentialMovingAverage copies were read; None for other
sources), 'background_class' ('dropped' or 'kept' for a 1001-class head
such as official EdgeTPU's, whose output 0 is the background; None
otherwise)}, which eval.py,
fine-tuning and `efficientnet_jax.create_model(checkpoint=...)` read. Values
are moved, never changed (transposes and reshapes only), except that timm's
own efficientnet_* weights get their BN eps folded into the BN scales and a
background class is dropped unless asked to keep it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import zipfile
from typing import Any, Sequence

from absl import logging

from efficientnet_jax import arch
from efficientnet_jax import checkpoints
from efficientnet_jax import errors
from efficientnet_jax import validate
from efficientnet_jax.convert import keras
from efficientnet_jax.convert import placement
from efficientnet_jax.convert import tf_official
from efficientnet_jax.convert import timm

ConversionError = placement.ConversionError
SOURCES = ('tf', 'keras', 'timm')
# ImageNet's 1000 classes plus a background class 0 (TPU-EDGE num_classes).
BACKGROUND_CLASSES = 1001
PADDINGS = ('auto', 'same', 'symmetric')


@dataclasses.dataclass
class Converted:
  """Converted weights: `variables` {'params', 'batch_stats'} and `meta`."""
  variables: dict[str, Any]
  meta: dict[str, Any]


def model_section(variant: str, padding: str,
                  resolution: int | None = None) -> dict[str, Any]:
  """The config's model section (configs/common.py) as a plain dict."""
  from configs import common  # pylint: disable=g-import-not-at-top
  section = common.model_config(variant).to_dict()
  section['padding'] = padding
  section['resolution'] = resolution
  return section


def _resolve_padding(source: str, padding: str, path: str) -> str:
  if padding not in PADDINGS:
    raise ConversionError(f'Unknown padding {padding!r}; use one of '
                          f'{", ".join(PADDINGS)}.')
  if source == 'timm':
    return timm.flavour_from_path(path) if padding == 'auto' else padding
  if padding == 'symmetric':
    raise ConversionError(
        f"--source {source} weights were trained with TF 'same' padding; "
        'symmetric padding exists only for timm\'s own efficientnet_* weights.')
  return 'same'


def _normalization(source: str, spec: arch.ArchSpec, facts: dict[str, Any],
                   advprop: bool, padding: str
                   ) -> tuple[tuple[float, ...], tuple[float, ...], str]:
  """The (mean_rgb, std_rgb) on [0, 255] the weights expect, and why.

  docs/reference.md §6.3: ImageNet mean/std for B models, (x - 127) / 128 for Lite,
  x * 2 / 255 - 1 for AdvProp checkpoints; Keras reads its own input layers.
  """
  if advprop:
    return arch.ADVPROP_MEAN, arch.ADVPROP_STD, 'AdvProp [-1, 1]'
  if source == 'keras':
    return facts['mean_rgb'], facts['std_rgb'], facts['normalization']
  if source == 'timm' and padding == 'symmetric':
    # timm's own weights (Lite included) train with its default ImageNet
    # mean/std (timm efficientnet.py _cfg).
    return arch.IMAGENET_MEAN, arch.IMAGENET_STD, 'timm ImageNet mean/std'
  return spec.mean_rgb, spec.std_rgb, f'{spec.family} default'


HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'
# How each source names an EfficientNet's tensors (its stem, its blocks).
NAMINGS = (
    ('timm', re.compile(r'(^|\.)(conv_stem\.weight|blocks\.\d+\.\d+\.)')),
    ('keras', re.compile(r'(^|/)(stem_conv|block\d+[a-z]_|depthwise_conv2d)')),
    ('tf', re.compile(r'efficientnet[\w-]*/(stem|blocks_\d+)/')),
)
FORMAT_SOURCES = {'safetensors': 'timm', 'hdf5': 'keras', 'keras': 'keras'}
FORMAT_NAMES = {'safetensors': 'a safetensors file', 'hdf5': 'an HDF5 file',
                'keras': 'a .keras model'}


def _safetensors_names(path: str) -> list[str] | None:
  """Tensor names from a safetensors header (8-byte length, JSON), or None."""
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) < 8:
      return None
    (length,) = struct.unpack('<Q', head)
    if not 2 <= length <= size - 8:
      return None
    try:
      header = json.loads(f.read(length))
    except ValueError:
      return None
  if not isinstance(header, dict):
    return None
  return [name for name in header if name != '__metadata__']


def _hdf5_names(path: str) -> list[str]:
  import h5py  # pylint: disable=g-import-not-at-top
  names = []
  with h5py.File(path, 'r') as root:
    root.visititems(lambda name, item: names.append(name)
                    if isinstance(item, h5py.Dataset) else None)
  return names


def tensor_names(path: str) -> tuple[str, list[str]] | None:
  """(format, tensor names) of a weights file, from its header alone.

  None for what this cannot read without the source's own library (TF
  checkpoints, torch files) or that is not a file; the source's reader then
  names the problem.
  """
  if not os.path.isfile(path):
    return None
  with open(path, 'rb') as f:
    signature = f.read(8)
  if signature == HDF5_SIGNATURE:
    return 'hdf5', _hdf5_names(path)
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      if 'config.json' not in archive.namelist():
        return None  # torch.save's zip, or another archive.
      try:
        config = json.loads(archive.read('config.json'))
        layers = config['config']['layers']
        return 'keras', [str(layer['config']['name']) for layer in layers]
      except (ValueError, KeyError, TypeError):
        return None
  names = _safetensors_names(path)
  return None if names is None else ('safetensors', names)


def naming(names: Sequence[str]) -> str | None:
  """Which source's EfficientNet naming `names` follow, or None."""
  for source, pattern in NAMINGS:
    if any(pattern.search(name) for name in names):
      return source
  return None


def recognise(source: str, path: str) -> None:
  """Refuses a file that is no EfficientNet, or one of another --source.

  Runs before any source-specific reading, so that a file of unrelated
  tensors is called what it is rather than, say, "a Lite checkpoint" (which
  the SE-based family test would conclude).
  """
  found = tensor_names(path)
  if found is None:
    return
  file_format, names = found
  if naming(names) is None:
    examples = ', '.join(sorted(names)[:4]) or 'none'
    raise ConversionError(
        f'{path!r} is not an EfficientNet checkpoint: found tensors like '
        f'{examples} ({len(names)} in all); convert reads timm state dicts '
        '(conv_stem.weight, blocks.0.0...), Keras EfficientNet files '
        '(stem_conv, block1a_...) and TF reference checkpoints '
        '(efficientnet-b0/stem/...).')
  wanted = FORMAT_SOURCES[file_format]
  if source != wanted:
    raise ConversionError(
        f'{path!r} is {FORMAT_NAMES[file_format]} of EfficientNet tensors, '
        f'which --source {wanted} reads, not --source {source}; pass '
        f'--source {wanted}.')


def _three_floats(values: Sequence[float] | None, name: str
                  ) -> tuple[float, ...] | None:
  if values is None:
    return None
  try:
    values = tuple(float(v) for v in values)
  except ValueError:
    raise ConversionError(f'--{name} takes numbers; got {values}.') from None
  if len(values) != 3:
    raise ConversionError(f'--{name} needs three values (R,G,B on [0, 255]); '
                          f'got {len(values)}.')
  return values


def convert(source: str, path: str, variant: str, *,
            advprop: bool | None = None, padding: str = 'auto',
            use_ema: bool = True, allow_unused: bool = False,
            mean_rgb: Sequence[float] | None = None,
            std_rgb: Sequence[float] | None = None,
            resolution: int | None = None,
            keep_background_class: bool = False) -> Converted:
  """Reads a published checkpoint into our variables and meta.

  Args:
    source: 'tf' (official TF checkpoints: V1, Lite, EdgeTPU, V2), 'keras'
      (keras.applications files, V1 and V2) or 'timm' (state dicts).
    path: the checkpoint: a TF checkpoint directory or prefix, a Keras
      .h5/.weights.h5/.keras file, a timm .safetensors/.pth file.
    variant: 'b0'..'b8', 'l2', 'lite0'..'lite4', 'edgetpu-s'..'edgetpu-l',
      'v2-b0'..'v2-b3', 'v2-s'..'v2-xl'.
    advprop: the weights expect AdvProp's [-1, 1] input; None guesses from
      the path ('advprop', or timm's '_ap' tag).
    padding: 'auto', 'same' or 'symmetric' (only timm's own efficientnet_*
      weights are symmetric; auto tells them apart by 'tf_efficientnet' in
      the path).
    use_ema: TF checkpoints: read the ExponentialMovingAverage copies.
    allow_unused: warn about, instead of rejecting, tensors with no place.
    mean_rgb: override the recorded input mean (on [0, 255]).
    std_rgb: override the recorded input std (on [0, 255]).
    resolution: the evaluation resolution to record in the model section
      (None: the variant's own; e.g. 475 for the L2-475 checkpoint).
    keep_background_class: a 1001-class classifier (official EdgeTPU: output
      0 is the background class) stays 1001 wide; by default output 0 is
      dropped, leaving the 1000 ImageNet classes in their usual order.

  Returns:
    The converted variables and the checkpoint meta.

  Raises:
    ConversionError: with a one-line message naming the problem.
  """
  if source not in SOURCES:
    raise ConversionError(f'Unknown source {source!r}; use one of '
                          f'{", ".join(SOURCES)}.')
  try:
    validate.check_variant(variant, resolution=resolution)
  except errors.ConfigError as e:
    raise ConversionError(str(e)) from None
  spec = arch.spec_for(variant)
  if not os.path.exists(path) and not (
      source == 'tf' and os.path.exists(path + '.index')):
    raise ConversionError(f'No such file or directory: {path!r}.')
  recognise(source, path)
  mean_rgb = _three_floats(mean_rgb, 'mean_rgb')
  std_rgb = _three_floats(std_rgb, 'std_rgb')
  padding = _resolve_padding(source, padding, path)
  if advprop is None:
    advprop = placement.looks_like_advprop(path)
    if advprop:
      logging.info('Treating %s as an AdvProp checkpoint (from its path); '
                   'pass --noadvprop if it is not.', path)

  details = []
  ema_weights = None
  if source == 'tf':
    variables, facts = tf_official.load(path, spec, variant, use_ema=use_ema,
                                        allow_unused=allow_unused)
    ema_weights = facts['ema']
    details.append(f"{facts['prefix']}, "
                   f"{'EMA' if facts['ema'] else 'raw'} weights")
    path = facts['checkpoint']
  elif source == 'keras':
    variables, facts = keras.load(path, spec, variant,
                                  allow_unused=allow_unused)
  else:
    variables, facts = timm.load(path, spec, variant, padding=padding,
                                 allow_unused=allow_unused)
    if facts['bn_epsilon_folded']:
      details.append(f"BN eps {facts['bn_epsilon_folded']:g} folded into the "
                     'scales')
  num_classes = facts['num_classes']
  background_class = None
  if num_classes == BACKGROUND_CLASSES:
    if keep_background_class:
      background_class = 'kept'
      details.append('1001 classes, output 0 the background')
    else:
      placement.drop_background_class(variables)
      num_classes -= 1
      background_class = 'dropped'
      details.append('background class 0 dropped')
    logging.info('The classifier has %d outputs, output 0 the background '
                 'class: %s.', BACKGROUND_CLASSES, background_class)

  mean, std, how = _normalization(source, spec, facts, advprop, padding)
  if mean_rgb is not None or std_rgb is not None:
    mean, std = mean_rgb or mean, std_rgb or std
    how = 'given on the command line'
  logging.info('Input normalisation (%s): mean_rgb %s, std_rgb %s.', how,
               mean, std)
  description = f'{source}:{os.path.abspath(path)}'
  if details:
    description += f' ({"; ".join(details)})'
  meta = dict(model=model_section(variant, padding, resolution),
              num_classes=num_classes,
              padding=padding,
              mean_rgb=[float(v) for v in mean],
              std_rgb=[float(v) for v in std],
              source=description,
              ema_weights=ema_weights,
              background_class=background_class)
  return Converted(variables, meta)


def check_output(output: str) -> None:
  """Refuses an output directory that already holds a checkpoint."""
  if checkpoints.latest_step(output) is not None:
    raise ConversionError(f'{output!r} already holds a checkpoint; choose a '
                          'new --output or delete it.')


def save(converted: Converted, output: str) -> None:
  """Writes a converted checkpoint; refuses to overwrite an existing one."""
  check_output(output)
  state = dict(params=converted.variables['params'],
               batch_stats=converted.variables['batch_stats'])
  checkpoints.save(output, state, converted.meta)
  logging.info('Wrote %s (%s).', output, converted.meta['source'])


__all__ = ['ConversionError', 'Converted', 'check_output', 'convert', 'keras',
           'save', 'tf_official', 'timm']
