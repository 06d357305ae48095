"""EfficientNet in Flax Linen: stem, blocks, head (Tan & Le, 2019 and 2021).

Blocks: MBConv (V1, Lite, EdgeTPU, V2), Fused-MBConv (V2) and EdgeTPU's
fused expansion; `BLOCK_MODULES` maps each `arch.BLOCK_TYPES` entry to its
module. The modules read a resolved `arch.ArchSpec`; they never parse block
strings or scale anything themselves. Parameter names are stable (`stem`,
`blocks_<stage>_<index>`, `head`, `classifier`) so that converters can map the
official TF, Keras and timm checkpoints onto them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientnet_jax import arch
from efficientnet_jax import execution as execution_lib
from efficientnet_jax import layers
from efficientnet_jax.kernels import chunks
from efficientnet_jax.kernels import pointwise_cpu
from efficientnet_jax.kernels import recompute as recompute_lib
from efficientnet_jax.kernels import swish as swish_kernel

ModuleDef = Any
Execution = execution_lib.Execution

# The strides at which endpoints are reported, and the stage that closes each
# (TPU-MODEL reduction_1..5: the last block before every stride-2 block).
ENDPOINT_STRIDES = (2, 4, 8, 16, 32)


class SqueezeExcite(nn.Module):
  """Channel gate: mean-pool, reduce with bias, act, expand with bias, sigmoid.

  TPU-MODEL `_call_se`. The 1x1 convs run on a 1x1 map, so they are Dense
  layers here; their kernels are the (1, 1) conv kernels reshaped.
  """
  se_filters: int
  act: Callable[[jax.Array], jax.Array]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # Squeeze in float32 (a long sum even in bf16 compute).
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              kernel_init=layers.conv_kernel_init)
    gate = dense(self.se_filters, name='reduce')(pooled)
    gate = dense(x.shape[-1], name='expand')(self.act(gate))
    return x * nn.sigmoid(gate)[:, None, None, :].astype(x.dtype)


class MBConv(nn.Module):
  """Inverted-residual block with squeeze-excite (paper Sec. 4, TPU-MODEL).

  In training, the backward pass can keep fewer activations and recompute
  the rest from the conv outputs when the gradient reaches them
  (kernels.recompute.recompute_in_backward), by the execution's `recompute`:
  - 'all': only the three conv outputs (and per-channel statistics) are
    kept; the batch norms, activations, squeeze-excite and the padded
    depthwise input between them are recomputed;
  - 'project' (the default): the same for the stage from the depthwise
    output to the projection (batch norm, activation, squeeze-excite); the
    depthwise stage keeps what autodiff keeps;
  - 'none': autodiff keeps everything (the default off CPU, where XLA's own
    rematerialisation decides).
  'project' is the CPU default: the projection stage's elementwise ops are cheap
  to rerun for the memory they free, while recomputing the depthwise stage
  costs more time than the projection stage for little memory
  (docs/cpu_kernels.md, "Recompute in the backward pass").

  Only stages whose input takes at least `recompute_min_bytes` per example
  are recomputed. The large maps hold most of the memory, while the small
  ones cost the most time per byte to recompute: at 7-28 px an op's fixed
  cost outweighs its work. With B0's 1 MiB default only the three blocks at
  56-112 px recompute at 224 px, and none at 128 px.

  In inference, with the execution's `inference_chunk_bytes`, the block runs on chunks of
  the batch in turn, each chunk's expanded activation (mid_filters at the
  input resolution) at most that many bytes, so that the block's
  intermediates stay in cache from one op to the next (batch norm with
  running statistics keeps the examples independent).
  """
  spec: arch.BlockSpec
  conv: ModuleDef
  depthwise: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  execution: Execution = execution_lib.PLAIN

  @property
  def dtype(self) -> Any:
    return self.execution.dtype

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    chunk_bytes = self.execution.inference_chunk_bytes
    if chunk_bytes and not train and not self.is_initializing():
      expanded = (x.shape[1] * x.shape[2] * self.spec.mid_filters *
                  jnp.dtype(self.dtype).itemsize)
      chunk = chunks.batch_chunk(x.shape[0], expanded, chunk_bytes)
      if chunk < x.shape[0]:
        return self._on_chunks(x, chunk)
    spec = self.spec
    inputs = x
    affine = None  # Without expansion the block input is already activated.
    if spec.expand_ratio != 1:
      x = self.conv(spec.mid_filters, (1, 1), name='expand_conv')(x)
      affine = self.norm(name='expand_bn')(x, train=train, normalize=False)
    depthwise = self.depthwise(spec.kernel_size, spec.stride, parent=None)
    stage = functools.partial(_depthwise_stage, depthwise=depthwise,
                              act=self.act, dtype=self.dtype)
    x = self._run(train and self._recomputes(('all',), x), stage, x, affine,
                  self._params_of('depthwise_conv', depthwise, x.shape[-1]))

    affine = self.norm(name='depthwise_bn')(x, train=train, normalize=False)
    se, params = None, {}
    if spec.se_filters:
      se = SqueezeExcite(spec.se_filters, self.act, self.dtype, parent=None)
      params['se'] = self._params_of('se', se, x.shape[-1])
    project = self.conv(spec.out_filters, (1, 1), parent=None)
    params['project_conv'] = self._params_of('project_conv', project,
                                             x.shape[-1])
    stage = functools.partial(_project_stage, se=se, project=project,
                              act=self.act, dtype=self.dtype)
    x = self._run(train and self._recomputes(('all', 'project'), x), stage,
                  x, affine, params)

    x = self.norm(name='project_bn')(x, train=train)
    return _residual(self, x, inputs, train=train)

  def _on_chunks(self, x: jax.Array, chunk: int) -> jax.Array:
    """The block in inference, on consecutive chunks of `chunk` examples."""
    block = self.clone(parent=None, execution=dataclasses.replace(
        self.execution, inference_chunk_bytes=0))
    variables = self.variables
    return chunks.map_batch_chunks(
        lambda xs: block.apply(variables, xs, train=False), x, chunk)

  def _params_of(self, name: str, module: nn.Module, channels: int) -> Any:
    """An unbound module's parameters, declared in this block under `name`:
    the same path and initialiser as the submodule of that name would have,
    for `module.apply` inside a pure function."""
    example = jnp.zeros((1, 1, 1, channels), self.dtype)
    return self.param(name, lambda rng: module.init(rng, example)['params'])

  def _recomputes(self, policies: tuple[str, ...], x: jax.Array) -> bool:
    """Whether the stage taking x is recomputed: the policy is one of
    `policies` and an example's x takes at least recompute_min_bytes."""
    example_bytes = math.prod(x.shape[1:]) * x.dtype.itemsize
    return (self.execution.recompute in policies and
            example_bytes >= self.execution.recompute_min_bytes)

  def _run(self, recompute: bool, stage: Callable[..., jax.Array],
           *args: Any) -> jax.Array:
    """stage(*args); with `recompute`, rerun in the backward pass."""
    if recompute:
      return recompute_lib.recompute_in_backward(stage, *args)
    return stage(*args)


def _depthwise_stage(x: jax.Array, affine: layers.Affine | None, params: Any,
                     *, depthwise: nn.Module, act: Callable[..., jax.Array],
                     dtype: Any) -> jax.Array:
  """The depthwise conv of act(affine(x)), or of x itself without affine."""
  if affine is not None:
    x = act(layers.apply_affine(x, affine, dtype))
  return depthwise.apply({'params': params}, x)


def _project_stage(x: jax.Array, affine: layers.Affine, params: Any, *,
                   se: nn.Module | None, project: nn.Module,
                   act: Callable[..., jax.Array], dtype: Any) -> jax.Array:
  """The projection conv of act(affine(x)), squeeze-excited when se is set."""
  x = act(layers.apply_affine(x, affine, dtype))
  if se is not None:
    x = se.apply({'params': params['se']}, x)
  return project.apply({'params': params['project_conv']}, x)


def _residual(module: nn.Module, x: jax.Array, inputs: jax.Array, *,
              train: bool) -> jax.Array:
  """x + inputs with drop-path in training, when the block has a skip."""
  spec = module.spec
  if not spec.has_skip:
    return x
  if train and spec.drop_path_rate > 0:
    x = layers.drop_path(x, spec.drop_path_rate, module.make_rng('dropout'))
  return x + inputs


def _fused_block(module: nn.Module, x: jax.Array, *, expand_stride: int,
                 project_kernel: int, project_stride: int, project_act: bool,
                 train: bool) -> jax.Array:
  """The body both fused blocks share, as submodules of `module`.

  With expansion: a k x k conv at `expand_stride` to mid_filters, BN, act,
  [SE]; then (always) a project_kernel conv at `project_stride` to
  out_filters, BN, act when `project_act`; then the residual.
  """
  spec = module.spec
  inputs = x

  def conv(y, filters, kernel, stride, name):
    if (kernel, stride) == (1, 1):  # Nothing to pad.
      return module.conv(filters, (1, 1), name=name)(y)
    pads = layers.spatial_padding(y.shape, kernel, stride, module.padding)
    return module.conv(filters, (kernel, kernel), strides=(stride,) * 2,
                       padding=pads, name=name)(y)

  if spec.expand_ratio != 1:
    x = conv(x, spec.mid_filters, spec.kernel_size, expand_stride,
             'expand_conv')
    x = module.act(module.norm(name='expand_bn')(x, train=train))
    if spec.se_filters:
      x = SqueezeExcite(spec.se_filters, module.act, module.dtype,
                        name='se')(x)
  x = conv(x, spec.out_filters, project_kernel, project_stride,
           'project_conv')
  x = module.norm(name='project_bn')(x, train=train)
  if project_act:
    x = module.act(x)
  return _residual(module, x, inputs, train=train)


class FusedMBConv(nn.Module):
  """Fused-MBConv (Tan & Le, 2021, Fig. 2; V2-MODEL FusedMBConvBlock).

  The k x k expansion conv at the block's stride replaces MBConv's 1x1
  expansion and depthwise conv: expand, BN, act, [SE], 1x1 project, BN.
  With expand_ratio 1 the k x k conv at the stride is the whole block,
  followed by BN and act (V2-MODEL applies the activation there).
  """
  spec: arch.BlockSpec
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  padding: str = 'same'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    spec = self.spec
    if spec.expand_ratio == 1:
      return _fused_block(self, x, expand_stride=1,
                          project_kernel=spec.kernel_size,
                          project_stride=spec.stride, project_act=True,
                          train=train)
    return _fused_block(self, x, expand_stride=spec.stride, project_kernel=1,
                        project_stride=1, project_act=False, train=train)


class FusedExpand(nn.Module):
  """EdgeTPU's block without depthwise conv (TPU-MODEL
  MBConvBlockWithoutDepthwise): a k x k expansion at stride 1, BN, act, then
  a 1x1 projection at the block's stride, BN. Unlike Fused-MBConv the stride
  is on the projection."""
  spec: arch.BlockSpec
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  padding: str = 'same'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return _fused_block(self, x, expand_stride=1, project_kernel=1,
                        project_stride=self.spec.stride, project_act=False,
                        train=train)


BLOCK_MODULES = {'mbconv': MBConv, 'fused_mbconv': FusedMBConv,
                 'fused_expand': FusedExpand}


class EfficientNet(nn.Module):
  """The EfficientNet family; `arch.resolve` decides which member.

  Attributes:
    spec: the resolved architecture.
    num_classes: classifier width (ignored when include_top is False).
    dtype: compute dtype; parameters and BN statistics stay float32.
    padding: 'same' (TF/Keras/timm tf_* weights) or 'symmetric' (timm's own
      efficientnet_* weights).
    include_top: False returns the endpoints dict instead of logits.
    bn_group_size: None normalises over the whole (global, under jit) batch;
      an int normalises consecutive groups of that many examples.
    execution: how it runs (compute dtype, kernels, recompute, chunking;
      `execution.resolve`); None resolves the defaults for jax's default
      backend. It changes no parameter and, up to float rounding, no output.
    mean_rgb, std_rgb: the input normalisation the weights expect, on [0, 255]
      RGB; None means the variant's (spec.mean_rgb / spec.std_rgb). Converted
      checkpoints record their own (AdvProp: [-1, 1]).
    normalize_input: True makes the network take [0, 255] RGB and normalise it
      itself, as the official TF model_fn does; False (default) takes images
      the input pipeline has already normalised.
  """
  spec: arch.ArchSpec
  num_classes: int = 1000
  padding: str = 'same'
  include_top: bool = True
  bn_group_size: int | None = None
  execution: Execution | None = None
  mean_rgb: tuple[float, float, float] | None = None
  std_rgb: tuple[float, float, float] | None = None
  normalize_input: bool = False

  @property
  def resolved_execution(self) -> Execution:
    if self.execution is None:
      return execution_lib.resolve(None)
    return self.execution

  @property
  def dtype(self) -> Any:
    """The compute dtype."""
    return self.resolved_execution.dtype

  @property
  def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean_rgb, std_rgb) on [0, 255] that inputs are normalised with."""
    return (tuple(self.mean_rgb or self.spec.mean_rgb),
            tuple(self.std_rgb or self.spec.std_rgb))

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool):
    """Runs the network.

    Args:
      images: float (N, H, W, 3), already normalised as (x - mean) / std on
        [0, 255] RGB with (mean, std) = self.normalization (ImageNet mean/std
        for B0-B8/L2, (x - 127) / 128 for Lite); raw [0, 255] RGB when
        normalize_input is set.
      train: batch statistics, dropout and drop-path on (needs the 'dropout'
        rng and mutable 'batch_stats').

    Returns:
      float32 logits (N, num_classes); with include_top=False a dict of
      endpoints `stride_2` ... `stride_32` (last block output at each stride)
      and `features` (the head activation before pooling).
    """
    check_images(images, endpoints=not self.include_top)
    spec = self.spec
    execution = self.resolved_execution
    act = activation(spec.activation, execution)
    conv = functools.partial(
        pointwise_cpu.Conv if execution.kernels == 'cpu' else nn.Conv,
        use_bias=False, dtype=self.dtype, kernel_init=layers.conv_kernel_init)
    depthwise = functools.partial(layers.DepthwiseConv, padding=self.padding,
                                  impl=execution.depthwise_impl,
                                  dtype=self.dtype)
    norm = functools.partial(layers.BatchNorm, momentum=spec.bn_momentum,
                             group_size=self.bn_group_size, dtype=self.dtype)

    x = images
    if self.normalize_input:
      mean, std = self.normalization
      x = (x.astype(jnp.float32) - jnp.asarray(mean)) / jnp.asarray(std)
    x = x.astype(self.dtype)
    pads = layers.spatial_padding(x.shape, 3, 2, self.padding)
    x = conv(spec.stem_filters, (3, 3), strides=(2, 2), padding=pads,
             name='stem_conv')(x)
    x = act(norm(name='stem_bn')(x, train=train))

    endpoints = {}
    stride = 2
    for block in spec.blocks:
      if block.stride == 2:
        endpoints[f'stride_{stride}'] = x
        stride *= 2
      if block.block_type == 'mbconv':
        x = MBConv(block, conv, depthwise, norm, act, execution,
                   name=block.name)(x, train=train)
      else:
        x = BLOCK_MODULES[block.block_type](
            block, conv, norm, act, self.padding, self.dtype,
            name=block.name)(x, train=train)
    endpoints[f'stride_{stride}'] = x

    x = conv(spec.head_filters, (1, 1), name='head_conv')(x)
    x = act(norm(name='head_bn')(x, train=train))
    if not self.include_top:
      endpoints['features'] = x
      return endpoints
    x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    x = nn.Dropout(spec.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype,
                 kernel_init=layers.dense_kernel_init, name='classifier')(x)
    return x.astype(jnp.float32)


def activation(name: str, execution: Execution
               ) -> Callable[[jax.Array], jax.Array]:
  """The spec's activation; swish as kernels.swish with the CPU kernels."""
  if name == 'swish' and execution.kernels == 'cpu':
    return swish_kernel.swish
  return layers.ACTIVATIONS[name]


def check_images(images: jax.Array, *, endpoints: bool) -> None:
  """One-line errors for inputs the network cannot take."""
  if images.ndim != 4:
    raise ValueError(f'EfficientNet takes NHWC images of rank 4; got shape '
                     f'{tuple(images.shape)}. Add a batch axis with x[None].')
  if images.shape[-1] != 3:
    raise ValueError(f'EfficientNet takes 3 RGB channels last (NHWC); got '
                     f'{images.shape[-1]} channels in shape '
                     f'{tuple(images.shape)}. Convert grayscale/RGBA to RGB, '
                     'or transpose NCHW to NHWC.')
  if endpoints and any(size % 32 for size in images.shape[1:3]):
    raise ValueError(f'Endpoints need height and width divisible by 32 so '
                     f'every stride aligns; got {tuple(images.shape[1:3])}. '
                     'Resize or pad the images.')


def init_variables(model: EfficientNet, rng: jax.Array) -> dict[str, Any]:
  """Initial {'params', 'batch_stats'}, compiled.

  Variable shapes do not depend on the input size, so initialisation traces a
  single 32x32 image (the smallest that every stride and endpoint accepts)
  instead of the variant's resolution.
  """
  images = jnp.zeros((1, 32, 32, 3), jnp.float32)
  init = jax.jit(functools.partial(model.init, train=False))
  return dict(init({'params': rng}, images))


def abstract_variables(model: EfficientNet) -> dict[str, Any]:
  """The variable shapes and dtypes, computed without allocating any."""
  return jax.eval_shape(functools.partial(init_variables, model),
                        jax.random.key(0))


def count_params(tree: Any) -> int:
  """Number of scalars in a (possibly abstract) pytree of arrays."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


def from_config(model_config: Any, num_classes: int,
                execution: Execution | None = None,
                **options: Any) -> EfficientNet:
  """The network a config's model section describes (see configs/common.py).

  `execution` (resolved, see execution.resolve) says how it runs; None
  resolves the defaults for jax's default backend.
  """
  return EfficientNet(
      arch.resolve(model_config),
      num_classes=num_classes,
      padding=model_config['padding'],
      bn_group_size=model_config['bn_group_size'],
      execution=execution or execution_lib.resolve(None),
      **options)
