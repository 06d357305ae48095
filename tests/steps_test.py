"""Tests for steps.py: the train, eval and predict steps and their compilation.

The train step against the TF EMA formula and on a fixed batch, the eval
step's metric arithmetic on fixed logits, that steps.py stays pure JAX, and
that its compiler options keep results.
"""

import functools
import subprocess
import sys

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficientnet_jax import arch
from efficientnet_jax import sharding
from efficientnet_jax import steps
from tests import models_test
from tests import tiny

IMAGENET = (arch.IMAGENET_MEAN, arch.IMAGENET_STD)


class StepsTest(absltest.TestCase):

  def test_importing_the_steps_loads_no_tensorflow(self):
    # TensorFlow is 0.6 GB of resident memory, which benchmarks/throughput.py
    # would otherwise count against our train step.
    out = subprocess.run(
        [sys.executable, '-c', 'import sys; from efficientnet_jax import steps;'
         ' print(sorted(m for m in sys.modules if m.startswith("tensorflow")'
         ' or m == "clu.metric_writers"))'],
        check=True, capture_output=True, text=True).stdout
    self.assertEqual(out.strip(), '[]')

  def test_step_compiler_options_keep_the_logits(self):
    # Wider vectors may only reorder float32 sums: every block type of B0
    # (32 px) gives the default compilation's logits to float32 rounding.
    model, variables = models_test.tiny_model(), models_test.tiny_variables()
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))

    def logits(variables, images):
      return model.apply(variables, images, train=False)

    default = jax.jit(logits)(variables, images)
    options = steps.step_compiler_options()
    tuned = jax.jit(logits, compiler_options=options)(variables, images)
    np.testing.assert_allclose(tuned, default, rtol=1e-5,
                               atol=1e-5 * float(np.abs(default).max()))

  def test_step_compiler_options_keep_the_train_gradients(self):
    # The same for the train step: loss, BN statistics and gradients, with
    # every projection stage recomputed so that the hand-written gradients
    # (depthwise, swish, recomputation) all run under the wider vectors.
    model = models_test.tiny_model(recompute_min_bytes=0)
    variables = models_test.tiny_variables()
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    weights = jax.random.normal(jax.random.key(2), (4, 10))

    def loss(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']},
          images, train=True, rngs={'dropout': jax.random.key(3)},
          mutable=['batch_stats'])
      return jnp.sum(logits * weights), updates

    value_and_grad = jax.value_and_grad(loss, has_aux=True)
    default = jax.jit(value_and_grad)(variables['params'])
    tuned = jax.jit(value_and_grad,
                    compiler_options=steps.step_compiler_options())(
                        variables['params'])
    for got, want in zip(jax.tree.leaves(tuned), jax.tree.leaves(default)):
      np.testing.assert_allclose(got, want, rtol=1e-4,
                                 atol=1e-5 * float(np.abs(want).max()))


def jit_train_step(model, learning_rate):
  """The train step as train_lib compiles it, on this process's devices.

  The step donates its state, so it is given a copy: the tests compare with
  the state before the step (and a fresh state's EMA shadows alias its
  parameters).
  """
  mesh = sharding.create_mesh()
  jitted = steps.jit_steps(model, mesh, learning_rate_fn=lambda s: learning_rate,
                           label_smoothing=0.1, ema_decay=0.9999)
  return lambda state, batch, rng: jitted.train(
      jax.tree.map(jnp.copy, state), sharding.shard_batch(batch, mesh), rng)


def test_train_step_updates_ema_of_params_and_batch_stats():
  model = tiny.two_block_model()
  state = tiny.make_state(model)
  step = jit_train_step(model, learning_rate=0.05)
  rng = jax.random.key(1)
  new_state, metrics = step(state, tiny.fixed_batch(), rng)
  decay = 2 / 11  # First update: num_updates = 1.
  for old, new, ema in ((state.params, new_state.params, new_state.ema_params),
                        (state.batch_stats, new_state.batch_stats,
                         new_state.ema_batch_stats)):
    jax.tree.map(lambda o, n, e: np.testing.assert_allclose(
        e, decay * o + (1 - decay) * n, rtol=1e-5, atol=1e-6), old, new, ema)
  # BN statistics really moved, so the check above covers them.
  assert not np.allclose(new_state.batch_stats['stem_bn']['mean'],
                         state.batch_stats['stem_bn']['mean'])
  assert int(new_state.step) == 1
  assert float(metrics['learning_rate']) == pytest.approx(0.05)


def test_loss_goes_down_on_a_fixed_batch():
  model = tiny.two_block_model()
  state = tiny.make_state(model, learning_rate=0.01)
  step = jit_train_step(model, learning_rate=0.01)
  batch, rng = tiny.fixed_batch(), jax.random.key(0)
  losses = []
  for _ in range(25):
    state, metrics = step(state, batch, rng)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(metrics['accuracy']) == 1.0, losses


class LogitsAreImages(nn.Module):
  """A stand-in network whose logits are its (B, 1, 1, C) input."""
  normalization: steps.Normalization = ((0.0,), (1.0,))
  normalize_input: bool = False

  @nn.compact
  def __call__(self, x, *, train):
    del train
    return x.reshape(x.shape[0], -1)


def test_eval_step_metric_arithmetic_on_fixed_logits():
  logits = np.full((4, 6), -10.0, np.float32)
  logits[0, 2] = 5.0  # label 2: top-1.
  logits[1, [0, 1, 2, 3, 4]] = [5, 4, 3, 2, 1]  # label 4: 5th, top-5 only.
  logits[2, [0, 1, 2, 3, 4]] = [5, 4, 3, 2, 1]  # label 5: neither.
  logits[3, 0] = np.nan  # padding row: must not count or poison the sums.
  batch = dict(image=logits.reshape(4, 1, 1, 6),
               label=np.array([2, 4, 5, -1], np.int32),
               mask=np.array([1, 1, 1, 0], np.float32))
  sums = steps.eval_step(LogitsAreImages(), {}, batch,
                         normalization=((0.0,), (1.0,)))
  assert float(sums['top1']) == 1.0
  assert float(sums['top5']) == 2.0
  assert float(sums['count']) == 3.0
  expected_loss = sum(float(optax.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits[i]), i_label)) for i, i_label in ((0, 2), (1, 4),
                                                            (2, 5)))
  np.testing.assert_allclose(float(sums['loss']), expected_loss, rtol=1e-6)


def test_jitted_steps_normalise_uint8_images_with_the_models_normalization():
  normalization = ((100.0, 0.0, 50.0), (1.0, 2.0, 4.0))
  model = LogitsAreImages(normalization=normalization)
  images = np.array([[90, 4, 70], [101, 0, 30]], np.uint8).reshape(2, 1, 1, 3)
  logits = (images.reshape(2, 3) - np.array(normalization[0])) / np.array(
      normalization[1])  # [[-10, 2, 5], [1, 0, -5]]
  mesh = sharding.create_mesh()
  jitted = steps.jit_steps(model, mesh)
  batch = sharding.shard_batch(dict(
      image=images, label=np.array([2, 1], np.int32),
      mask=np.ones(2, np.float32)), mesh)
  top = jitted.predict({}, batch)
  np.testing.assert_array_equal(top['top5'], [[2, 1, 0], [0, 1, 2]])
  np.testing.assert_allclose(top['probs'], np.sort(
      jax.nn.softmax(logits), axis=-1)[:, ::-1], rtol=1e-6)
  sums = jitted.eval({}, batch)
  assert (float(sums['top1']), float(sums['count'])) == (1.0, 2.0)
  with pytest.raises(ValueError, match='normalize_input=False'):
    steps.jit_steps(models_test.tiny_model().clone(normalize_input=True),
                    mesh)



def test_micro_batches_take_an_equal_slice_of_every_shard():
  x = jnp.arange(16)
  micro = steps.split_micro_batches(x, steps=2, data_shards=2)
  # Shards [0..7] and [8..15]; micro-batch j holds the j-th half of each.
  np.testing.assert_array_equal(micro, [[0, 1, 2, 3, 8, 9, 10, 11],
                                        [4, 5, 6, 7, 12, 13, 14, 15]])
  np.testing.assert_array_equal(
      steps.split_micro_batches(x, steps=4, data_shards=1),
      x.reshape(4, 4))


def test_accumulated_micro_batches_give_the_whole_batch_update():
  # Two micro-batches of 4 against one batch of 8 whose batch norm takes
  # groups of 4 (the same statistics each micro-batch sees); no dropout.
  model = tiny.two_block_model()
  grouped = model.clone(bn_group_size=4)
  state = tiny.make_state(model, learning_rate=0.05)
  batch = tiny.fixed_batch(batch_size=8)

  def one_step(model, grad_accum_steps):
    step = jax.jit(functools.partial(
        steps.train_step, normalization=IMAGENET,
        learning_rate_fn=lambda s: 0.05,
        label_smoothing=0.1, ema_decay=0.9999,
        grad_accum_steps=grad_accum_steps))
    return step(state.replace(apply_fn=model.apply), batch,
                jax.random.key(1))

  accumulated, metrics = one_step(model, 2)
  whole, whole_metrics = one_step(grouped, 1)
  assert int(accumulated.step) == int(whole.step) == 1
  for name in ('params', 'opt_state', 'ema_params'):
    for got, want in zip(jax.tree.leaves(getattr(accumulated, name)),
                         jax.tree.leaves(getattr(whole, name))):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6,
                                 err_msg=name)
  for name in ('loss', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(metrics[name], whole_metrics[name], rtol=1e-5)
  # Running statistics: updated once per micro-batch, in order.
  batch_stats = state.batch_stats
  for rows in (slice(0, 4), slice(4, 8)):
    _, updates = model.apply(
        {'params': state.params, 'batch_stats': batch_stats},
        steps.normalise(batch['image'][rows], IMAGENET), train=True,
        rngs={'dropout': jax.random.key(0)}, mutable=['batch_stats'])
    batch_stats = updates['batch_stats']
  for got, want in zip(jax.tree.leaves(accumulated.batch_stats),
                       jax.tree.leaves(batch_stats)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
