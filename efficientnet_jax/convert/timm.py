"""timm (PyTorch) EfficientNet state dicts: .safetensors, or .pth with torch.

Names (TIMM timm/models/efficientnet.py, _efficientnet_blocks.py):
`conv_stem.weight` (OIHW), `bn1.{weight,bias,running_mean,running_var,
num_batches_tracked}`, `blocks.<stage>.<index>.*`, `conv_head.weight`,
`bn2.*`, `classifier.{weight,bias}` ((classes, features)). Blocks, by our
block type (TIMM _efficientnet_blocks.py):
- MBConv with expansion ratio 1: DepthwiseSeparableConv, `conv_dw`, `bn1`,
  `se.conv_reduce`, `se.conv_expand`, `conv_pw` (the projection), `bn2`;
- other MBConv: InvertedResidual, `conv_pw` (expansion), `bn1`, `conv_dw`,
  `bn2`, `se.*`, `conv_pwl` (projection), `bn3`;
- Fused-MBConv with expansion ratio 1 (V2's first stage, timm's 'cn'):
  ConvBnAct, `conv` and `bn1`;
- other Fused-MBConv (V2, 'er') and EdgeTPU's fused expansion ('er'):
  EdgeResidual, `conv_exp`, `bn1`, `se.*`, `conv_pwl`, `bn2`.
Lite and EdgeTPU models have no `se.*`. V2 ports are `tf_efficientnetv2_*`,
EdgeTPU ports `tf_efficientnet_e{s,m,l}` (1000 classes: timm dropped the
official background class).

Two kinds of weights share these names:
- `tf_efficientnet_*` / `tf_efficientnet_lite*`: the official TF weights
  ported, run with TF 'same' padding and BN eps 1e-3 (BN_EPS_TF_DEFAULT):
  exactly our network.
- timm's own `efficientnet_*`: trained with PyTorch symmetric padding and
  BatchNorm2d's eps 1e-5. We record padding='symmetric' and fold the eps
  difference into the BN scales (`placement.fold_bn_epsilon`), because our
  BatchNorm's eps is fixed at the reference's 1e-3.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from absl import logging
import numpy as np

from efficientnet_jax import arch
from efficientnet_jax.convert import placement

TORCH_BN_NAMES = ('weight', 'bias', 'running_mean', 'running_var')
# PyTorch's BatchNorm2d default eps, which timm's own efficientnet_* keep.
TORCH_BN_EPSILON = 1e-5
# Our BatchNorm's eps (layers.BatchNorm; TPU-BUILD batch_norm_epsilon).
OUR_BN_EPSILON = 1e-3
OUTER_MODULES = dict(stem_conv='conv_stem', stem_bn='bn1',
                     head_conv='conv_head', head_bn='bn2',
                     classifier='classifier')
SEPARABLE_MODULES = dict(depthwise_conv='conv_dw', depthwise_bn='bn1',
                         se_reduce='se.conv_reduce', se_expand='se.conv_expand',
                         project_conv='conv_pw', project_bn='bn2')
INVERTED_MODULES = dict(expand_conv='conv_pw', expand_bn='bn1',
                        depthwise_conv='conv_dw', depthwise_bn='bn2',
                        se_reduce='se.conv_reduce', se_expand='se.conv_expand',
                        project_conv='conv_pwl', project_bn='bn3')
SAFETENSORS = ('.safetensors',)
TORCH_FILES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')
# Keys under which training checkpoints nest the weights; EMA first, as the
# official eval prefers the EMA weights too.
NESTED_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')


CONV_BN_ACT_MODULES = dict(project_conv='conv', project_bn='bn1')
EDGE_RESIDUAL_MODULES = dict(expand_conv='conv_exp', expand_bn='bn1',
                             se_reduce='se.conv_reduce',
                             se_expand='se.conv_expand',
                             project_conv='conv_pwl', project_bn='bn2')


def block_modules(block: arch.BlockSpec) -> dict[str, str]:
  """Our role -> timm module name inside one of timm's blocks."""
  if block.block_type == 'mbconv':
    return SEPARABLE_MODULES if block.expand_ratio == 1 else INVERTED_MODULES
  if block.block_type == 'fused_mbconv' and block.expand_ratio == 1:
    return CONV_BN_ACT_MODULES
  return EDGE_RESIDUAL_MODULES


def module_name(layer: placement.Layer) -> str:
  """The timm module path of one of our layers."""
  if layer.block is None:
    return OUTER_MODULES[layer.role]
  block = layer.block
  names = block_modules(block)
  # timm's blocks.<stage>.<index> is 0-based where our stages count from 1.
  return f'blocks.{block.stage - 1}.{block.index}.{names[layer.role]}'


def entries(spec: arch.ArchSpec) -> list[placement.Entry]:
  """Where each of our tensors lives in a timm state dict."""
  result = []
  for layer in placement.network_layers(spec):
    name = module_name(layer)
    if layer.kind == 'bn':
      result += [placement.Entry(target, f'{name}.{var}', placement.IDENTITY)
                 for target, var in zip(placement.bn_targets(layer.module),
                                        TORCH_BN_NAMES)]
    elif layer.kind in ('conv', 'depthwise'):
      result.append(placement.Entry(('params', *layer.module, 'kernel'),
                                    f'{name}.weight', placement.TORCH_CONV))
    else:
      layout = (placement.TORCH_DENSE if layer.role == 'classifier' else
                placement.TORCH_SE)
      result += [
          placement.Entry(('params', *layer.module, 'kernel'),
                          f'{name}.weight', layout),
          placement.Entry(('params', *layer.module, 'bias'), f'{name}.bias',
                          placement.IDENTITY)]
  return result


def _torch_load(path: str) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise placement.ConversionError(
        f'Reading {path!r} needs torch, which is not installed; save the state '
        'dict as .safetensors (safetensors.torch.save_file) or install torch.'
    ) from None
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise placement.ConversionError(
        f'torch cannot read {path!r} ({type(e).__name__}); is it a PyTorch '
        'state dict?') from None
  return loaded


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """A timm state dict as numpy arrays: EMA weights preferred, prefixes off."""
  if not os.path.isfile(path):
    raise placement.ConversionError(f'No timm weights file at {path!r}.')
  lower = path.lower()
  if lower.endswith(SAFETENSORS):
    # pylint: disable-next=g-import-not-at-top
    from safetensors import numpy as safetensors_numpy
    try:
      loaded = safetensors_numpy.load_file(path)
    except Exception as e:  # pylint: disable=broad-except
      raise placement.ConversionError(
          f'{path!r} is not a readable .safetensors file '
          f'({type(e).__name__}).') from None
  elif lower.endswith(TORCH_FILES):
    loaded = _torch_load(path)
  else:
    raise placement.ConversionError(
        f'Unknown timm weights format {os.path.basename(path)!r}: expected '
        f'{", ".join(SAFETENSORS + TORCH_FILES)}.')
  for key in NESTED_KEYS:
    if isinstance(loaded.get(key), Mapping):
      loaded = loaded[key]
      break
  arrays = {}
  for name, value in loaded.items():
    if name.endswith('num_batches_tracked'):
      continue  # PyTorch's BN step counter; no counterpart in inference.
    if name.startswith('module.'):  # DistributedDataParallel's wrapper.
      name = name[len('module.'):]
    if hasattr(value, 'detach'):  # A torch tensor.
      value = value.detach().cpu().float().numpy()
    arrays[name] = np.asarray(value)
  return arrays


def flavour_from_path(path: str) -> str:
  """'same' for tf_efficientnet_* ports, 'symmetric' for timm's own models."""
  text = placement.path_tokens(path)
  if 'tf_efficientnet' in text:
    return 'same'
  if 'efficientnet' in text:
    return 'symmetric'
  raise placement.ConversionError(
      f'Cannot tell from {path!r} whether these are timm tf_efficientnet_* '
      "weights (TF 'same' padding) or timm's own efficientnet_* (symmetric "
      'padding); pass --padding=same or --padding=symmetric.')


def load(path: str, spec: arch.ArchSpec, variant: str, *, padding: str,
         allow_unused: bool = False
         ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a timm state dict into our variables.

  Args:
    path: .safetensors or (with torch) .pth file.
    spec: the network.
    variant: for messages.
    padding: 'same' (tf_efficientnet_* ports) or 'symmetric' (timm's own
      weights, whose BN eps 1e-5 is then folded into the BN scales).
    allow_unused: tolerate left-over tensors.

  Returns:
    (variables, facts): facts hold 'num_classes' and 'bn_epsilon_folded'.
  """
  source = placement.DictSource(f'timm state dict {path!r}',
                                read_state_dict(path))
  has_se = any('.se.conv_reduce.' in name for name in source.shapes)
  placement.check_family(spec, has_se, source.description, variant)
  if 'classifier.weight' not in source.shapes:
    raise placement.ConversionError(
        f'{source.description} has no classifier.weight: a features-only or '
        'num_classes=0 export cannot become a full checkpoint.')
  num_classes = int(source.shapes['classifier.weight'][0])
  expected = placement.expected_variables(spec, num_classes)
  variables = placement.place(
      entries(spec), source, expected, variant=variant,
      allow_unused=allow_unused,
      unused_callback=lambda names: logging.warning(
          'Ignoring %d unused tensors: %s', len(names),
          placement.name_list(names)))
  folded = None
  if padding == 'symmetric':
    placement.fold_bn_epsilon(variables, TORCH_BN_EPSILON, OUR_BN_EPSILON)
    folded = TORCH_BN_EPSILON
    logging.info('Folded timm BN eps %g into the BN scales (ours is %g).',
                 TORCH_BN_EPSILON, OUR_BN_EPSILON)
  return variables, dict(num_classes=num_classes, bn_epsilon_folded=folded)
