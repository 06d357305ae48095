"""The optimisation side of the official recipe: schedule, RMSProp, L2, EMA.

Everything is optax except the two pieces optax does not have: the TF
learning-rate formula as a function of the *global* step (docs/reference.md §5.3;
`optax.join_schedules` would restart the staircase after warm-up) and the
EMA decay warm-up min(decay, (1 + t) / (10 + t)) (docs/reference.md §5.6; `optax.ema`
has a fixed decay). The EMA update itself is `optax.incremental_update`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

# TPU-MAIN: the learning rate is given per 256 examples and scaled linearly.
LEARNING_RATE_BATCH = 256

LearningRateFn = Callable[[jax.Array], jax.Array]


def peak_learning_rate(base_learning_rate: float,
                       global_batch_size: int) -> float:
  """TPU-MAIN: base_learning_rate * global_batch_size / 256."""
  return base_learning_rate * global_batch_size / LEARNING_RATE_BATCH


def learning_rate_at(step: jax.Array, *, peak: float, steps_per_epoch: float,
                     warmup_epochs: float, decay_epochs: float,
                     decay_factor: float) -> jax.Array:
  """TPU-UTILS `build_learning_rate` ('exponential'), on the global step.

  Linear warm-up from exactly 0 over int(warmup_epochs * steps_per_epoch)
  steps, then peak * decay_factor**floor(step / (decay_epochs *
  steps_per_epoch)). The staircase counts from step 0, not from the end of the
  warm-up, so the first post-warm-up value is already decayed (docs/reference.md §5.3).

  Args:
    step: the global step (number of updates applied so far).
    peak: the learning rate after warm-up (already scaled by batch size).
    steps_per_epoch: a float, train examples / global batch (TPU-MAIN).
    warmup_epochs: length of the linear warm-up.
    decay_epochs: the staircase interval, a float number of epochs.
    decay_factor: multiplier per interval.

  Returns:
    The float32 learning rate for the update at `step`.
  """
  step = jnp.asarray(step, jnp.float32)
  decay_steps = decay_epochs * steps_per_epoch
  decayed = peak * decay_factor ** jnp.floor(step / decay_steps)
  # TPU-UTILS: warmup_steps = int(warmup_epochs * steps_per_epoch).
  warmup_steps = int(warmup_epochs * steps_per_epoch)
  if warmup_steps == 0:
    return decayed
  warmup = peak * step / warmup_steps
  return jnp.where(step < warmup_steps, warmup, decayed)


def create_learning_rate_fn(config: Any, steps_per_epoch: float,
                            global_batch_size: int) -> LearningRateFn:
  """The recipe's schedule as an optax schedule (step -> learning rate)."""
  return functools.partial(
      learning_rate_at,
      peak=peak_learning_rate(config.learning_rate, global_batch_size),
      steps_per_epoch=steps_per_epoch,
      warmup_epochs=config.warmup_epochs,
      decay_epochs=config.lr_decay_epochs,
      decay_factor=config.lr_decay_factor)


def is_batch_norm(path: tuple[Any, ...]) -> bool:
  """Whether a parameter path lies inside a BatchNorm module (`*_bn`)."""
  return any(getattr(key, 'key', None) is not None and
             str(key.key).endswith('_bn') for key in path)


def is_bias(path: tuple[Any, ...]) -> bool:
  """Whether a parameter path ends in a `bias` (conv, SE or classifier)."""
  return bool(path) and getattr(path[-1], 'key', None) == 'bias'


def weight_decay_mask(params: Any, *, decay_biases: bool = True) -> Any:
  """True for the tensors the official recipe decays.

  TPU-MAIN (V1) adds weight_decay * l2_loss(v) for every trainable variable
  whose name lacks 'batch_normalization': all conv and depthwise kernels, the
  SE kernels and biases, the classifier kernel and bias. BN scale and bias are
  the only exclusions (docs/reference.md §5.4). google/automl efficientnetv2
  main.py also skips every name matching 'bias' (decay_biases=False): SE and
  classifier biases too (docs/reference.md §10.7).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not is_batch_norm(path) and (
          decay_biases or not is_bias(path)), params)


def create_optimizer(config: Any,
                     learning_rate_fn: LearningRateFn
                     ) -> optax.GradientTransformation:
  """Coupled L2 followed by TF1 RMSProp (docs/reference.md §5.2, §5.4).

  `add_decayed_weights` adds weight_decay * v to the gradient, the gradient of
  TF's weight_decay * sum(v**2) / 2 loss term, so it passes through RMSProp
  exactly as in TPU-MAIN. `optax.rmsprop` with eps inside the square root,
  the second moment starting at 1 (`initial_scale`) and the learning rate
  applied before the momentum trace is TF1's RMSPropOptimizer (TF-RMS).
  """
  return optax.chain(
      optax.add_decayed_weights(
          config.weight_decay,
          mask=functools.partial(weight_decay_mask,
                                 decay_biases=config.weight_decay_biases)),
      optax.rmsprop(
          learning_rate=learning_rate_fn,
          decay=config.rmsprop_decay,
          eps=config.rmsprop_epsilon,
          initial_scale=1.0,  # TF-RMS: the `rms` slot starts at ones.
          eps_in_sqrt=True,  # TF-RMS: sqrt(ms + epsilon).
          momentum=config.rmsprop_momentum,
          nesterov=False,
          centered=False))


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
  """TF ExponentialMovingAverage(num_updates=t): min(decay, (1+t)/(10+t)).

  TPU-MAIN passes num_updates=global_step and applies the average after the
  optimizer step has incremented it, so `step` is the number of updates
  applied including the current one.
  """
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def ema_update(ema_tree: Any, new_tree: Any, decay: jax.Array) -> Any:
  """shadow <- decay * shadow + (1 - decay) * value, leaf by leaf."""
  return optax.incremental_update(new_tree, ema_tree, step_size=1.0 - decay)


