"""The steps and the state they carry: TrainState, train/eval/predict steps.

`jit_steps` is the one place they are compiled, with their shardings and
compiler options; training, evaluation, the benchmark and the multi-device
tests all call it. Pure JAX (no TensorFlow, no I/O), so that a process that
only runs steps, such as benchmarks/throughput.py, carries no input-pipeline
runtime; train_lib.py adds the data, the loop, checkpoints and metrics.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from efficientnet_jax import mixing
from efficientnet_jax import models
from efficientnet_jax import optim
from efficientnet_jax import sharding

Batch = Mapping[str, Any]
# (mean_rgb, std_rgb) on [0, 255] RGB: what the network's inputs are
# normalised with (models.EfficientNet.normalization).
Normalization = tuple[Sequence[float], Sequence[float]]

# XLA DebugOptions for programs that run once (what jax's
# jax_disable_most_optimizations sets).
RUN_ONCE_COMPILER_OPTIONS = dict(xla_backend_optimization_level=0,
                                 xla_llvm_disable_expensive_passes=True)


def step_compiler_options() -> dict[str, Any]:
  """XLA DebugOptions for the train, eval and predict steps on this backend.

  On CPU, 512-bit vectors: the depthwise taps and activations are elementwise
  loops, which LLVM vectorises 256 bits wide by default (B0 train step 3%
  faster at 32x224; docs/cpu_kernels.md).
  """
  if jax.default_backend() == 'cpu':
    return dict(xla_cpu_prefer_vector_width=512)
  return {}


class TrainState(train_state.TrainState):
  """Flax's TrainState plus BN statistics and their EMA shadows (§5.6)."""
  batch_stats: Any
  ema_params: Any
  ema_batch_stats: Any


def normalise(images: jax.Array, normalization: Normalization) -> jax.Array:
  """(x - mean_rgb) / std_rgb in float32, for [0, 255] images of any dtype.

  The input pipeline hands over raw RGB, uint8 where its preprocessing ends
  in integers and float32 where it does not (input_pipeline.host_image_dtype),
  and every step starts here, inside jit: the host holds and transfers the
  narrow dtype, and the values equal a host-side float32 normalisation to
  float32 rounding.
  """
  mean_rgb, std_rgb = normalization
  return ((images.astype(jnp.float32) - jnp.asarray(mean_rgb, jnp.float32))
          / jnp.asarray(std_rgb, jnp.float32))


def cross_entropy_loss(logits: jax.Array, labels: jax.Array,
                       label_smoothing: float) -> jax.Array:
  """Mean softmax cross-entropy on smoothed one-hot labels (TPU-MAIN)."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1])
  # TF label_smoothing: onehot * (1 - s) + s / num_classes, as optax's.
  targets = optax.smooth_labels(one_hot, label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def train_step(state: TrainState, batch: Batch, train_rng: jax.Array, *,
               normalization: Normalization,
               learning_rate_fn: optim.LearningRateFn, label_smoothing: float,
               ema_decay: float, grad_accum_steps: int = 1,
               data_shards: int = 1, mixup_alpha: float = 0.0,
               cutmix_alpha: float = 0.0
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a (global) batch, then the EMA update.

  The randomness (dropout, drop-path, mixup/CutMix) is `fold_in(train_rng,
  step)`, so a resumed run replays exactly the same masks and mixtures.
  Mixing (mixing.py; off when both alphas are 0) turns the labels into soft
  targets before the batch meets the model; accuracy stays on the labels.

  With `grad_accum_steps` k > 1 the batch is split into k micro-batches whose
  gradients are averaged before the one optimizer step, so the update equals
  that of the whole batch, except that batch norm normalises each
  micro-batch by its own statistics and updates its running statistics once
  per micro-batch. Each micro-batch takes an equal slice of every device's
  shard (`data_shards` of them), so the devices stay evenly loaded and no
  example moves between them. The step count, schedule and EMA advance once.
  """
  batch = dict(batch, image=normalise(batch['image'], normalization))
  rng = jax.random.fold_in(train_rng, state.step)
  mixed = mixing.is_on(mixup_alpha, cutmix_alpha)
  if mixed:
    batch = mixing.mix_batch(
        batch, jax.random.fold_in(rng, mixing.MIXING_SALT),
        mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)

  def loss_fn(params, batch_stats, batch, rng):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': batch_stats}, batch['image'],
        train=True, rngs={'dropout': rng}, mutable=['batch_stats'])
    if mixed:
      targets = mixing.soft_targets(batch, logits.shape[-1], label_smoothing)
      loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
    else:
      loss = cross_entropy_loss(logits, batch['label'], label_smoothing)
    correct = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
    return loss, (correct, updates['batch_stats'])

  value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
  if grad_accum_steps == 1:
    (loss, (accuracy, batch_stats)), grads = value_and_grad(
        state.params, state.batch_stats, batch, rng)
  else:
    micro_batches = jax.tree.map(
        functools.partial(split_micro_batches, steps=grad_accum_steps,
                          data_shards=data_shards), batch)

    def accumulate(carry, inputs):
      grads_sum, batch_stats, loss_sum, accuracy_sum = carry
      index, micro_batch = inputs
      (loss, (accuracy, batch_stats)), grads = value_and_grad(
          state.params, batch_stats, micro_batch,
          jax.random.fold_in(rng, index))
      return (jax.tree.map(jnp.add, grads_sum, grads), batch_stats,
              loss_sum + loss, accuracy_sum + accuracy), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, batch_stats, loss, accuracy), _ = jax.lax.scan(
        accumulate, (zeros, state.batch_stats, 0.0, 0.0),
        (jnp.arange(grad_accum_steps), micro_batches))
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    loss, accuracy = loss / grad_accum_steps, accuracy / grad_accum_steps
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  decay = optim.ema_decay_at(new_state.step, ema_decay)
  new_state = new_state.replace(
      ema_params=optim.ema_update(state.ema_params, new_state.params, decay),
      ema_batch_stats=optim.ema_update(state.ema_batch_stats, batch_stats,
                                       decay))
  metrics = dict(
      loss=loss,
      accuracy=accuracy,
      learning_rate=learning_rate_fn(state.step),
      grad_norm=optax.global_norm(grads),
      param_norm=optax.global_norm(new_state.params),
      batch_stats_finite=all_finite(batch_stats))
  return new_state, metrics


def split_micro_batches(x: jax.Array, *, steps: int,
                        data_shards: int) -> jax.Array:
  """(B, ...) -> (steps, B / steps, ...), micro-batch j holding the j-th
  slice of each of the `data_shards` contiguous shards of the batch."""
  shard = x.shape[0] // data_shards
  x = x.reshape(data_shards, steps, shard // steps, *x.shape[1:])
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape(steps, x.shape[1] * x.shape[2], *x.shape[3:])


def all_finite(tree: Any) -> jax.Array:
  """1.0 when every element of every leaf is finite, else 0.0."""
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(leaf))
                              for leaf in jax.tree.leaves(tree)])
                 ).astype(jnp.float32)


def eval_step(model: models.EfficientNet, variables: Mapping[str, Any],
              batch: Batch, *,
              normalization: Normalization) -> dict[str, jax.Array]:
  """Masked sums: top-1 and top-5 correct, loss and example count.

  Takes variables rather than a TrainState so one compiled function scores
  raw and EMA weights, and converted checkpoints that have no optimizer.
  """
  logits = model.apply(variables, normalise(batch['image'], normalization),
                       train=False)
  mask = batch['mask'].astype(jnp.float32)
  labels = jnp.maximum(batch['label'], 0)  # Padding rows may carry -1.
  _, top = jax.lax.top_k(logits, min(5, logits.shape[-1]))
  correct = top == labels[:, None]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return dict(top1=jnp.sum(correct[:, 0] * mask),
              top5=jnp.sum(jnp.any(correct, axis=-1) * mask),
              loss=jnp.sum(jnp.where(mask > 0, loss, 0.0)),
              count=jnp.sum(mask))


def create_train_state(rng: jax.Array, *, model: models.EfficientNet,
                       tx: optax.GradientTransformation) -> TrainState:
  """Fresh state; EMA shadows start at the initial values (TF EMA)."""
  variables = models.init_variables(model, rng)
  return TrainState.create(
      apply_fn=model.apply, params=variables['params'], tx=tx,
      batch_stats=variables['batch_stats'],
      ema_params=variables['params'],
      ema_batch_stats=variables['batch_stats'])


def predict_step(model: models.EfficientNet, variables: Mapping[str, Any],
                 batch: Batch, *,
                 normalization: Normalization) -> dict[str, jax.Array]:
  """Top-5 class ids and their softmax probabilities per example."""
  logits = model.apply(variables, normalise(batch['image'], normalization),
                       train=False)
  probs, ids = jax.lax.top_k(jax.nn.softmax(logits),
                             min(5, logits.shape[-1]))
  return dict(top5=ids, probs=probs)


class JittedSteps(NamedTuple):
  """The compiled steps of one model on one mesh.

  train(state, batch, train_rng) -> (state, metrics), the state donated;
  None when jit_steps was given no learning-rate schedule.
  eval(variables, batch) -> masked sums (eval_step), replicated.
  predict(variables, batch) -> top-5 ids and probabilities, batch-sharded.
  """
  train: Callable[..., tuple[TrainState, dict[str, jax.Array]]] | None
  eval: Callable[..., dict[str, jax.Array]]
  predict: Callable[..., dict[str, jax.Array]]


def jit_steps(model: models.EfficientNet, mesh: jax.sharding.Mesh, *,
              state_shardings: Any = None,
              learning_rate_fn: optim.LearningRateFn | None = None,
              label_smoothing: float = 0.0,
              ema_decay: float = 0.0,
              grad_accum_steps: int = 1,
              mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0) -> JittedSteps:
  """Wraps the steps in `jax.jit` with their shardings and compiler options.

  Every step normalises its batch's [0, 255] images with
  `model.normalization` (network.build gives the model a checkpoint's own).

  Args:
    model: the network; eval and predict apply it to `variables`. It must
      not normalise its input itself (normalize_input), or the steps' own
      normalisation would apply twice.
    mesh: a sharding.create_mesh mesh; batches are split on its 'data' axis,
      variables and metrics replicated.
    state_shardings: the TrainState's shardings (default: every leaf
      replicated, a pytree prefix).
    learning_rate_fn, label_smoothing, ema_decay, grad_accum_steps,
      mixup_alpha, cutmix_alpha: the recipe's (or the stage's), bound into
      the train step; without a learning_rate_fn there is no train step.

  Returns:
    The JittedSteps. Nothing is compiled until the first call.
  """
  if model.normalize_input:
    raise ValueError('jit_steps normalises the images; pass a model built '
                     'with normalize_input=False.')
  normalization = model.normalization
  replicated = sharding.replicated(mesh)
  batch = sharding.data_sharded(mesh)
  options = step_compiler_options()
  train = None
  if learning_rate_fn is not None:
    state = replicated if state_shardings is None else state_shardings
    train = jax.jit(
        functools.partial(train_step, normalization=normalization,
                          learning_rate_fn=learning_rate_fn,
                          label_smoothing=label_smoothing,
                          ema_decay=ema_decay,
                          grad_accum_steps=grad_accum_steps,
                          data_shards=mesh.shape[sharding.DATA_AXIS],
                          mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha),
        in_shardings=(state, batch, replicated),
        out_shardings=(state, replicated),
        donate_argnums=0, compiler_options=options)
  evaluate = jax.jit(functools.partial(eval_step, model,
                                       normalization=normalization),
                     in_shardings=(replicated, batch),
                     out_shardings=replicated, compiler_options=options)
  predict = jax.jit(functools.partial(predict_step, model,
                                      normalization=normalization),
                    in_shardings=(replicated, batch), out_shardings=batch,
                    compiler_options=options)
  return JittedSteps(train=train, eval=evaluate, predict=predict)
