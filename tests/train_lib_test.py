"""Tests for optim.py and train_lib.py: schedule, RMSProp, L2, EMA, steps.

Numbers are checked against the reference formulas written out here
independently (TF1 RMSProp, TPU-UTILS learning rate, TF EMA), on tiny
networks derived from the demo recipe.
"""

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import demo
from configs import imagenet
from efficientnet_jax import arch
from efficientnet_jax import checkpoints
from efficientnet_jax import models
from efficientnet_jax import optim
from efficientnet_jax import steps
from efficientnet_jax import train_lib
from tests import fake_pipeline


@pytest.fixture(autouse=True, scope='module')
def fast_compile():
  previous = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


def tiny_config(**overrides):
  """The demo recipe shrunk: one block per stage, quarter width, 32 px."""
  config = demo.get_config()
  config.model.phi = 1.0
  config.model.alpha = 0.01  # depth 0.01 -> one block per stage.
  config.model.beta = 0.25  # width 0.25 -> 8..80 channels.
  config.model.resolution = 32
  config.batch_size = 8
  config.eval_batch_size = 8
  for key, value in overrides.items():
    config[key] = value
  return config


def two_block_model(drop_path_rate=0.0, num_classes=10):
  """The first two blocks of the tiny network (fastest to compile)."""
  spec = arch.resolve(tiny_config().model)
  spec = dataclasses.replace(spec, blocks=spec.blocks[:2], dropout_rate=0.0,
                             drop_path_rate=drop_path_rate)
  return models.EfficientNet(spec, num_classes=num_classes)


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
  tiny = two_block_model()
  variables = models.init_variables(tiny, jax.random.key(0))
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


def make_state(model, learning_rate=0.05, **config_overrides):
  config = tiny_config(**config_overrides)
  tx = optim.create_optimizer(config, lambda step: learning_rate)
  return steps.create_train_state(jax.random.key(0), model=model, tx=tx)


def fixed_batch(batch_size=8, resolution=32):
  config = tiny_config()
  return next(fake_pipeline.create_train_iter(
      config, resolution=resolution, resize_method='bicubic',
      mean_rgb=arch.IMAGENET_MEAN, std_rgb=arch.IMAGENET_STD,
      local_batch_size=batch_size))


def test_train_step_updates_ema_of_params_and_batch_stats():
  model = two_block_model()
  state = make_state(model)
  step = jax.jit(functools.partial(
      steps.train_step, learning_rate_fn=lambda s: 0.05,
      label_smoothing=0.1, ema_decay=0.9999))
  rng = jax.random.key(1)
  new_state, metrics = step(state, fixed_batch(), rng)
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
  model = two_block_model()
  state = make_state(model, learning_rate=0.01)
  step = jax.jit(functools.partial(
      steps.train_step, learning_rate_fn=lambda s: 0.01,
      label_smoothing=0.1, ema_decay=0.9999))
  batch, rng = fixed_batch(), jax.random.key(0)
  losses = []
  for _ in range(25):
    state, metrics = step(state, batch, rng)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.5 * losses[0], losses
  assert float(metrics['accuracy']) == 1.0, losses


def test_drop_path_off_at_eval_and_rescales_kept_paths_at_train():
  spec = arch.resolve(tiny_config().model)
  block = next(b for b in spec.blocks if b.has_skip)
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = models.layers.BatchNorm
  depthwise = models.layers.DepthwiseConv

  def run(rate, train, rng):
    module = models.MBConv(dataclasses.replace(block, drop_path_rate=rate),
                           conv, depthwise, norm, nn.swish)
    x = jax.random.normal(jax.random.key(7), (16, 8, 8, block.in_filters))
    variables = module.init(jax.random.key(0), x, train=False)
    out = module.apply(variables, x, train=train, rngs={'dropout': rng},
                       mutable=['batch_stats'])
    return x, out[0]

  x, eval_a = run(0.5, False, jax.random.key(1))
  _, eval_b = run(0.5, False, jax.random.key(2))
  _, eval_none = run(0.0, False, jax.random.key(1))
  np.testing.assert_array_equal(eval_a, eval_b)
  np.testing.assert_array_equal(eval_a, eval_none)

  _, full = run(0.0, True, jax.random.key(3))
  _, dropped = run(0.5, True, jax.random.key(3))
  branch = np.asarray(full - x)
  kept = 0
  for i in range(x.shape[0]):
    if np.allclose(dropped[i], x[i]):
      continue  # Branch dropped: identity only.
    np.testing.assert_allclose(dropped[i], x[i] + branch[i] / 0.5, rtol=1e-4,
                               atol=1e-4)
    kept += 1
  assert 0 < kept < x.shape[0]


class LogitsAreImages(nn.Module):
  """A stand-in network whose logits are its (B, 1, 1, C) input."""

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
  sums = steps.eval_step(LogitsAreImages(), {}, batch)
  assert float(sums['top1']) == 1.0
  assert float(sums['top5']) == 2.0
  assert float(sums['count']) == 3.0
  expected_loss = sum(float(optax.softmax_cross_entropy_with_integer_labels(
      jnp.asarray(logits[i]), i_label)) for i, i_label in ((0, 2), (1, 4),
                                                            (2, 5)))
  np.testing.assert_allclose(float(sums['loss']), expected_loss, rtol=1e-6)


def test_is_time_fires_every_n_and_on_the_last_step():
  fired = [s for s in range(1, 11) if train_lib.is_time(s, 4, 10)]
  assert fired == [4, 8, 10]
  assert [s for s in range(1, 4) if train_lib.is_time(s, 0, 3)] == [3]


class NaNFromStep:
  """The fake pipeline, with NaN images from training step `bad_step` on."""

  def __init__(self, bad_step):
    self.bad_step = bad_step
    self.dataset_info = fake_pipeline.dataset_info
    self.create_eval_iter = fake_pipeline.create_eval_iter

  def create_train_iter(self, config, *, start_step=0, **kwargs):
    for step, batch in enumerate(
        fake_pipeline.create_train_iter(config, start_step=start_step,
                                        **kwargs), start=start_step):
      if step >= self.bad_step:
        batch = dict(batch, image=np.full_like(batch['image'], np.nan))
      yield batch


def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(
    tmp_path):
  config = tiny_config(num_train_steps=5, checkpoint_every_steps=2,
                       log_every_steps=1, eval_every_epochs=100.0)
  with pytest.raises(FloatingPointError, match=r'at step 4\b.*last good '
                     r'checkpoint is step 2'):
    train_lib.train_and_evaluate(config, str(tmp_path),
                                 data=NaNFromStep(bad_step=3))
  assert checkpoints.latest_step(str(tmp_path)) == 2
  state, _ = checkpoints.restore_raw(str(tmp_path))
  assert int(state['step']) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


def test_batch_size_must_divide_over_devices(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 8)
  with pytest.raises(train_lib.ConfigError,
                     match=r'config.batch_size=12 is not divisible by the 8 '):
    train_lib.check_batch_size(12, 'batch_size')
  assert train_lib.check_batch_size(16, 'batch_size') == 16


def test_bad_model_config_is_a_config_error():
  config = imagenet.get_config('b0').model
  config.recompute = 'False'  # What --config.model.recompute=False sets.
  with pytest.raises(train_lib.ConfigError,
                     match=r"config.model: Unknown recompute policy 'False'"):
    train_lib.make_setup(config, 1000, None)
  config.recompute, config.variant = 'project', 'b99'
  with pytest.raises(train_lib.ConfigError,
                     match=r"config.model: Unknown EfficientNet variant 'b99'"):
    train_lib.make_setup(config, 1000, None)


def test_eight_devices_equal_one_device_with_one_compile():
  """One step on 8 (fake CPU) devices = one step on 1, BN statistics included."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  result = subprocess.run([sys.executable, '-m', 'tests.multidevice_check'],
                          cwd=root, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  measured = json.loads(result.stdout.strip().splitlines()[-1])
  assert measured['devices'] == 8
  # params, batch_stats, opt_state and EMA after the step.
  assert measured['first_step_difference'] < 1e-5, measured
  assert measured['compiles'] == 1, measured
  assert measured['shardings_preserved'], measured
  assert 'not divisible by the 8 devices' in measured['indivisible_error']


def test_fine_tuning_loads_everything_but_a_resized_classifier(tmp_path):
  source = two_block_model(num_classes=5)
  pretrained = models.init_variables(source, jax.random.key(3))
  checkpoints.save(str(tmp_path), dict(pretrained), dict(
      model={}, num_classes=5, padding='same', mean_rgb=[127.5] * 3,
      std_rgb=[127.5] * 3, source='test'))
  state = make_state(two_block_model(num_classes=10))
  tuned = train_lib.load_pretrained(state, str(tmp_path))
  for name in ('params', 'ema_params'):
    tree = getattr(tuned, name)
    for key in tree:
      expected = (state.params if key == 'classifier' else
                  pretrained['params'])[key]
      jax.tree.map(np.testing.assert_array_equal, tree[key], expected)
  jax.tree.map(np.testing.assert_array_equal, tuned.batch_stats,
               pretrained['batch_stats'])
  # A checkpoint of another network is refused with the first misfit tensor.
  other = make_state(models.EfficientNet(
      dataclasses.replace(two_block_model().spec, head_filters=64),
      num_classes=10))
  with pytest.raises(train_lib.ConfigError,
                     match=r"\['head_bn'\].*shape \(320,\) in the checkpoint"):
    train_lib.load_pretrained(other, str(tmp_path))
