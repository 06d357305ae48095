"""Tests for efficientnet_jax.input_pipeline and datasets, on small datasets
built here (JPEGs of odd sizes, and the scikit-learn digits); no download."""

import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from efficientnet_jax import arch
from efficientnet_jax import datasets
from efficientnet_jax import input_pipeline
from efficientnet_jax import steps
from tests import mock_tfds

NUM_TRAIN = 24
NUM_VALIDATION = 13


class PipelineTestImages(tfds.core.GeneratorBasedBuilder):
  """Random JPEGs from 9 to 120 px a side; label = the example's id."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3),
                                         encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(
                num_classes=NUM_TRAIN + NUM_VALIDATION),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
        'train': self._generate_examples(range(NUM_TRAIN)),
        'validation': self._generate_examples(
            range(NUM_TRAIN, NUM_TRAIN + NUM_VALIDATION)),
    }

  def _generate_examples(self, ids):
    for example_id in ids:
      rng = np.random.default_rng(example_id)
      height, width = rng.integers(9, 121, size=2)
      image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
      yield example_id, {'image': image, 'label': example_id}


def _config(data_dir, **overrides):
  config = ml_collections.ConfigDict(dict(
      dataset='pipeline_test_images', data_dir=data_dir, train_split='train',
      eval_split='validation', augment='none', randaugment_num_layers=2,
      randaugment_magnitude=10, crop_padding=32, host_image_dtype='auto',
      shuffle_buffer_size=16384, train_crop_min_area=0.08,
      eval_center_crop=True, seed=0))
  config.update(overrides)
  return config


def _model_kwargs(variant, local_batch_size, resolution=None):
  spec = arch.spec_for(variant)
  return dict(resolution=resolution or spec.resolution,
              resize_method=spec.resize_method,
              local_batch_size=local_batch_size)


def _temporary_directory(test_case):
  # absltest's create_tempdir needs parsed flags, which pytest never parses.
  path = tempfile.mkdtemp()
  test_case.addCleanup(shutil.rmtree, path)
  return path


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


class PipelineTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp()
    builder = PipelineTestImages(data_dir=cls.data_dir)
    builder.download_and_prepare()
    # TFDS's own ordered read: the label at each position of the split.
    cls.labels_in_order = {
        split: np.array([example['label'] for example in tfds.as_numpy(
            builder.as_dataset(split=split, shuffle_files=False))])
        for split in ('train', 'validation')}

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir)
    super().tearDownClass()

  def test_dataset_info(self):
    info = input_pipeline.dataset_info(_config(self.data_dir))
    self.assertEqual((info.num_classes, info.num_train_examples,
                      info.num_eval_examples), (37, 24, 13))

  def test_eval_needs_only_the_eval_split(self):
    data_dir = _temporary_directory(self)
    config = _config(data_dir, dataset=mock_tfds.prepare(data_dir))
    info = input_pipeline.dataset_info(config)
    self.assertEqual((info.num_classes, info.num_eval_examples),
                     (mock_tfds.NUM_CLASSES, mock_tfds.NUM_EXAMPLES))
    batches = list(input_pipeline.create_eval_iter(
        config, **_model_kwargs('b0', 2, resolution=32), process_index=0,
        process_count=1))
    mask = np.concatenate([b['mask'] for b in batches])
    np.testing.assert_array_equal(mask, [1] * 3 + [0])
    labels = np.concatenate([b['label'] for b in batches])[:3]
    self.assertCountEqual(labels, [mock_tfds.label(i) for i in range(3)])
    # Training, and only training, needs the train split.
    with self.assertRaisesRegex(ValueError, "no split 'train'.*validation"):
      info.num_train_examples  # noqa: B018

  def test_unprepared_dataset_fails_offline_with_the_prepare_command(self):
    empty_dir = _temporary_directory(self)
    with mock.patch.object(tfds.core.DatasetBuilder,
                           'download_and_prepare') as download:
      with self.assertRaisesRegex(
          FileNotFoundError,
          rf'^cifar10 is not prepared in {empty_dir}: run `tfds build '
          rf'cifar10 --data_dir={empty_dir}`'):
        input_pipeline.dataset_info(_config(empty_dir, dataset='cifar10'))
      with self.assertRaisesRegex(
          FileNotFoundError,
          r'^imagenet2012 is not prepared .*ILSVRC2012_img_val.tar.* in '
          r'.*/downloads/manual/, then run `tfds build imagenet2012 '):
        input_pipeline.dataset_info(
            _config(empty_dir, dataset='imagenet2012'))
    download.assert_not_called()

  @parameterized.parameters(('b0', 'autoaugment'), ('b3', 'randaugment'))
  def test_train_batch(self, variant, augment_name):
    spec = arch.spec_for(variant)
    config = _config(self.data_dir, augment=augment_name)
    batch = next(input_pipeline.create_train_iter(
        config, **_model_kwargs(variant, 2), process_index=0,
        process_count=1))
    self.assertEqual(set(batch), {'image', 'label'})
    self.assertEqual(batch['image'].shape,
                     (2, spec.resolution, spec.resolution, 3))
    # Augmented images are uint8 [0, 255], handed over as they are.
    self.assertEqual(batch['image'].dtype, np.uint8)
    self.assertEqual(batch['label'].dtype, np.int32)
    self.assertTrue(np.isin(batch['label'], np.arange(NUM_TRAIN)).all())
    self.assertGreater(batch['image'].std(), 10)

  @parameterized.parameters('b0', 'b3')
  def test_eval_batches(self, variant):
    spec = arch.spec_for(variant)
    batches = list(input_pipeline.create_eval_iter(
        _config(self.data_dir), **_model_kwargs(variant, 8), process_index=0,
        process_count=1))
    self.assertLen(batches, 2)  # 13 examples, batch 8, 3 rows of padding.
    for batch in batches:
      self.assertEqual(batch['image'].shape,
                       (8, spec.resolution, spec.resolution, 3))
      self.assertEqual(batch['image'].dtype, np.float32)
      self.assertEqual(batch['label'].dtype, np.int32)
    mask = np.concatenate([b['mask'] for b in batches])
    index = np.concatenate([b['index'] for b in batches])
    np.testing.assert_array_equal(mask, [1] * 13 + [0] * 3)
    np.testing.assert_array_equal(index, list(range(13)) + [-1] * 3)
    labels = np.concatenate([b['label'] for b in batches])[:13]
    np.testing.assert_array_equal(labels, self.labels_in_order['validation'])
    # Bicubic can overshoot [0, 255] a little; far more would be a bug.
    pixels = batches[0]['image']
    self.assertBetween(pixels.min(), -40, 10)
    self.assertBetween(pixels.max(), 245, 295)

  def test_host_dtype_follows_the_preprocessing_and_normalises_on_device(
      self):
    spec = arch.spec_for('b0')
    kwargs = dict(_model_kwargs('b0', 4, resolution=64), process_index=0,
                  process_count=1)

    def first_images(train, **overrides):
      config = _config(self.data_dir, **overrides)
      if train:
        batches = input_pipeline.create_train_iter(config, **kwargs)
      else:
        batches = iter(input_pipeline.create_eval_iter(config, **kwargs))
      return next(batches)['image']

    augmented = first_images(True, augment='randaugment')
    evaluation = first_images(False)
    self.assertEqual((augmented.dtype, evaluation.dtype),
                     (np.uint8, np.float32))
    # Eval's resize leaves fractions and overshoot that uint8 would lose.
    self.assertFalse(np.array_equal(evaluation, np.round(evaluation)))
    self.assertTrue(((evaluation < 0) | (evaluation > 255)).any())
    # Forced: 'float32' casts the augmented uint8 exactly; 'uint8' rounds
    # the eval floats.
    np.testing.assert_array_equal(
        first_images(True, augment='randaugment', host_image_dtype='float32'),
        augmented.astype(np.float32))
    np.testing.assert_array_equal(
        first_images(False, host_image_dtype='uint8'),
        np.round(np.clip(evaluation, 0, 255)).astype(np.uint8))
    # The steps' device-side normalisation equals the host-side float32 one
    # on the same images.
    normalization = (spec.mean_rgb, spec.std_rgb)
    on_device = jax.jit(steps.normalise, static_argnums=1)
    for images in (augmented, evaluation):
      on_host = ((tf.cast(images, tf.float32) - tf.constant(spec.mean_rgb))
                 / tf.constant(spec.std_rgb)).numpy()
      normalised = np.asarray(on_device(images, normalization))
      self.assertEqual(normalised.dtype, np.float32)
      np.testing.assert_allclose(normalised, on_host, rtol=1e-6, atol=0)

  def test_resume_yields_the_same_batches(self):
    # 24 examples, batch 4: epoch 1 starts at step 6.
    config = _config(self.data_dir)
    kwargs = dict(_model_kwargs('b0', 4, resolution=32), process_index=0,
                  process_count=1)
    full = _take(input_pipeline.create_train_iter(config, **kwargs), 9)
    for start_step in (4, 7):
      resumed = _take(input_pipeline.create_train_iter(
          config, start_step=start_step, **kwargs), 9 - start_step)
      for step, batch in enumerate(resumed, start=start_step):
        np.testing.assert_array_equal(batch['image'], full[step]['image'])
        np.testing.assert_array_equal(batch['label'], full[step]['label'])
    labels = np.concatenate([b['label'] for b in full])
    self.assertCountEqual(labels[:NUM_TRAIN], range(NUM_TRAIN))  # An epoch.
    self.assertFalse(np.array_equal(labels[:12], labels[24:36]))  # Reshuffled.
    other_seed = next(input_pipeline.create_train_iter(
        _config(self.data_dir, seed=1), **kwargs))
    self.assertFalse(np.array_equal(other_seed['image'], full[0]['image']))

  def test_two_processes_read_disjoint_train_shards(self):
    config = _config(self.data_dir)
    seen = []
    for process_index in range(2):
      batches = _take(input_pipeline.create_train_iter(
          config, **_model_kwargs('b0', 4, resolution=32),
          process_index=process_index, process_count=2), 6)
      labels = np.concatenate([b['label'] for b in batches])
      # Steps 0-2 are one epoch of the 12-example shard, 3-5 the next.
      self.assertCountEqual(labels[:12], labels[12:])
      seen.append(set(labels[:12]))
    self.assertEmpty(seen[0] & seen[1])
    self.assertEqual(seen[0] | seen[1], set(range(NUM_TRAIN)))

  def test_two_processes_eval_every_example_once(self):
    rows = []
    for process_index in range(2):
      eval_iter = input_pipeline.create_eval_iter(
          _config(self.data_dir), **_model_kwargs('b0', 4, resolution=32),
          process_index=process_index, process_count=2)
      batches = list(eval_iter)
      # Shards of 7 and 6 examples; both processes run 2 batches.
      self.assertLen(eval_iter, 2)
      self.assertLen(batches, 2)
      again = list(eval_iter)  # Re-iterable, same pass.
      np.testing.assert_array_equal(again[1]['image'], batches[1]['image'])
      rows.append({key: np.concatenate([b[key] for b in batches])
                   for key in batches[0]})
    mask = np.concatenate([r['mask'] for r in rows])
    index = np.concatenate([r['index'] for r in rows])
    label = np.concatenate([r['label'] for r in rows])
    real = mask == 1
    self.assertEqual(real.sum(), NUM_VALIDATION)
    self.assertCountEqual(index[real], range(NUM_VALIDATION))
    np.testing.assert_array_equal(
        label[real], self.labels_in_order['validation'][index[real]])
    self.assertTrue((index[~real] == -1).all())
    self.assertTrue((np.concatenate([r['image'] for r in rows])[~real] == 0
                     ).all())

  def test_eval_crop_is_the_central_region(self):
    # Side resolution / (resolution + 32) * min(H, W) = resolution exactly,
    # so the resize is the identity and the output is the crop itself.
    for resolution in (224, 300):  # B0 (224/256) and B3 (300/332).
      height, width = resolution + 32, resolution + 76
      image = np.random.default_rng(resolution).integers(
          0, 256, (height, width, 3)).astype(np.uint8)
      output = input_pipeline.preprocess_eval(
          tf.io.encode_png(image), resolution=resolution,
          resize_method='bicubic', crop_padding=32).numpy()
      np.testing.assert_array_equal(
          output, image[16:16 + resolution, 38:38 + resolution])

  def test_eval_without_centre_crop_resizes_the_whole_image(self):
    # V2 at >= 320 px: the whole 40x40 image resized to 20x20; a 2x
    # bilinear downscale without half-pixel centres picks every other pixel.
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3)).astype(
        np.uint8)
    output = input_pipeline.preprocess_eval(
        tf.io.encode_png(image), resolution=20, resize_method='bilinear',
        crop_padding=32, center_crop=False).numpy()
    np.testing.assert_array_equal(output, image[::2, ::2])

  def test_rgba_image_drops_alpha(self):
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 4)).astype(
        np.uint8)
    output = input_pipeline.preprocess_eval(
        tf.io.encode_png(image), resolution=56, resize_method='bilinear',
        crop_padding=8).numpy()
    np.testing.assert_array_equal(output, image[4:60, 4:60, :3])

  def test_bad_input(self):
    kwargs = dict(_model_kwargs('b0', 2, resolution=32), process_index=0,
                  process_count=1)
    with self.assertRaisesRegex(ValueError, "unknown dataset 'no_such_set'"):
      input_pipeline.create_train_iter(
          _config(self.data_dir, dataset='no_such_set'), **kwargs)
    with self.assertRaisesRegex(ValueError, "augment='mixup'"):
      input_pipeline.create_train_iter(
          _config(self.data_dir, augment='mixup'), **kwargs)
    with self.assertRaisesRegex(ValueError, "no split 'test'"):
      input_pipeline.create_eval_iter(_config(self.data_dir), split='test',
                                      **kwargs)
    with self.assertRaisesRegex(ValueError, 'process_index 2'):
      input_pipeline.create_eval_iter(
          _config(self.data_dir), **dict(kwargs, process_index=2,
                                         process_count=2))


class DigitsTest(absltest.TestCase):

  def test_digits_offline_dataset(self):
    data_dir = _temporary_directory(self)
    config = _config(data_dir, dataset='digits', eval_split='test')
    info = input_pipeline.dataset_info(config)
    self.assertEqual((info.num_classes, info.num_train_examples,
                      info.num_eval_examples), (10, 1437, 360))
    # Stratified: 36 test digits of each class, give or take one.
    _, labels = datasets.digits_images_and_labels()
    test_labels = labels[datasets.digits_split_indices(labels)['test']]
    self.assertBetween(np.bincount(test_labels, minlength=10).min(), 35, 37)
    batch = next(iter(input_pipeline.create_eval_iter(
        config, resolution=32, resize_method='bilinear', local_batch_size=4,
        process_index=0, process_count=1)))
    self.assertEqual(batch['image'].shape, (4, 32, 32, 3))
    # Gray PNGs come out as RGB with three equal channels.
    np.testing.assert_array_equal(batch['image'][..., 0],
                                  batch['image'][..., 2])
    self.assertGreater(batch['image'].max(), 200)

  def test_digits_are_prepared_by_process_zero_while_the_others_wait(self):
    data_dir = _temporary_directory(self)
    events = []
    prepare = datasets.Digits.download_and_prepare

    def record_prepare(builder, *args, **kwargs):
      events.append('prepare')
      return prepare(builder, *args, **kwargs)

    for process_index in (1, 0):
      with mock.patch('jax.process_count', return_value=2), \
          mock.patch('jax.process_index', return_value=process_index), \
          mock.patch.object(multihost_utils, 'sync_global_devices',
                            side_effect=lambda name: events.append('sync')), \
          mock.patch.object(datasets.Digits, 'download_and_prepare',
                            record_prepare):
        if process_index == 1:
          # Process 1 never prepares; after the barrier it finds nothing in
          # an unshared data_dir and says so.
          with self.assertRaisesRegex(FileNotFoundError,
                                      'shared.*config.data_dir'):
            datasets.get_builder('digits', data_dir)
        else:
          datasets.get_builder('digits', data_dir)
    self.assertEqual(events, ['sync', 'prepare', 'sync'])


if __name__ == '__main__':
  absltest.main()
