"""Depthwise convolution for XLA:CPU: shifted multiply-adds, hand-written gradient.

XLA:CPU lowers a grouped convolution to a slow generic loop; `depthwise_shifted`
writes the same convolution as kh * kw strided slices times per-channel
weights, one fused elementwise loop, with a gradient written by hand
(docs/cpu_kernels.md, "Depthwise convolution"). `tests/kernels_test.py` holds
it to `layers.depthwise_grouped`, forward and gradients.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from efficientnet_jax.kernels import chunks


def _shifted_taps(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Sum over taps of strided windows of the (already padded) x times weights."""
  kh, kw = kernel.shape[:2]
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      term = window(x, i, j, stride, out_h, out_w) * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def window(x: jax.Array, i: int, j: int, stride: int | tuple[int, int],
            out_h: int, out_w: int) -> jax.Array:
  """The (N, out_h, out_w, C) input pixels that tap (i, j) of a kernel sees;
  stride is one for both axes or (H, W)."""
  sh, sw = (stride, stride) if isinstance(stride, int) else stride
  return jax.lax.slice(
      x, (0, i, j, 0),
      (x.shape[0], i + sh * (out_h - 1) + 1, j + sw * (out_w - 1) + 1,
       x.shape[3]),
      (1, sh, sw, 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def depthwise_shifted(x: jax.Array, kernel: jax.Array, stride: int,
                      pads: Sequence[tuple[int, int]]) -> jax.Array:
  """Depthwise conv as kh*kw strided slices times per-channel weights.

  XLA:CPU lowers grouped convolutions to a slow generic loop; the shifted
  multiply-add fuses into one elementwise loop. Its gradient is written by
  hand (`_shifted_bwd`): autodiff turns each of the kh*kw slices into a pad
  of the gradient to the input's full size and sums those, which runs
  several times as long as the forward (docs/cpu_kernels.md, "Depthwise
  convolution").

  Args:
    x: (N, H, W, C) input.
    kernel: (kh, kw, 1, C) weights, flax's grouped-conv layout.
    stride: spatial stride.
    pads: (before, after) for H and W.

  Returns:
    (N, H', W', C), equal to the grouped convolution up to float rounding.
  """
  return _shifted_taps(_padded(x, pads), kernel, stride)


def _padded(x: jax.Array, pads: Sequence[tuple[int, int]]) -> jax.Array:
  """x zero-padded in H and W, behind an optimization barrier.

  Without the barrier XLA rewrites the taps whose windows miss the padding as
  slices of x itself. x (the activation before the conv) then has a second
  consumer, so XLA writes its sigmoid out once more for it, an extra pass
  over the block's largest tensor (docs/cpu_kernels.md, "Depthwise
  convolution"). (The algebraic simplifier runs before XLA:CPU expands
  barriers; fusion, which runs after, still sees through it.)
  """
  return jax.lax.optimization_barrier(jnp.pad(x, [(0, 0), *pads, (0, 0)]))


def _shifted_fwd(x, kernel, stride, pads):
  # The padded input the forward writes anyway is the residual: keeping x
  # instead would write x once more in the forward and pad it again in the
  # backward.
  padded = _padded(x, pads)
  return _shifted_taps(padded, kernel, stride), (padded, kernel)


def _shifted_bwd(stride, pads, residuals, grad_out):
  padded, kernel = residuals
  x_hw = tuple(size - before - after
               for size, (before, after) in zip(padded.shape[1:3], pads))
  plans = [_phase_plan(size, k, stride, before, out)
           for size, k, (before, _), out in zip(
               x_hw, kernel.shape[:2], pads, grad_out.shape[1:3])]
  # Behind a barrier for the reason _padded gives: without it the taps that
  # miss the padding read grad_out itself, which then has two consumers and
  # is written out once more before the pad instead of fused into it.
  grad_padded = jax.lax.optimization_barrier(jnp.pad(
      grad_out, [(0, 0), *((plan.lo, plan.hi) for plan in plans), (0, 0)]))
  return (_phase_input_grad(grad_padded, kernel, stride, plans, x_hw),
          _shifted_kernel_grad(padded, grad_padded, kernel, stride,
                               grad_corner=(plans[0].lo, plans[1].lo)))


depthwise_shifted.defvjp(_shifted_fwd, _shifted_bwd)


class _PhasePlan(NamedTuple):
  """How one spatial axis of a depthwise conv's input gradient splits into
  `stride` phases, phase r holding x's pixels stride * t + r (t < rows).

  Phase r gets the output gradient through kernel taps first + stride * j
  for j < count, at output rows t + shift - j; lo and hi pad the output
  gradient so that those rows exist for every phase.
  """
  phases: tuple[tuple[int, int, int], ...]  # (first, shift, count) per r.
  rows: int
  lo: int
  hi: int


def _phase_plan(size: int, kernel_size: int, stride: int, before: int,
                out: int) -> _PhasePlan:
  # x pixel m = stride * t + r sits under output row i at tap k where
  # stride * i + k = m + before.
  phases = tuple(((r + before) % stride, (r + before) // stride,
                  len(range((r + before) % stride, kernel_size, stride)))
                 for r in range(stride))
  rows = -(-size // stride)
  lo = max(max(count - 1 - shift, 0) for _, shift, count in phases)
  hi = max(max(rows - 1 + shift - (out - 1), 0) for _, shift, _ in phases)
  return _PhasePlan(phases, rows, lo, hi)


def _phase_input_grad(grad_padded, kernel, stride, plans, x_hw):
  """dx from the padded output gradient, one phase of x's pixels at a time.

  Each x pixel of phase (r, c) receives the output gradient through only
  the kernel taps congruent to it modulo the stride, so each phase is a
  small stride-1 correlation and the phases interleave into dx. Correlating
  the stride-dilated gradient with the whole flipped kernel instead spends
  (stride^2 - 1)/stride^2 of its multiply-adds on the dilation's zeros and
  writes the dilated gradient out first (docs/cpu_kernels.md, "Depthwise
  convolution"). At stride 1 there is one phase, the plain correlation with
  the flipped kernel.
  """
  plan_h, plan_w = plans
  batch, channels = grad_padded.shape[0], grad_padded.shape[3]
  phase_rows = []
  for first_h, shift_h, count_h in plan_h.phases:
    phase_row = []
    for first_w, shift_w, count_w in plan_w.phases:
      # The phase's taps, reversed, over the gradient rows they reach.
      top = shift_h - (count_h - 1) + plan_h.lo
      left = shift_w - (count_w - 1) + plan_w.lo
      region = jax.lax.slice(
          grad_padded, (0, top, left, 0),
          (batch, top + plan_h.rows + count_h - 1,
           left + plan_w.rows + count_w - 1, channels))
      taps = kernel[first_h::stride, first_w::stride][::-1, ::-1]
      phase_row.append(_shifted_taps(region, taps, 1))
    phase_rows.append(phase_row)
  if stride == 1:
    return phase_rows[0][0]
  # (N, rows, stride, cols, stride, C) in row-major order is dx's layout.
  interleaved = jnp.stack([jnp.stack(row, axis=3) for row in phase_rows],
                          axis=2)
  dx = interleaved.reshape(batch, plan_h.rows * stride, plan_w.rows * stride,
                           channels)
  return dx[:, :x_hw[0], :x_hw[1]]


def _shifted_kernel_grad(padded, grad_out, kernel, stride,
                         chunk_bytes: int = 2 << 20,
                         grad_corner: tuple[int, int] = (0, 0)):
  """dk[i, j, c] = sum over pixels of tap (i, j)'s window times grad_out.

  grad_out may be an array that holds the output gradient from grad_corner
  (H, W) on, such as the padded one the input gradient reads, so that the
  output gradient need not exist unpadded as well.

  Summed in float32 over batch chunks of about `chunk_bytes` (a core's L2),
  so that a chunk stays in cache while every tap reads it, rather than each
  tap streaming the whole batch from memory (docs/cpu_kernels.md, "Depthwise
  convolution").
  """
  kh, kw = kernel.shape[:2]
  batch, _, _, channels = padded.shape
  out_h = (padded.shape[1] - kh) // stride + 1
  out_w = (padded.shape[2] - kw) // stride + 1
  per_example = ((math.prod(padded.shape[1:]) + out_h * out_w * channels) *
                 padded.dtype.itemsize)
  chunk = chunks.batch_chunk(batch, per_example, chunk_bytes)

  def taps(start):
    xs = jax.lax.dynamic_slice_in_dim(padded, start, chunk)
    gs = jax.lax.dynamic_slice(grad_out, (start, *grad_corner, 0),
                               (chunk, out_h, out_w, channels))
    products = tuple(window(xs, i, j, stride, out_h, out_w)
                     .astype(jnp.float32) * gs.astype(jnp.float32)
                     for i in range(kh) for j in range(kw))
    if stride == 1:
      sums = _sum_together(products, axes=(0, 1, 2))
    else:
      sums = [jnp.sum(p, axis=(0, 1, 2)) for p in products]
    return jnp.stack(sums).reshape(kh, kw, -1)

  total = jax.lax.fori_loop(
      0, batch // chunk, lambda n, acc: acc + taps(n * chunk),
      jnp.zeros((kh, kw, kernel.shape[-1]), jnp.float32))
  return total[:, :, None, :].astype(kernel.dtype)


def _sum_together(arrays: Sequence[jax.Array],
                  axes: Sequence[int]) -> Sequence[jax.Array]:
  """jnp.sum of each array over axes, as one variadic reduction.

  XLA:CPU hands separate sums to YNNPACK, each reading a materialised
  product; one variadic reduce is a single fused loop over the shared
  inputs. The kernel gradient uses it for stride-1 windows only; strided
  windows are faster as separate sums (docs/cpu_kernels.md, "Depthwise
  convolution").
  """
  zeros = tuple(jnp.zeros((), a.dtype) for a in arrays)
  return jax.lax.reduce(
      tuple(arrays), zeros,
      lambda acc, new: tuple(a + b for a, b in zip(acc, new)), tuple(axes))


