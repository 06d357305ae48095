"""TFDS builders for the input pipeline, and the checks on bad input.

`get_builder` turns `config.dataset` / `config.data_dir` into a prepared
`tfds.core.DatasetBuilder`, or raises a one-line error that names the problem
and the fix (unknown name, a dataset not prepared yet and the `tfds build`
command or manual download that prepares it, a dataset without image/label
features, a file format the reader cannot stream). It works offline: nothing
is downloaded, so a missing dataset fails at once instead of retrying.

`Digits` is the offline demo dataset: scikit-learn's bundled handwritten digits
(`sklearn.datasets.load_digits`, 1797 real 8x8 scans of 10 classes), so the
main job runs end to end on a fresh machine with no download.
"""

from __future__ import annotations

import os

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

# Side length of the stored digit images: 8x8 scans upsampled by 4 so that
# crops and resizes behave as they do on photographs (no sub-pixel crops).
DIGITS_SIZE = 32
# Held-out test examples: 20 % of 1797, stratified by class with a fixed seed.
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0

# tfds imagenet2012 `_split_generators`: the two archives it opens in the
# manual directory.
IMAGENET_ARCHIVES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


def digits_images_and_labels() -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digits as uint8 (N, 32, 32, 1) images on [0, 255], int labels."""
  # Imported here: scikit-learn is only needed when the demo data is prepared.
  import sklearn.datasets  # pylint: disable=g-import-not-at-top
  digits = sklearn.datasets.load_digits()
  # load_digits: integer intensities 0..16 (UCI optdigits), white on black.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  scale = DIGITS_SIZE // images.shape[1]
  # Nearest-neighbour upsampling keeps the scanned values exactly.
  images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  return images[..., None], digits.target.astype(np.int64)


def digits_split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Indices of the fixed, class-stratified train/test split (1437/360)."""
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=DIGITS_TEST_SIZE, stratify=labels,
      random_state=DIGITS_SPLIT_SEED)
  return {'train': np.sort(train), 'test': np.sort(test)}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's handwritten digits as a TFDS dataset (no download)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': '32x32 grayscale PNGs, stratified 1437/360 split.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=('Handwritten digits bundled with scikit-learn '
                     '(UCI optdigits test set), upsampled to 32x32.'),
        features=tfds.features.FeaturesDict({
            # One channel on purpose: the pipeline's gray -> RGB path runs in
            # the demo.
            'image': tfds.features.Image(
                shape=(DIGITS_SIZE, DIGITS_SIZE, 1), encoding_format='png'),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships inside scikit-learn.
    images, labels = digits_images_and_labels()
    return {name: self._generate_examples(images, labels, indices)
            for name, indices in digits_split_indices(labels).items()}

  def _generate_examples(self, images, labels, indices):
    for index in indices:
      yield int(index), {'image': images[index], 'label': int(labels[index])}


def _manual_dir(builder: tfds.core.DatasetBuilder) -> str:
  """Where TFDS looks for manually downloaded files (its default layout)."""
  # tfds DatasetBuilder._make_download_manager: <data_dir>/downloads/manual.
  return os.path.join(builder.data_dir_root, 'downloads', 'manual')


def not_prepared_message(builder: tfds.core.DatasetBuilder) -> str:
  """One line: the dataset is not prepared, and the command that prepares it."""
  name, root = builder.name, builder.data_dir_root
  build = f'`tfds build {name} --data_dir={root}`'
  if name == 'imagenet2012':
    # tfds imagenet2012 `_split_generators` builds each split whose archive
    # is present, so the validation archive alone is enough to evaluate.
    return (f'imagenet2012 is not prepared in {root}: put '
            f'{IMAGENET_ARCHIVES[1]} (validation; add {IMAGENET_ARCHIVES[0]} '
            f'to train) from https://image-net.org in {_manual_dir(builder)}/'
            f', then run {build}.')
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    return (f'{name} is not prepared in {root} and needs a manual download: '
            f'place its files in {_manual_dir(builder)}/ as its TFDS catalog '
            f'page describes, then run {build}.')
  return (f'{name} is not prepared in {root}: run {build} (it downloads the '
          'data) on a machine with network access, then start again.')


def check_features(builder: tfds.core.DatasetBuilder) -> None:
  """Raises unless the dataset has an encoded 'image' and a 'label' class."""
  features = builder.info.features
  image = features['image'] if 'image' in features else None
  label = features['label'] if 'label' in features else None
  if not isinstance(image, tfds.features.Image):
    raise ValueError(
        f'dataset {builder.name} has no "image" feature of type '
        'tfds.features.Image; the pipeline needs image/label datasets '
        '(e.g. imagenet2012, cifar10, oxford_flowers102).')
  if not isinstance(label, tfds.features.ClassLabel):
    raise ValueError(
        f'dataset {builder.name} has no "label" feature of type '
        'tfds.features.ClassLabel; the pipeline needs image/label datasets.')
  channels = image.shape[-1]
  if channels not in (None, 1, 3, 4):
    raise ValueError(
        f'dataset {builder.name} has {channels}-channel images; the pipeline '
        'reads gray (1), RGB (3) or RGBA (4, alpha dropped) images.')


def _prepare_digits(builder: tfds.core.DatasetBuilder
                    ) -> tfds.core.DatasetBuilder:
  """Prepares the demo dataset, on process 0 only when there are several."""
  # Imported here: the rest of this module needs no jax.
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    if not builder.is_prepared():
      logging.info('Preparing digits in %s.', builder.data_dir_root)
      builder.download_and_prepare()
    return builder
  # Every process reaches the barrier, prepared or not, so that none waits
  # for one that found the files already written and went on.
  if jax.process_index() == 0 and not builder.is_prepared():
    logging.info('Preparing digits in %s.', builder.data_dir_root)
    builder.download_and_prepare()
  multihost_utils.sync_global_devices('efficientnet_jax: digits prepared')
  builder = Digits(data_dir=builder.data_dir_root)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'digits is not prepared in {builder.data_dir_root} on process '
        f'{jax.process_index()} after process 0 prepared it: give every '
        'process the same (shared) config.data_dir.')
  return builder


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder for `name`; never downloads.

  'digits' is prepared from scikit-learn on first use (no network; on process
  0 of a multi-process job, the others waiting). Any other dataset must be
  prepared beforehand (`tfds build`); one that is not fails at once with the
  command that prepares it, before TFDS touches the network.

  Args:
    name: a TFDS name ('imagenet2012', 'cifar10', 'oxford_flowers102', ...,
      optionally with ':version') or 'digits'.
    data_dir: the TFDS data directory; None means TFDS's default.

  Returns:
    A builder whose `as_dataset` and split file instructions can be read.
  """
  if name == 'digits':
    builder = _prepare_digits(Digits(data_dir=data_dir))
  else:
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
      raise ValueError(
          f'unknown dataset {name!r}: use "digits" or a TFDS name with '
          'image/label features (see tfds.list_builders()).') from None
    # Checked before `builder.info`, which for an unprepared dataset would
    # look for its metadata on GCS.
    if not builder.is_prepared():
      raise FileNotFoundError(not_prepared_message(builder))
  check_features(builder)
  file_format = builder.info.file_format
  if file_format is not None and file_format.value != 'tfrecord':
    raise ValueError(
        f'{name} is prepared as {file_format.value}; the pipeline streams '
        'TFRecord files: prepare it with `tfds build '
        f'{name} --file_format=tfrecord`.')
  return builder
