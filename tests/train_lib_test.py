"""Tests for train_lib.py: the loop's gates, divergence, fine-tuning.

The loop runs end to end on tiny networks and the in-memory fake pipeline;
tests/train_eval_test.py runs train.py and eval.py as processes.
"""

import dataclasses

import jax
import numpy as np
import pytest

from configs import common
from efficientnet_jax import checkpoints
from efficientnet_jax import errors
from efficientnet_jax import eval_lib
from efficientnet_jax import models
from efficientnet_jax import train_lib
from tests import fake_pipeline
from tests import tiny


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
  # float32 images, so that NaN can be written into them.
  config = tiny.tiny_config(num_train_steps=5, checkpoint_every_steps=2,
                            log_every_steps=1, eval_every_epochs=100.0,
                            host_image_dtype='float32')
  with pytest.raises(FloatingPointError, match=r'at step 4\b.*last good '
                     r'checkpoint is step 2'):
    train_lib.train_and_evaluate(config, str(tmp_path),
                                 data=NaNFromStep(bad_step=3))
  assert checkpoints.latest_step(str(tmp_path)) == 2
  state, _ = checkpoints.restore_raw(str(tmp_path))
  assert int(state['step']) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state['params']))


def test_fine_tuning_loads_everything_but_a_resized_classifier(tmp_path):
  source = tiny.two_block_model(num_classes=5)
  pretrained = models.init_variables(source, jax.random.key(3))
  checkpoints.save(str(tmp_path), dict(pretrained), dict(
      model={}, num_classes=5, padding='same', mean_rgb=[127.5] * 3,
      std_rgb=[127.5] * 3, source='test'))
  state = tiny.make_state(tiny.two_block_model(num_classes=10))
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
  other = tiny.make_state(models.EfficientNet(
      dataclasses.replace(tiny.two_block_model().spec, head_filters=64),
      num_classes=10))
  with pytest.raises(errors.ConfigError,
                     match=r"\['head_bn'\].*shape \(320,\) in the checkpoint"):
    train_lib.load_pretrained(other, str(tmp_path))


@pytest.mark.parametrize('name,value,message', [
    ('grad_norm', np.inf, "Non-finite gradients' global norm"),
    ('param_norm', np.nan, "Non-finite parameters' global norm"),
    ('batch_stats_finite', 0.0, 'Non-finite batch-norm statistics'),
])
def test_divergence_with_a_finite_loss_names_the_quantity(name, value,
                                                          message):
  good = dict(loss=1.0, accuracy=0.5, learning_rate=0.1, grad_norm=1.0,
              param_norm=10.0, batch_stats_finite=1.0)
  history = [(0, good), (1, dict(good, **{name: value}))]
  with pytest.raises(FloatingPointError, match=rf'{message} .* at step 2\.'):
    train_lib.summarise_train_metrics(history)
  summary = train_lib.summarise_train_metrics(history[:1])
  assert 'train/batch_stats_finite' not in summary


def test_eval_every_zero_epochs_turns_periodic_eval_off():
  assert train_lib.eval_interval(0.0, 100.0) == 0
  assert train_lib.eval_interval(-1.0, 100.0) == 0
  assert train_lib.eval_interval(0.5, 100.0) == 50
  assert [s for s in range(1, 11) if train_lib.is_time(
      s, train_lib.eval_interval(0.0, 3.0), 10)] == [10]


def test_grad_accum_steps_must_split_each_device_share(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 4)
  train_lib.check_grad_accum_steps(2, 32)
  with pytest.raises(errors.ConfigError,
                     match=r'grad_accum_steps=3 does not split the 8 '):
    train_lib.check_grad_accum_steps(3, 32)


def test_several_processes_without_a_preemption_service_are_refused(
    monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  with pytest.raises(errors.ConfigError, match='no jax.distributed client'):
    with train_lib.sigterm_flag():
      pass


class Interrupted:
  """The fake pipeline, recording each pipeline's (start step, size); with
  `at`, the process dies while fetching the batch of step `at`, keeping only
  the checkpoints already written, as on SIGKILL."""

  def __init__(self, at=None):
    self.at = at
    self.dataset_info = fake_pipeline.dataset_info
    self.create_eval_iter = fake_pipeline.create_eval_iter
    self.sizes = []

  def create_train_iter(self, config, *, start_step=0, **kwargs):
    self.sizes.append((start_step, kwargs['resolution']))
    for step, batch in enumerate(
        fake_pipeline.create_train_iter(config, start_step=start_step,
                                        **kwargs), start=start_step):
      if step == self.at:
        raise KeyboardInterrupt('killed')
      yield batch


def staged_config():
  """Two stages of 3 steps (32 then 40 px; dropout 0.1 -> 0.2, mixup and
  CutMix 0 -> 0.4), checkpoints every 2 steps."""
  config = tiny.tiny_config(num_train_steps=6, checkpoint_every_steps=2,
                            log_every_steps=1, eval_every_epochs=100.0,
                            train_image_size=40, mixup_alpha=0.4,
                            cutmix_alpha=0.4)
  config.progressive = common.progressive_config(
      2, 'paper', min_image_size=32, min_mixup_alpha=0.0,
      min_cutmix_alpha=0.0, min_dropout_rate=0.1)
  return config


@pytest.fixture
def compilation_cache(tmp_path):
  """JAX's persistent cache for this test only: the resumed runs compile the
  same stage programs as the straight run and read them back instead."""
  from jax._src import compilation_cache as cache  # pylint: disable=g-import-not-at-top
  names = ('jax_compilation_cache_dir',
           'jax_persistent_cache_min_compile_time_secs',
           'jax_persistent_cache_min_entry_size_bytes')
  saved = {name: getattr(jax.config, name) for name in names}
  for name, value in zip(names, (str(tmp_path / 'jax_cache'), 0, 0)):
    jax.config.update(name, value)
  cache.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  cache.reset_cache()


def test_staged_run_killed_mid_stage_resumes_as_a_straight_run(
    tmp_path, compilation_cache):
  del compilation_cache
  config = staged_config()
  straight_data = Interrupted()
  straight = train_lib.train_and_evaluate(config, str(tmp_path / 'straight'),
                                          data=straight_data)
  # One pipeline per stage, each at its size, started at its first step.
  assert straight_data.sizes == [(0, 32), (3, 40)]
  workdir = str(tmp_path / 'resumed')
  with pytest.raises(KeyboardInterrupt):  # Killed in stage 1, saved at 2.
    train_lib.train_and_evaluate(config, workdir,
                                 data=Interrupted(at=3))
  assert checkpoints.latest_step(workdir) == 2
  # Resumes mid stage 1 and crosses into stage 2.
  resumed_data = Interrupted()
  resumed = train_lib.train_and_evaluate(config, workdir, data=resumed_data)
  assert resumed_data.sizes == [(2, 32), (3, 40)] and resumed['step'] == 6
  a, _ = checkpoints.restore_raw(str(tmp_path / 'straight'), keys=None)
  b, _ = checkpoints.restore_raw(workdir, keys=None)
  for key in ('params', 'ema_params', 'batch_stats', 'opt_state'):
    for x, y in zip(jax.tree.leaves(a[key]), jax.tree.leaves(b[key])):
      np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=key)
  assert resumed['eval_ema/top1'] == straight['eval_ema/top1']
  # The staged checkpoint evaluates as eval.py scores it, at the eval size.
  scored = eval_lib.evaluate_checkpoint(config, workdir, data=fake_pipeline)
  assert scored['top1'] == pytest.approx(resumed['eval_ema/top1'])

