"""The layers EfficientNet needs beyond what flax.linen gives, as the papers
describe them.

- `DepthwiseConv`: TF padding semantics chosen per call ('same' or timm's
  symmetric), TF's depthwise init, depth multiplier 1; its `impl` picks the
  formulation (lax's grouped convolution, or the XLA:CPU kernel in
  `kernels.depthwise_cpu`), as the resolved execution says.
- `BatchNorm`: optional per-group statistics (the official TPU recipe's
  grouped cross-replica BN) on top of flax's parameter names and semantics;
  it can return its folded `Affine` instead of applying it.
- `drop_path`: per-example stochastic depth on the residual branch.

How a layer runs fast on one backend lives in `efficientnet_jax/kernels/`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientnet_jax.kernels import depthwise_cpu

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



def depthwise_grouped(x: jax.Array, kernel: jax.Array, stride: int,
                      pads: Sequence[tuple[int, int]]) -> jax.Array:
  """Depthwise conv as one grouped convolution: the fast form on GPU and TPU."""
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride), padding=list(pads),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=x.shape[-1])



DEPTHWISE_IMPLS = ('grouped', 'shifted')


class DepthwiseConv(nn.Module):
  """k x k depthwise convolution, no bias, depth multiplier 1 (TPU-MODEL).

  `impl` 'grouped' is lax's grouped convolution (what XLA runs well on GPU and
  TPU); 'shifted' is `kernels.depthwise_cpu.depthwise_shifted`, the same
  convolution as strided multiply-adds with a hand-written gradient, for
  XLA:CPU.
  """
  kernel_size: int
  stride: int = 1
  padding: Padding = 'same'
  impl: str = 'grouped'
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
    if self.impl == 'shifted':
      return depthwise_cpu.depthwise_shifted(x, kernel, self.stride, pads)
    if self.impl == 'grouped':
      return depthwise_grouped(x, kernel, self.stride, pads)
    raise ValueError(f"Unknown depthwise impl {self.impl!r}; use one of "
                     f"{', '.join(DEPTHWISE_IMPLS)}.")


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



# The paper's activations as flax defines them; `models.activation` swaps in
# kernels.swish where the execution asks for it.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'swish': nn.swish,
    'relu6': nn.relu6,
    'relu': nn.relu,
}
