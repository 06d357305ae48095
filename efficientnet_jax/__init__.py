"""efficientnet_jax: the EfficientNet family (Tan & Le, ICML 2019) in JAX/Flax.

One call builds a model as users know it from timm::

  model, variables = efficientnet_jax.create_model('b0')
  logits = model.apply(variables, images, train=False)

The package imports its submodules lazily, so that pure-Python modules such as
`efficientnet_jax.arch` (which configs/ read) load without jax.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ['arch', 'create_model', 'models']


def __getattr__(name: str) -> Any:
  if name == 'create_model':
    return importlib.import_module('efficientnet_jax.api').create_model
  if name in ('arch', 'models'):
    return importlib.import_module(f'efficientnet_jax.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
