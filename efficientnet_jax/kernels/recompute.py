"""Recompute in the backward pass, in an order XLA:CPU keeps.

What jax.checkpoint does (store a function's inputs, rerun it for the
gradient), with the recomputation tied to the incoming gradient so that it
runs when its layer's backward does (docs/cpu_kernels.md, "Recompute in the
backward pass"). `models.MBConv` uses it where the execution's recompute
policy says so.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def recompute_in_backward(fn: Callable[..., jax.Array], *args: Any
                          ) -> jax.Array:
  """fn(*args), storing only args for the backward pass, which reruns fn.

  jax.checkpoint does the same, but XLA:CPU schedules its recomputation as
  soon as the stored inputs exist, at the start of the backward pass, so
  every recomputed tensor is live at once and the peak exceeds that of not
  recomputing at all. Making the stored inputs depend on the incoming
  gradient holds each recomputation back until its layer's backward runs
  (docs/cpu_kernels.md, "Recompute in the backward pass").
  """
  return fn(*args)


def _recompute_fwd(fn, *args):
  return fn(*args), args


def _recompute_bwd(fn, args, grad_out):
  # An optimization barrier does not order the schedule on XLA:CPU (it is
  # expanded before fusion); adding 0 * the gradient's first pixel of each
  # example to the inputs that have a batch axis is a data dependence XLA
  # keeps, since x * 0 is not 0 for inf or NaN, at the cost of a fused add.
  # Per example, so a batch-sharded gradient needs no communication for it.
  # A non-finite gradient there makes that example's gradients NaN, which
  # the loop's non-finite loss check reports a step later anyway.
  anchor = grad_out[(slice(None),) + (slice(0, 1),) * (grad_out.ndim - 1)] * 0

  def tie(a):
    if a.ndim == anchor.ndim and a.shape[0] == anchor.shape[0]:
      return a + anchor.astype(a.dtype)
    return a

  return jax.vjp(fn, *jax.tree.map(tie, args))[1](grad_out)


recompute_in_backward.defvjp(_recompute_fwd, _recompute_bwd)

