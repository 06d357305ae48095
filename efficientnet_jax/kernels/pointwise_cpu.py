"""1x1 convolutions as dots, and the few-channel stem as patches, for XLA:CPU.

XLA:CPU runs a 1x1 convolution through its generic convolution path, slower
forward and backward than the equal dot over channels, and B0's 3 -> 32 stem
far below memory bandwidth (docs/cpu_kernels.md, "1x1 convolution as a dot",
"Stem"). `Conv` is flax's Conv with those two cases computed here; same
parameters, same result up to float summation order (tests/kernels_test.py).
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientnet_jax.kernels import depthwise_cpu


class Conv(nn.Conv):
  """flax.linen.Conv, with 1x1 stride-1 kernels computed as a matrix product.

  Same parameters (name, (1, 1, in, out) shape, init) and the same result up
  to float summation order. XLA:CPU runs a 1x1 convolution through its generic
  convolution path, slower forward and backward than the equal dot over
  channels, which also fuses the surrounding elementwise ops better
  (docs/cpu_kernels.md, "1x1 convolution as a dot"). A conv over at most `PATCHES_MAX_CHANNELS` input channels with explicit padding (the stem)
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
    is_patches = (plain and inputs.shape[-1] <= PATCHES_MAX_CHANNELS and
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


# Input channels up to which `Conv` runs as `patches_dot`: XLA:CPU's
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
  return [depthwise_cpu.window(x, i, j, strides, out_h, out_w)
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

