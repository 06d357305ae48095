"""Tests for optim.py: schedule, RMSProp, coupled L2, EMA decay.

Numbers are checked against the reference formulas written out here
independently (TF1 RMSProp, TPU-UTILS learning rate, TF EMA).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import imagenet
from efficientnet_jax import models
from efficientnet_jax import optim
from tests import tiny


def imagenet_schedule_reference(step):
  """TPU-UTILS build_learning_rate, written out for batch 4096."""
  steps_per_epoch = 1281167 / 4096
  peak = 0.016 * 4096 / 256
  warmup_steps = int(5 * steps_per_epoch)
  if step < warmup_steps:
    return peak * step / warmup_steps
  return peak * 0.97 ** math.floor(step / (2.4 * steps_per_epoch))


def test_learning_rate_matches_official_formula():
  config = imagenet.get_config('b0')
  fn = optim.create_learning_rate_fn(config, 1281167 / 4096, 4096)
  # docs/reference.md §5.1: warm-up is 1563 steps; peak 0.256.
  for step in (0, 1, 781, 1562, 1563, 1564, 2251, 2252, 50000, 109474):
    np.testing.assert_allclose(float(fn(step)),
                               imagenet_schedule_reference(step), rtol=1e-5)
  assert float(fn(0)) == 0.0
  # The staircase counts from step 0: right after warm-up 0.97**2 of peak,
  # which a restarted (join_schedules) staircase would not give.
  np.testing.assert_allclose(float(fn(1563)), 0.256 * 0.97**2, rtol=1e-6)


def test_peak_scales_linearly_with_global_batch():
  assert optim.peak_learning_rate(0.016, 256) == pytest.approx(0.016)
  assert optim.peak_learning_rate(0.016, 4096) == pytest.approx(0.256)
  assert optim.peak_learning_rate(0.016, 2048) == pytest.approx(0.128)


def tf1_rmsprop_with_l2(params, grads_seq, lr, wd, decay=0.9, momentum=0.9,
                        eps=1e-3):
  """TF1 RMSPropOptimizer on loss + wd * l2_loss(params) (TF-RMS, TPU-MAIN)."""
  ms = {k: np.ones_like(v) for k, v in params.items()}
  mom = {k: np.zeros_like(v) for k, v in params.items()}
  params = {k: v.copy() for k, v in params.items()}
  for grads in grads_seq:
    for k in params:
      g = grads[k] + wd * params[k]
      ms[k] = decay * ms[k] + (1 - decay) * g * g
      mom[k] = momentum * mom[k] + lr * g / np.sqrt(ms[k] + eps)
      params[k] = params[k] - mom[k]
  return params


def test_optimizer_is_tf1_rmsprop_with_coupled_l2():
  config = imagenet.get_config('b0')
  config.weight_decay = 0.01  # Large, so a misplaced L2 would show.
  tx = optim.create_optimizer(config, lambda step: 0.05)
  rng = np.random.default_rng(0)
  params = {'conv': rng.normal(size=(3, 4)).astype(np.float32),
            'dense': rng.normal(size=(5,)).astype(np.float32)}
  grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32)
                for k, v in params.items()} for _ in range(4)]
  state = tx.init(params)
  current = dict(params)
  for grads in grads_seq:
    updates, state = tx.update(grads, state, current)
    current = optax.apply_updates(current, updates)
  expected = tf1_rmsprop_with_l2(params, grads_seq, lr=0.05, wd=0.01)
  for k in params:
    np.testing.assert_allclose(current[k], expected[k], rtol=1e-5, atol=1e-6)


def test_weight_decay_touches_exactly_the_non_batch_norm_tensors():
  model = models.from_config(imagenet.get_config('b0').model, 1000)
  params = models.abstract_variables(model)['params']
  mask = optim.weight_decay_mask(params)
  flat = {jax.tree_util.keystr(p): v for p, v in
          jax.tree_util.tree_leaves_with_path(mask)}
  excluded = sorted(k for k, v in flat.items() if not v)
  # B0: stem, head and 16 blocks (3 BNs each, 2 in the expand-free first).
  assert len(excluded) == 2 * (1 + 1 + 2 + 15 * 3)
  assert all(k.endswith("['scale']") or k.endswith("['bias']")
             for k in excluded)
  assert all("_bn']" in k for k in excluded)
  for decayed in ("['classifier']['bias']", "['classifier']['kernel']",
                  "['blocks_1_0']['se']['reduce']['bias']",
                  "['blocks_2_1']['depthwise_conv']['kernel']",
                  "['stem_conv']['kernel']"):
    assert flat[decayed], decayed
  # And the optimizer applies it so: zero gradients move only decayed leaves.
  two_blocks = tiny.two_block_model()
  variables = models.init_variables(two_blocks, jax.random.key(0))
  config = imagenet.get_config('b0')
  config.weight_decay = 0.1
  tx = optim.create_optimizer(config, lambda step: 0.1)
  params = jax.tree.map(lambda x: x + 1.0, variables['params'])  # No zeros.
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  for path, update in jax.tree_util.tree_leaves_with_path(updates):
    moved = bool(jnp.any(update != 0))
    assert moved == (not optim.is_batch_norm(path)), jax.tree_util.keystr(path)


def test_ema_decay_warm_up():
  # tf.train.ExponentialMovingAverage with num_updates.
  for step, expected in ((0, 0.1), (1, 2 / 11), (90, 91 / 100),
                         (10**6, 0.9999)):
    np.testing.assert_allclose(float(optim.ema_decay_at(step, 0.9999)),
                               expected, rtol=1e-6)
