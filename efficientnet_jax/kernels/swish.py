"""Swish with a gradient that keeps only its input (docs/cpu_kernels.md, "Swish").

Autodiff of nn.swish keeps sigmoid(x) for the backward pass, a second tensor
the size of x written out by the forward; this one recomputes the derivative
from x in the loop that applies the gradient. The execution picks it on CPU,
where a train step's peak memory is host memory.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


@jax.custom_vjp
def swish(x: jax.Array) -> jax.Array:
  """x * sigmoid(x) (nn.swish), keeping only x for the backward pass.

  The backward recomputes the derivative inside the loop that applies the
  gradient (x itself is usually a batch-norm affine of a kept conv output,
  which XLA recomputes there too).
  A train step then holds one activation-sized tensor less per swish
  (docs/cpu_kernels.md, "Swish").
  """
  return nn.swish(x)


def _swish_fwd(x):
  return nn.swish(x), x


def _swish_bwd(x, grad_out):
  # swish'(x) = sigmoid(x) (1 + x (1 - sigmoid(x))), written through e^x
  # rather than sigmoid(x): XLA would merge an equal sigmoid(x) with the
  # forward's and keep that alive until here, which is what this avoids.
  # Clipped so that e^x and (1 + e^x)^2 stay finite; beyond the clip the
  # derivative is 1 (or 0) to float32 precision.
  clipped = jnp.clip(x.astype(jnp.float32), -80.0, 40.0)
  e = jnp.exp(clipped)
  derivative = e * (1 + e + clipped) / jnp.square(1 + e)
  return ((grad_out * derivative).astype(grad_out.dtype),)


swish.defvjp(_swish_fwd, _swish_bwd)

