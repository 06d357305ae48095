"""The network a run builds from its config: spec, Flax module, input format.

Training and evaluation both start here: a config's model section (and, for a
checkpoint, its recorded normalisation) becomes the resolved `ArchSpec`, the
`EfficientNet` module and the arguments the input pipeline needs to feed it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from efficientnet_jax import arch
from efficientnet_jax import errors
from efficientnet_jax import models


@dataclasses.dataclass(frozen=True)
class Network:
  """What both train and eval derive from a model section and a dataset."""
  spec: arch.ArchSpec
  model: models.EfficientNet
  num_classes: int
  pipeline_args: dict[str, Any]  # resolution, resize, normalisation.


def normalisation(spec: arch.ArchSpec, meta: Mapping[str, Any] | None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean_rgb, std_rgb): a checkpoint's own (AdvProp, Lite) or the spec's."""
  if meta and meta.get('mean_rgb') is not None:
    return tuple(meta['mean_rgb']), tuple(meta['std_rgb'])
  return tuple(spec.mean_rgb), tuple(spec.std_rgb)


def build(model_config: Mapping[str, Any], num_classes: int,
          meta: Mapping[str, Any] | None) -> Network:
  """The network of `model_config`, fed as checkpoint `meta` records.

  Raises:
    errors.ConfigError: the model section names no network we can build
      (an unknown variant, recompute policy, padding, ...).
  """
  try:
    spec = arch.resolve(model_config)
    model = models.from_config(model_config, num_classes)
  except ValueError as error:
    raise errors.ConfigError(f'config.model: {error}') from None
  mean_rgb, std_rgb = normalisation(spec, meta)
  return Network(
      spec=spec, model=model, num_classes=num_classes,
      pipeline_args=dict(resolution=spec.resolution,
                         resize_method=spec.resize_method,
                         mean_rgb=mean_rgb, std_rgb=std_rgb))
