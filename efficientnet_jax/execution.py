"""How the network runs on one backend: dtype, kernels, recompute, chunking.

The config's `execution` section (configs/common.py `execution_config`) says
what the user asked for, with 'auto' (or None) where the backend should
decide; `resolve` turns it into an `Execution` once per backend. Nothing here
changes what the network computes (up to float rounding) or its parameters,
so an Execution is never recorded in checkpoints; the model section is.

Per backend, for the 'auto' fields:
- CPU: the XLA:CPU kernels in `efficientnet_jax/kernels/` (shifted depthwise
  with its hand-written gradient, 1x1 convolutions as dots, the stem as
  patches, swish keeping only its input), recompute of the projection stage
  of blocks whose input takes at least 1 MiB per example, inference on 6 MB
  batch chunks (docs/cpu_kernels.md measures each).
- GPU and TPU: plain Linen/lax layers with no custom_vjp, so forward-mode
  autodiff (jax.jvp, jax.jacfwd, jax.hessian) works through the model; no
  recompute (XLA's own rematerialisation decides); whole batches.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

RECOMPUTE_POLICIES = ('all', 'project', 'none')
KERNELS = ('cpu', 'xla')
DEPTHWISE_IMPLS = ('shifted', 'grouped')

# Projection stages smaller than this per example are not recomputed: their
# ops' fixed cost outweighs the memory freed (models.MBConv).
DEFAULT_RECOMPUTE_MIN_BYTES = 1 << 20
# With 6 MB chunks a block's intermediates for one chunk fit the 32 MB L3 of
# this project's 2-core dev machine together (docs/cpu_kernels.md,
# "Inference on batch chunks").
CPU_INFERENCE_CHUNK_BYTES = 6 << 20

# The execution section's fields and their defaults; configs/common.py spells
# the same values out (configs import no jax).
DEFAULTS: dict[str, Any] = dict(
    dtype='float32',
    kernels='auto',
    depthwise_impl='auto',
    recompute='auto',
    recompute_min_bytes=DEFAULT_RECOMPUTE_MIN_BYTES,
    inference_chunk_bytes=None)
FIELDS = tuple(DEFAULTS)


@dataclasses.dataclass(frozen=True)
class Execution:
  """A resolved execution: every choice made, for one backend.

  Attributes:
    backend: the backend it was resolved for ('cpu', 'gpu', 'tpu').
    dtype: compute dtype; parameters and BN statistics stay float32.
    kernels: 'cpu' uses the XLA:CPU kernels for 1x1 convolutions, the stem
      and swish; 'xla' the plain flax layers.
    depthwise_impl: 'shifted' (kernels.depthwise_cpu) or 'grouped' (lax).
    recompute: in training, which of each block's elementwise ops are rerun
      in the backward pass instead of stored: 'all', 'project' or 'none'
      (see models.MBConv).
    recompute_min_bytes: only stages whose input takes at least this many
      bytes per example are recomputed.
    inference_chunk_bytes: in inference, each block runs on batch chunks
      whose expanded activation takes at most this many bytes; 0 runs whole
      batches.
  """
  backend: str = 'gpu'
  dtype: Any = jnp.dtype(jnp.float32)
  kernels: str = 'xla'
  depthwise_impl: str = 'grouped'
  recompute: str = 'none'
  recompute_min_bytes: int = DEFAULT_RECOMPUTE_MIN_BYTES
  inference_chunk_bytes: int = 0

  @property
  def uses_custom_gradients(self) -> bool:
    """Whether some layer runs with a hand-written (custom_vjp) gradient,
    through which forward-mode autodiff cannot go."""
    return (self.kernels == 'cpu' or self.depthwise_impl == 'shifted' or
            self.recompute != 'none')


# Plain layers in float32: what a module gets when it is given no execution.
PLAIN = Execution()


def _choice(name: str, value: Any, valid: tuple[str, ...]) -> str:
  if value not in valid:
    raise ValueError(f'Unknown {name} {value!r}; use one of '
                     f'{", ".join(("auto",) + valid)}.')
  return value


def resolve(execution_config: Mapping[str, Any] | None,
            backend: str | None = None) -> Execution:
  """The Execution of an execution section on `backend`.

  Args:
    execution_config: the section's fields (missing ones take `DEFAULTS`);
      'auto' and None pick the backend's choice.
    backend: 'cpu', 'gpu' or 'tpu'; None asks jax for the default backend.

  Raises:
    ValueError: an unknown field or choice (one line naming the valid ones).
  """
  fields = dict(DEFAULTS)
  given = dict(execution_config or {})
  unknown = set(given) - set(fields)
  if unknown:
    raise ValueError(f'Unknown execution option(s) {sorted(unknown)}; valid: '
                     f'{sorted(fields)}.')
  fields.update(given)
  backend = backend or jax.default_backend()
  on_cpu = backend == 'cpu'

  kernels = fields['kernels']
  if kernels == 'auto':
    kernels = 'cpu' if on_cpu else 'xla'
  kernels = _choice('kernels', kernels, KERNELS)
  depthwise = fields['depthwise_impl']
  if depthwise == 'auto':
    depthwise = 'shifted' if kernels == 'cpu' else 'grouped'
  depthwise = _choice('depthwise impl', depthwise, DEPTHWISE_IMPLS)
  recompute = fields['recompute']
  if isinstance(recompute, bool):  # --config.execution.recompute=True.
    recompute = 'all' if recompute else 'none'
  if recompute == 'auto':
    recompute = 'project' if on_cpu else 'none'
  recompute = _choice('recompute policy', recompute, RECOMPUTE_POLICIES)
  chunk_bytes = fields['inference_chunk_bytes']
  if chunk_bytes is None:
    chunk_bytes = CPU_INFERENCE_CHUNK_BYTES if on_cpu else 0
  return Execution(
      backend=backend,
      dtype=jnp.dtype(fields['dtype']),
      kernels=kernels,
      depthwise_impl=depthwise,
      recompute=recompute,
      recompute_min_bytes=int(fields['recompute_min_bytes']),
      inference_chunk_bytes=int(chunk_bytes))
