"""The layers EfficientNet needs beyond what flax.linen gives.

Each exists because flax's own version misses something the reference needs
(docs/cpu_kernels.md measures each CPU kernel):
- `Conv`: flax's Conv with 1x1 stride-1 kernels run as one matrix product,
  which XLA:CPU executes faster than its generic convolution path, with a
  hand-written gradient that keeps XLA from fusing into a slow transpose;
  on CPU the few-channel stem as broadcast multiply-adds of its patches.
- `DepthwiseConv`: TF padding semantics chosen per call ('same' or timm's
  symmetric), TF's depthwise init, and a shifted multiply-add formulation for
  XLA:CPU, whose grouped convolution is a slow generic loop (see
  `depthwise_shifted`), with a hand-written gradient.
- `BatchNorm`: optional per-group statistics (the official TPU recipe's
  grouped cross-replica BN) on top of flax's parameter names and semantics;
  it can return its folded `Affine` instead of applying it.
- `recompute_in_backward`: what jax.checkpoint does, in an order XLA:CPU
  keeps (it stores a function's inputs and reruns it for the gradient).
- `drop_path`: per-example stochastic depth on the residual branch.
- `swish`: nn.swish with a gradient that keeps only its input, so the
  forward does not write sigmoid(x) out for the backward.
- `map_batch_chunks`: a function of independent examples run on chunks of
  the batch in turn, so that each chunk's intermediates stay in cache.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Padding = str  # 'same' (TF, Keras) or 'symmetric' (timm's efficientnet_*).

# TPU-MODEL conv_kernel_initializer: untruncated normal, std sqrt(2 / fan_out)
# with fan_out = kh * kw * out_channels. jax's 'normal' is untruncated.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# Depthwise kernels are stored (kh, kw, 1, C); TF's fan_out there is kh * kw
# (depth multiplier 1), which is what jax calls fan_in for this shape.
depthwise_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
# TPU-MODEL dense_kernel_initializer: U(-1/sqrt(classes), 1/sqrt(classes)).
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_out',
                                                     'uniform')


def explicit_padding(size: int, kernel_size: int, stride: int,
                     padding: Padding) -> tuple[int, int]:
  """Pads (before, after) for one spatial axis.

  'same' is TF's rule, the extra pixel after (docs/reference.md §1.9), which is also
  lax's 'SAME'. 'symmetric' is PyTorch's k//2 on both sides, as timm's native
  weights were trained with.
  """
  if padding == 'same':
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2
  if padding == 'symmetric':
    return kernel_size // 2, kernel_size // 2
  raise ValueError(f"Unknown padding {padding!r}; use 'same' or 'symmetric'.")


def spatial_padding(shape: Sequence[int], kernel_size: int, stride: int,
                    padding: Padding) -> tuple[tuple[int, int], ...]:
  """Explicit (before, after) pads for the H and W axes of an NHWC shape."""
  return tuple(explicit_padding(size, kernel_size, stride, padding)
               for size in shape[1:3])


def _shifted_taps(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Sum over taps of strided windows of the (already padded) x times weights."""
  kh, kw = kernel.shape[:2]
  out_h = (x.shape[1] - kh) // stride + 1
  out_w = (x.shape[2] - kw) // stride + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      term = _window(x, i, j, stride, out_h, out_w) * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def _window(x: jax.Array, i: int, j: int, stride: int | tuple[int, int],
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
  chunk = batch_chunk(batch, per_example, chunk_bytes)

  def taps(start):
    xs = jax.lax.dynamic_slice_in_dim(padded, start, chunk)
    gs = jax.lax.dynamic_slice(grad_out, (start, *grad_corner, 0),
                               (chunk, out_h, out_w, channels))
    products = tuple(_window(xs, i, j, stride, out_h, out_w)
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


def batch_chunk(batch: int, per_example_bytes: int, budget_bytes: int) -> int:
  """The largest divisor of batch whose examples take at most budget_bytes;
  1 when even one example takes more."""
  return max((d for d in range(1, batch + 1)
              if batch % d == 0 and d * per_example_bytes <= budget_bytes),
             default=1)


def map_batch_chunks(fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                     chunk: int) -> jax.Array:
  """fn of consecutive chunks of x's examples, one chunk after the other
  (a loop, not a vmap), concatenated: for fn whose examples are independent
  (docs/cpu_kernels.md, "Inference on batch chunks")."""
  if chunk >= x.shape[0]:
    return fn(x)
  chunks = x.reshape(x.shape[0] // chunk, chunk, *x.shape[1:])
  out = jax.lax.map(fn, chunks)
  return out.reshape(x.shape[0], *out.shape[2:])


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


def depthwise_grouped(x: jax.Array, kernel: jax.Array, stride: int,
                      pads: Sequence[tuple[int, int]]) -> jax.Array:
  """Depthwise conv as one grouped convolution: the fast form on GPU and TPU."""
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=list(pads),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1])


def default_depthwise_impl() -> str:
  """'shifted' on CPU, where XLA's grouped conv is slow; 'grouped' elsewhere."""
  return 'shifted' if jax.default_backend() == 'cpu' else 'grouped'


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution, no bias, depth multiplier 1 (TPU-MODEL)."""
  kernel_size: int
  stride: int = 1
  padding: Padding = 'same'
  impl: str = 'auto'  # 'auto', 'shifted' or 'grouped'.
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    kernel = self.param('kernel', depthwise_kernel_init,
                        (self.kernel_size, self.kernel_size, 1, channels),
                        self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    pads = spatial_padding(x.shape, self.kernel_size, self.stride,
                           self.padding)
    impl = default_depthwise_impl() if self.impl == 'auto' else self.impl
    if impl == 'shifted':
      return depthwise_shifted(x, kernel, self.stride, pads)
    if impl == 'grouped':
      return depthwise_grouped(x, kernel, self.stride, pads)
    raise ValueError(f"Unknown depthwise impl {self.impl!r}; use 'auto', "
                     "'shifted' or 'grouped'.")


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


class Conv(nn.Conv):
  """flax.linen.Conv, with 1x1 stride-1 kernels computed as a matrix product.

  Same parameters (name, (1, 1, in, out) shape, init) and the same result up
  to float summation order. XLA:CPU runs a 1x1 convolution through its generic
  convolution path, slower forward and backward than the equal dot over
  channels, which also fuses the surrounding elementwise ops better
  (docs/cpu_kernels.md, "1x1 convolution as a dot"). On CPU, a conv over at
  most `PATCHES_MAX_CHANNELS` input channels with explicit padding (the stem)
  runs as `patches_dot`. Anything else goes to flax.
  """

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    plain = (self.kernel_dilation in (None, 1, (1, 1)) and
             self.input_dilation in (None, 1, (1, 1)) and
             self.feature_group_count == 1 and not self.use_bias and
             self.mask is None and inputs.ndim == 4)
    is_pointwise = (plain and tuple(self.kernel_size) == (1, 1) and
                    self.strides in (None, 1, (1, 1)))
    is_patches = (plain and jax.default_backend() == 'cpu' and
                  inputs.shape[-1] <= PATCHES_MAX_CHANNELS and
                  not isinstance(self.padding, str) and
                  isinstance(self.strides, Sequence))
    if not (is_pointwise or is_patches):
      return super().__call__(inputs)
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, inputs.shape[-1], self.features),
                        self.param_dtype)
    inputs, kernel = nn.dtypes.promote_dtype(inputs, kernel, dtype=self.dtype)
    if is_pointwise:
      return pointwise_dot(inputs, kernel[0, 0], self.precision)
    return patches_dot(inputs, kernel, tuple(self.strides),
                       tuple(tuple(p) for p in self.padding), self.precision)


# Input channels up to which `Conv` runs as `patches_dot` on CPU: XLA:CPU's
# convolution runs B0's 3 -> 32 stem far below memory bandwidth, the
# multiply-adds of its patches several times faster (docs/cpu_kernels.md,
# "Stem").
PATCHES_MAX_CHANNELS = 4


def _patch_windows(x: jax.Array, kernel_hw: tuple[int, int],
                   strides: tuple[int, int],
                   pads: Sequence[tuple[int, int]]) -> list[jax.Array]:
  """The (N, H', W', C) input pixels each kernel tap sees, in (kh, kw) order."""
  kh, kw = kernel_hw
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  out_h = (x.shape[1] - kh) // strides[0] + 1
  out_w = (x.shape[2] - kw) // strides[1] + 1
  return [_window(x, i, j, strides, out_h, out_w)
          for i in range(kh) for j in range(kw)]


def _patches(x: jax.Array, kernel_hw: tuple[int, int],
             strides: tuple[int, int],
             pads: Sequence[tuple[int, int]]) -> jax.Array:
  """(N, H', W', kh * kw * C): each output pixel's receptive field, in the
  (kh, kw, C) order of a flattened HWIO kernel."""
  return jnp.concatenate(_patch_windows(x, kernel_hw, strides, pads), axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def patches_dot(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
                pads: Sequence[tuple[int, int]], precision=None) -> jax.Array:
  """The (kh, kw, C_in, C_out) convolution of x, for few input channels.

  The forward is kh * kw * C_in broadcast multiply-adds of strided input
  windows: one elementwise loop that fuses with the batch norm after it, and
  faster than YNNPACK's matrix product over the patches (27 values for B0's
  stem). The kernel gradient contracts the patches and the output gradient
  over one flattened pixel axis (docs/cpu_kernels.md, "Stem").
  """
  del precision  # Summed in float32, as a product's accumulator would be.
  windows = _patch_windows(x.astype(jnp.float32), kernel.shape[:2], strides,
                           pads)
  weights = kernel.astype(jnp.float32).reshape(len(windows), x.shape[-1],
                                               kernel.shape[-1])
  out = None
  for window, tap_weights in zip(windows, weights):
    for c in range(x.shape[-1]):
      term = window[..., c:c + 1] * tap_weights[c]
      out = term if out is None else out + term
  return out.astype(x.dtype)


def _patches_fwd(x, kernel, strides, pads, precision):
  return patches_dot(x, kernel, strides, pads, precision), (x, kernel)


def _patches_bwd(strides, pads, precision, residuals, grad_out):
  x, kernel = residuals
  patches, patches_vjp = jax.vjp(
      lambda x: _patches(x, kernel.shape[:2], strides, pads), x)
  kernel_2d = kernel.reshape(-1, kernel.shape[-1])
  grad_patches = jax.lax.dot_general(grad_out, kernel_2d,
                                     (((3,), (1,)), ((), ())),
                                     precision=precision)
  grad_kernel = jax.lax.dot_general(
      patches.reshape(-1, patches.shape[-1]),
      grad_out.reshape(-1, grad_out.shape[-1]), (((0,), (0,)), ((), ())),
      precision=precision)
  # The input gradient is dead code for the stem (images), which XLA drops.
  return patches_vjp(grad_patches)[0], grad_kernel.reshape(kernel.shape)


patches_dot.defvjp(_patches_fwd, _patches_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise_dot(x: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
  """x (..., C_in) times kernel (C_in, C_out) over the channel axis.

  The gradient materialises its inputs before the kernel-gradient product
  (x^T dy, which needs one operand transposed): left to itself, XLA:CPU fuses
  the batch-norm backward or SE scaling that produces them into that
  transpose and runs the fused loop in transposed order, striding through
  memory (docs/cpu_kernels.md, "1x1 convolution as a dot").
  """
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())),
                             precision=precision)


def _pointwise_fwd(x, kernel, precision):
  return pointwise_dot(x, kernel, precision), (x, kernel)


def _pointwise_bwd(precision, residuals, grad_out):
  x, kernel = residuals
  if jax.default_backend() == 'cpu':  # GPU/TPU fusion is left to XLA there.
    x, grad_out = jax.lax.optimization_barrier((x, grad_out))
  grad_x = jax.lax.dot_general(grad_out, kernel, (((x.ndim - 1,), (1,)),
                                                  ((), ())),
                               precision=precision)
  # Pixels flattened to one contracting axis: contracting N, H and W as
  # three axes, XLA:CPU copies x into a transposed layout first.
  grad_kernel = jax.lax.dot_general(
      x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1]),
      (((0,), (0,)), ((), ())), precision=precision)
  return grad_x, grad_kernel


pointwise_dot.defvjp(_pointwise_fwd, _pointwise_bwd)


class BatchNorm(nn.Module):
  """Batch norm with TF semantics and optional per-group statistics.

  Parameters and statistics use flax.linen.BatchNorm's names (`scale`, `bias`,
  `mean`, `var`), so checkpoints are interchangeable. With `group_size=None`
  the statistics cover the whole batch the function sees; under `jit` with a
  data-sharded batch that is the global batch (synchronised BN). With
  `group_size=g`, consecutive groups of g examples are normalised by their own
  statistics, as the official TPU recipe does per group of cores; the running
  averages then take the mean of the group statistics.
  """
  momentum: float = 0.99  # TPU-BUILD batch_norm_momentum; TF meaning.
  epsilon: float = 1e-3  # TPU-BUILD batch_norm_epsilon (flax default is 1e-5).
  group_size: int | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               normalize: bool = True) -> jax.Array | Affine:
    """Normalised x; with normalize=False the `Affine` that normalises it."""
    channels = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (channels,),
                       self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (channels,),
                      self.param_dtype)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (channels,),
                            jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (channels,),
                           jnp.float32)
    if train:
      mean, var = self._batch_statistics(x)
      if not self.is_initializing():
        ra_mean.value = (self.momentum * ra_mean.value +
                         (1 - self.momentum) * jnp.mean(mean, axis=0))
        ra_var.value = (self.momentum * ra_var.value +
                        (1 - self.momentum) * jnp.mean(var, axis=0))
    else:
      mean, var = ra_mean.value[None], ra_var.value[None]
    # The affine folded into one multiply-add in float32.
    multiplier = scale * jax.lax.rsqrt(var + self.epsilon)
    affine = Affine(multiplier, bias - mean * multiplier)
    return apply_affine(x, affine, self.dtype) if normalize else affine

  def _batch_statistics(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(groups, C) float32 mean and variance of each group of examples."""
    batch = x.shape[0]
    groups = 1
    if self.group_size is not None and self.group_size < batch:
      if batch % self.group_size:
        raise ValueError(f'BatchNorm group_size {self.group_size} does not '
                         f'divide the batch of {batch}; pick a divisor.')
      groups = batch // self.group_size
    # One pass in float32 whatever the compute dtype: E[x], E[x^2], reduced
    # over the (groups of) examples and pixels of x as it is, not flattened
    # to (groups, pixels, C): XLA:CPU then computes a producer such as a
    # depthwise conv once for all its consumers instead of again for each
    # reshaped view of it (docs/cpu_kernels.md, "Batch-norm statistics").
    grouped = _split_batch(x.astype(jnp.float32), groups)
    axes = tuple(range(1, grouped.ndim - 1))
    mean = jnp.mean(grouped, axis=axes)
    mean_sq = jnp.mean(jnp.square(grouped), axis=axes)
    return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


def _split_batch(x: jax.Array, groups: int) -> jax.Array:
  """(groups, N / groups, ...) view of x; x[None] for one group."""
  return x[None] if groups == 1 else x.reshape(groups, -1, *x.shape[1:])


class Affine(NamedTuple):
  """Per-channel x * multiplier + offset, each (groups, C) float32: batch
  norm folded for consecutive groups of examples (one group: the batch)."""
  multiplier: jax.Array
  offset: jax.Array


def apply_affine(x: jax.Array, affine: Affine, dtype: Dtype) -> jax.Array:
  """x (N, ..., C) times its group's multiplier plus offset, in float32,
  cast once to dtype."""
  groups, channels = affine.multiplier.shape
  stat_shape = (1,) * (x.ndim - 1) + (channels,)
  if groups == 1:
    return (x.astype(jnp.float32) * affine.multiplier.reshape(stat_shape) +
            affine.offset.reshape(stat_shape)).astype(dtype)
  grouped = _split_batch(x.astype(jnp.float32), groups)
  stat_shape = (groups,) + stat_shape
  y = (grouped * affine.multiplier.reshape(stat_shape) +
       affine.offset.reshape(stat_shape))
  return y.reshape(x.shape).astype(dtype)


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Zeroes whole examples of a residual branch with probability `rate`.

  TPU-UTILS drop_connect: a per-example Bernoulli(1 - rate) mask, the kept
  examples divided by 1 - rate so the expectation is unchanged.
  """
  keep_prob = 1.0 - rate
  mask = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(mask, x / keep_prob, jnp.zeros_like(x))


@jax.custom_vjp
def swish(x: jax.Array) -> jax.Array:
  """x * sigmoid(x) (nn.swish), keeping only x for the backward pass.

  Autodiff of nn.swish keeps sigmoid(x) as well, so the forward writes it
  out as a second tensor the size of x; here the backward recomputes the
  derivative inside the loop that applies the gradient (x itself is usually
  a batch-norm affine of a kept conv output, which XLA recomputes there too).
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


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'swish': swish,
    'relu6': nn.relu6,
}
