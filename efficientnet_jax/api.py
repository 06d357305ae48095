"""create_model: an EfficientNet and its variables in one call, as in timm.

Re-exported as `efficientnet_jax.create_model`.
"""

from __future__ import annotations

from typing import Any

import jax

from efficientnet_jax import arch
from efficientnet_jax import checkpoints
from efficientnet_jax import execution as execution_lib
from efficientnet_jax import models
from efficientnet_jax import validate

# Options of the Flax module (models.EfficientNet) that create_model accepts.
MODULE_OPTIONS = ('padding', 'include_top', 'bn_group_size',
                  'normalize_input', 'mean_rgb', 'std_rgb')


def create_model(variant: str, *, num_classes: int = 1000,
                 checkpoint: str | None = None, rng: jax.Array | None = None,
                 **overrides: Any) -> tuple[models.EfficientNet, dict[str, Any]]:
  """Builds an EfficientNet and its variables.

  Args:
    variant: 'b0'..'b8', 'l2', 'lite0'..'lite4', 'phi=<float>' (the compound
      scaling rule) or 'lite-phi=<float>'.
    num_classes: classifier width.
    checkpoint: a train.py workdir or a `python -m efficientnet_jax.convert`
      output directory; its EMA weights are used when present, and the padding
      and input normalisation it records are adopted (explicit overrides win).
    rng: PRNG key for random initialisation (default key 0); unused when
      loading a checkpoint.
    **overrides: model-section fields (`phi`, `alpha`, `beta`, `gamma`,
      `depth_divisor`, `drop_path_rate`, `dropout_rate`, `resolution`),
      module options (`padding`: 'same' or 'symmetric', `include_top`,
      `bn_group_size`, `mean_rgb`/`std_rgb`, `normalize_input`: True to
      feed raw [0, 255] RGB) and execution options, resolved for jax's
      default backend into `model.execution` (`dtype`: 'float32' or
      'bfloat16', `kernels`, `depthwise_impl`, `recompute`,
      `recompute_min_bytes`, `inference_chunk_bytes`; see
      efficientnet_jax/execution.py).

  Returns:
    (model, variables). `model.apply(variables, images, train=False)` takes a
    float NHWC batch normalised as (x - mean) / std on [0, 255] RGB with
    (mean, std) = `model.normalization` (ImageNet mean/std for B-models,
    127/128 for Lite, what a converted checkpoint recorded, e.g. AdvProp's
    [-1, 1]) and returns float32 logits.
  """
  module_options = {k: overrides.pop(k) for k in MODULE_OPTIONS
                    if k in overrides}
  module_options['execution'] = execution_lib.resolve(
      {k: overrides.pop(k) for k in execution_lib.FIELDS if k in overrides})
  validate.check_field('create_model num_classes', num_classes,
                       validate.integer(1))
  fields = arch.parse_variant(variant)
  if set(overrides) <= set(fields):  # Else spec_for names the unknown ones.
    # The checks train.py applies (ranges, a network that fits a machine),
    # before a large depth builds its block list.
    validate.check_model_section(fields | overrides,
                                 prefix=f'create_model({variant!r})')
  spec = arch.spec_for(variant, **overrides)
  if checkpoint is None:
    model = models.EfficientNet(spec, num_classes=num_classes, **module_options)
    rng = jax.random.key(0) if rng is None else rng
    return model, models.init_variables(model, rng)
  variables, meta = checkpoints.load_variables(checkpoint)
  for name in ('padding', 'mean_rgb', 'std_rgb'):
    if name in meta and name not in module_options:
      module_options[name] = (tuple(meta[name]) if name != 'padding' else
                              meta[name])
  model = models.EfficientNet(spec, num_classes=num_classes, **module_options)
  mismatch = checkpoints.first_mismatch(models.abstract_variables(model),
                                        variables)
  if mismatch:
    raise ValueError(f'Checkpoint {checkpoint!r} does not fit {spec.name} with '
                     f'{num_classes} classes: {mismatch}.')
  return model, variables

