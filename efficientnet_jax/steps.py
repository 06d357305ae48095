"""The steps and the state they carry: TrainState, train/eval/predict steps.

`jit_steps` is the one place they are compiled, with their shardings and
compiler options; training, evaluation, the benchmark and the multi-device
tests all call it. Pure JAX (no TensorFlow, no I/O), so that a process that
only runs steps, such as benchmarks/throughput.py, carries no input-pipeline
runtime; train_lib.py adds the data, the loop, checkpoints and metrics.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple

from flax.training import train_state
import jax
import jax.numpy as jnp
import optax

from efficientnet_jax import models
from efficientnet_jax import optim
from efficientnet_jax import sharding

Batch = Mapping[str, Any]

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


def cross_entropy_loss(logits: jax.Array, labels: jax.Array,
                       label_smoothing: float) -> jax.Array:
  """Mean softmax cross-entropy on smoothed one-hot labels (TPU-MAIN)."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1])
  # TF label_smoothing: onehot * (1 - s) + s / num_classes, as optax's.
  targets = optax.smooth_labels(one_hot, label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def train_step(state: TrainState, batch: Batch, train_rng: jax.Array, *,
               learning_rate_fn: optim.LearningRateFn, label_smoothing: float,
               ema_decay: float) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a (global) batch, then the EMA update.

  The randomness (dropout, drop-path) is `fold_in(train_rng, step)`, so a
  resumed run replays exactly the same masks.
  """
  rng = jax.random.fold_in(train_rng, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, batch['image'],
        train=True, rngs={'dropout': rng}, mutable=['batch_stats'])
    loss = cross_entropy_loss(logits, batch['label'], label_smoothing)
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  decay = optim.ema_decay_at(new_state.step, ema_decay)
  new_state = new_state.replace(
      ema_params=optim.ema_update(state.ema_params, new_state.params, decay),
      ema_batch_stats=optim.ema_update(state.ema_batch_stats, batch_stats,
                                       decay))
  metrics = dict(
      loss=loss,
      accuracy=jnp.mean(jnp.argmax(logits, -1) == batch['label']),
      learning_rate=learning_rate_fn(state.step),
      grad_norm=optax.global_norm(grads),
      param_norm=optax.global_norm(new_state.params))
  return new_state, metrics


def eval_step(model: models.EfficientNet, variables: Mapping[str, Any],
              batch: Batch) -> dict[str, jax.Array]:
  """Masked sums: top-1 and top-5 correct, loss and example count.

  Takes variables rather than a TrainState so one compiled function scores
  raw and EMA weights, and converted checkpoints that have no optimizer.
  """
  logits = model.apply(variables, batch['image'], train=False)
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
                 batch: Batch) -> dict[str, jax.Array]:
  """Top-5 class ids and their softmax probabilities per example."""
  logits = model.apply(variables, batch['image'], train=False)
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
              ema_decay: float = 0.0) -> JittedSteps:
  """Wraps the steps in `jax.jit` with their shardings and compiler options.

  Args:
    model: the network; eval and predict apply it to `variables`.
    mesh: a sharding.create_mesh mesh; batches are split on its 'data' axis,
      variables and metrics replicated.
    state_shardings: the TrainState's shardings (default: every leaf
      replicated, a pytree prefix).
    learning_rate_fn, label_smoothing, ema_decay: the recipe's, bound into
      the train step; without a learning_rate_fn there is no train step.

  Returns:
    The JittedSteps. Nothing is compiled until the first call.
  """
  replicated = sharding.replicated(mesh)
  batch = sharding.data_sharded(mesh)
  options = step_compiler_options()
  train = None
  if learning_rate_fn is not None:
    state = replicated if state_shardings is None else state_shardings
    train = jax.jit(
        functools.partial(train_step, learning_rate_fn=learning_rate_fn,
                          label_smoothing=label_smoothing,
                          ema_decay=ema_decay),
        in_shardings=(state, batch, replicated),
        out_shardings=(state, replicated),
        donate_argnums=0, compiler_options=options)
  evaluate = jax.jit(functools.partial(eval_step, model),
                     in_shardings=(replicated, batch),
                     out_shardings=replicated, compiler_options=options)
  predict = jax.jit(functools.partial(predict_step, model),
                    in_shardings=(replicated, batch), out_shardings=batch,
                    compiler_options=options)
  return JittedSteps(train=train, eval=evaluate, predict=predict)
