"""Tests for mixing.py and the mixed train step: soft targets, replay, off."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientnet_jax import mixing
from efficientnet_jax import steps
from tests import tiny


def batch(size=8, side=16):
  rng = np.random.default_rng(0)
  return dict(image=rng.normal(size=(size, side, side, 3)).astype(np.float32),
              label=rng.integers(0, 10, size).astype(np.int32))


def step_key(step):
  return jax.random.fold_in(jax.random.key(7), step)


@functools.partial(jax.jit, static_argnames=('mixup_alpha', 'cutmix_alpha'))
def mix_batch(given, rng, *, mixup_alpha, cutmix_alpha):
  return mixing.mix_batch(given, rng, mixup_alpha=mixup_alpha,
                          cutmix_alpha=cutmix_alpha)


@pytest.mark.parametrize('mixup_alpha,cutmix_alpha',
                         [(0.2, 0.0), (0.0, 1.0), (0.5, 0.5)])
def test_label_mixture_sums_to_one_and_matches_the_image(mixup_alpha,
                                                         cutmix_alpha):
  given = batch()
  mixed = mix_batch(given, step_key(3), mixup_alpha=mixup_alpha,
                    cutmix_alpha=cutmix_alpha)
  targets = mixing.soft_targets(mixed, 10, label_smoothing=0.1)
  np.testing.assert_allclose(np.sum(targets, -1), 1.0, rtol=1e-6)
  assert np.all(np.asarray(targets) >= 0)
  weight = np.asarray(mixed['mix_weight'])
  half = 4 if mixup_alpha and cutmix_alpha else 8
  if mixup_alpha:  # max(w, 1 - w): each example keeps at least half.
    assert np.all(weight[:half] >= 0.5)
  if cutmix_alpha:
    # Every pixel is the example's own or its partner's, and the label
    # weight is exactly the share of own pixels.
    own = given['image'][-half:]
    partner = own[::-1]
    image = np.asarray(mixed['image'])[-half:]
    from_own = np.all(image == own, axis=-1)
    assert np.all(from_own | np.all(image == partner, axis=-1))
    np.testing.assert_allclose(weight[-half:], from_own.mean(axis=(1, 2)),
                               rtol=1e-6)
  if mixup_alpha and cutmix_alpha:  # Each half mixes within itself.
    np.testing.assert_array_equal(
        mixed['mix_label'], np.concatenate([given['label'][:4][::-1],
                                            given['label'][4:][::-1]]))


def test_same_step_same_mixing_for_a_resumed_run():
  mix = functools.partial(mix_batch, batch(), mixup_alpha=0.5,
                          cutmix_alpha=0.5)
  first, again, other = mix(step_key(5)), mix(step_key(5)), mix(step_key(6))
  for key in ('image', 'mix_weight'):
    np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first[key], other[key])


# The tiny batch's images are already centred: normalising leaves them.
NORMALIZATION = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def train_once(**mixing_args):
  model = tiny.two_block_model()
  state = tiny.make_state(model)
  train = jax.jit(functools.partial(
      steps.train_step, learning_rate_fn=lambda step: 0.05,
      label_smoothing=0.1, ema_decay=0.99, normalization=NORMALIZATION,
      **mixing_args))
  new_state, metrics = train(state, tiny.fixed_batch(), jax.random.key(1))
  return new_state, metrics


def test_alpha_zero_is_the_unmixed_step_bit_for_bit():
  plain_state, plain = train_once()
  off_state, off = train_once(mixup_alpha=0.0, cutmix_alpha=0.0)
  assert float(plain['loss']) == float(off['loss'])
  jax.tree.map(np.testing.assert_array_equal, plain_state.params,
               off_state.params)
  # With an alpha the step does mix: Beta draws appear in its program
  # (traced only, not compiled).
  def program(**mixing_args):
    return str(jax.make_jaxpr(functools.partial(
        steps.train_step, learning_rate_fn=lambda step: 0.05,
        label_smoothing=0.1, ema_decay=0.99, normalization=NORMALIZATION,
        **mixing_args))(
            tiny.make_state(tiny.two_block_model()), tiny.fixed_batch(),
            jax.random.key(1)))
  assert 'random_gamma' not in program()
  assert 'random_gamma' in program(mixup_alpha=0.5)


def test_soft_targets_without_mixing_are_the_smoothed_one_hot():
  targets = mixing.soft_targets(dict(label=jnp.array([2, 0])), 4, 0.2)
  np.testing.assert_allclose(targets, [[0.05, 0.05, 0.85, 0.05],
                                       [0.85, 0.05, 0.05, 0.05]], rtol=1e-6)
