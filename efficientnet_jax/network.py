"""The network a run builds from its config: spec, Flax module, input format.

Training and evaluation both start here: a config's model section (and, for a
checkpoint, its recorded normalisation) becomes the resolved `ArchSpec`, its
execution section the `Execution` for this backend, and both the
`EfficientNet` module (carrying the input normalisation the steps apply) and
the arguments the input pipeline needs to feed it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from efficientnet_jax import arch
from efficientnet_jax import errors
from efficientnet_jax import execution as execution_lib
from efficientnet_jax import models


@dataclasses.dataclass(frozen=True)
class Network:
  """What both train and eval derive from a model section and a dataset."""
  spec: arch.ArchSpec
  model: models.EfficientNet
  num_classes: int
  pipeline_args: dict[str, Any]  # resolution, resize_method.

  @property
  def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean_rgb, std_rgb) the steps normalise the pipeline's images with."""
    return self.model.normalization


def normalisation(spec: arch.ArchSpec, meta: Mapping[str, Any] | None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean_rgb, std_rgb): a checkpoint's own (AdvProp, Lite) or the spec's."""
  if meta and meta.get('mean_rgb') is not None:
    return tuple(meta['mean_rgb']), tuple(meta['std_rgb'])
  return tuple(spec.mean_rgb), tuple(spec.std_rgb)


def split_sections(model_config: Mapping[str, Any],
                   execution_config: Mapping[str, Any] | None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(model fields, execution fields) of a model section.

  A model section may carry an execution section under 'execution' (eval
  passes a checkpoint's recorded model that way); an explicit
  `execution_config` wins over it. Execution fields that checkpoints written
  before the two sections were split recorded in their model section are
  dropped: how a run executes is never taken from a checkpoint.
  """
  model_fields = dict(model_config)
  carried = model_fields.pop('execution', None)
  for name in execution_lib.FIELDS:
    model_fields.pop(name, None)
  if execution_config is None:
    execution_config = carried
  return model_fields, dict(execution_config or {})


def build(model_config: Mapping[str, Any], num_classes: int,
          meta: Mapping[str, Any] | None,
          execution: Mapping[str, Any] | None = None) -> Network:
  """The network of `model_config`, run as `execution` says, fed as
  checkpoint `meta` records.

  Args:
    model_config: the config's model section.
    num_classes: classifier width.
    meta: a checkpoint's metadata (its recorded normalisation), or None.
    execution: the config's execution section, resolved here for jax's
      default backend; None takes the one the model section carries under
      'execution', else the defaults.

  Raises:
    errors.ConfigError: the model section names no network we can build
      (an unknown variant, padding, ...) or the execution section no way to
      run it (an unknown recompute policy, ...).
  """
  model_fields, execution_fields = split_sections(model_config, execution)
  try:
    resolved = execution_lib.resolve(execution_fields)
  except ValueError as error:
    raise errors.ConfigError(f'config.execution: {error}') from None
  try:
    spec = arch.resolve(model_fields)
    mean_rgb, std_rgb = normalisation(spec, meta)
    # The steps normalise with the model's (steps.jit_steps), so the model
    # carries the checkpoint's normalisation.
    model = models.from_config(model_fields, num_classes, resolved,
                               mean_rgb=mean_rgb, std_rgb=std_rgb)
  except ValueError as error:
    raise errors.ConfigError(f'config.model: {error}') from None
  return Network(
      spec=spec, model=model, num_classes=num_classes,
      pipeline_args=dict(resolution=spec.resolution,
                         resize_method=spec.resize_method))
