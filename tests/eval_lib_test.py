"""Tests for efficientnet_jax.eval_lib: the pass's counting and timing, what
eval says it scores, and a checkpoint scored on a dataset with only its
validation split (built here, no download)."""

import itertools
from unittest import mock

import jax
import numpy as np
import pytest

from configs import imagenet
from efficientnet_jax import arch
from efficientnet_jax import checkpoints
from efficientnet_jax import eval_lib
from efficientnet_jax import models
from efficientnet_jax import network
from efficientnet_jax import sharding
from tests import mock_tfds
from tests import tiny


def fake_eval_fn(variables, batch):
  """Eval sums as steps.eval_step returns them: every real example right."""
  del variables
  mask = batch['mask']
  return dict(top1=mask.sum(), top5=mask.sum(), loss=0.5 * mask.sum(),
              count=mask.sum())


def padded_batches(real_counts, batch_size=4):
  for real in real_counts:
    mask = np.zeros(batch_size, np.float32)
    mask[:real] = 1
    yield dict(image=np.zeros((batch_size, 2), np.float32),
               label=np.zeros(batch_size, np.int32), mask=mask,
               index=np.where(mask > 0, np.arange(batch_size), -1))


def test_throughput_counts_real_examples_after_the_first_batch():
  clock = itertools.count()  # One second per batch drawn, and per reading.
  batches = padded_batches([4, 4, 4, 1])  # 13 real rows, 3 of padding.

  def slow_iter():
    for batch in batches:
      next(clock)
      yield batch

  with mock.patch.object(eval_lib.time, 'perf_counter',
                         side_effect=lambda: float(next(clock))):
    result = eval_lib.evaluate_pass(
        fake_eval_fn, {'raw': {}}, slow_iter(), sharding.create_mesh())
  assert result.metrics['raw']['num_examples'] == 13
  assert result.metrics['raw']['loss'] == 0.5
  # Clock: 0 pass start, 1 first batch, 2 timer start, 3-5 batches, 6 end.
  assert result.timed_examples == 9  # 13 minus the first batch's 4.
  assert result.timed_seconds == 4.0
  assert result.images_per_sec == 9 / 4
  assert result.pass_seconds == 6.0


def test_one_batch_has_no_speed():
  result = eval_lib.evaluate_pass(
      fake_eval_fn, {'raw': {}}, padded_batches([3]), sharding.create_mesh())
  assert result.metrics['raw']['num_examples'] == 3
  assert np.isnan(result.images_per_sec)


def b0_meta(**overrides):
  model = arch.default_model_config('b0') | dict(padding='same')
  return dict(model=model, num_classes=1000, padding='same',
              mean_rgb=list(arch.ADVPROP_MEAN), std_rgb=list(arch.ADVPROP_STD),
              source='tf:/ckpt/efficientnet-b0') | overrides


def test_scoring_line_names_the_checkpoint_network_and_the_config_mismatch():
  config = imagenet.get_config('b3')
  meta = b0_meta()
  net = network.build(eval_lib.checkpoint_model_config(config, meta), 1000,
                      meta)
  scoring = eval_lib.describe_scoring(config, meta, net, 'ema')
  assert scoring['line'] == (
      'Scoring efficientnet-b0 at 224px (AdvProp [-1, 1] input, same padding, '
      'EMA weights; source: tf:/ckpt/efficientnet-b0); config asks for '
      'efficientnet-b3, 300px, ImageNet mean/std; checkpoint holds '
      "efficientnet-b0, 224px, AdvProp [-1, 1]: scoring the checkpoint's "
      'network.')
  assert scoring['config_differences'] == dict(
      network=['efficientnet-b3', 'efficientnet-b0'],
      resolution=['300px', '224px'],
      normalisation=['ImageNet mean/std', 'AdvProp [-1, 1]'])


def test_scoring_line_of_a_matching_config_names_only_the_checkpoint():
  config = imagenet.get_config('b0')
  config.model.resolution = 64
  meta = b0_meta(mean_rgb=list(arch.IMAGENET_MEAN),
                 std_rgb=list(arch.IMAGENET_STD))
  net = network.build(eval_lib.checkpoint_model_config(config, meta), 1000,
                      meta)
  scoring = eval_lib.describe_scoring(config, meta, net, 'raw')
  assert scoring['config_differences'] == {}
  assert scoring['line'].startswith(
      "Scoring efficientnet-b0 at 64px (config.model.resolution; the "
      "checkpoint's own is 224px) (ImageNet mean/std input, same padding, "
      'raw weights;')


@pytest.fixture(scope='module')
def eval_only_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  mock_tfds.prepare(data_dir)
  return data_dir


def test_checkpoint_scores_on_a_dataset_without_a_train_split(
    tmp_path, eval_only_data_dir):
  # Batches of 2: the pass has two, and times the second.
  config = tiny.tiny_config(dataset=mock_tfds.NAME,
                            data_dir=eval_only_data_dir,
                            eval_split='validation', eval_batch_size=2)
  model = models.from_config(config.model.to_dict(), mock_tfds.NUM_CLASSES)
  # Finite variables without compiling an init: kernels ~N(0, 0.05), BN the
  # identity.
  rng = np.random.default_rng(0)
  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name or "'scale'" in name:
      return np.ones(leaf.shape, np.float32)
    if leaf.ndim == 1:  # BN means and biases.
      return np.zeros(leaf.shape, np.float32)
    return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

  variables = jax.tree_util.tree_map_with_path(
      fill, models.abstract_variables(model))
  spec = arch.resolve(config.model.to_dict())
  meta = dict(model=config.model.to_dict(), num_classes=mock_tfds.NUM_CLASSES,
              padding='same', mean_rgb=list(spec.mean_rgb),
              std_rgb=list(spec.std_rgb), source='a test')
  checkpoints.save(str(tmp_path / 'ckpt'), dict(
      params=variables['params'], batch_stats=variables['batch_stats']), meta)

  results = eval_lib.evaluate_checkpoint(config, str(tmp_path / 'ckpt'))

  assert results['num_examples'] == mock_tfds.NUM_EXAMPLES
  assert results['split'] == 'validation'
  assert results['weights'] == 'raw'
  assert results['config_differences'] == {}
  assert results['scoring'].startswith(f'Scoring {spec.name} (width ')
  assert results['eval_seconds'] > 0
  assert results['images_per_sec'] > 0  # Two batches: the second is timed.
