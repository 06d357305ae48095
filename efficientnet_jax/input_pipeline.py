"""tf.data train and eval pipelines over TFDS datasets, one shard per process.

Each process reads its even share of the split (`tfds.even_splits`) straight
from the prepared TFRecord files and yields numpy batches of its local part of
the global batch, ready for `jax.make_array_from_process_local_data`.

Train: per epoch, shuffle the file order and the examples (seeded by
config.seed, the process and the epoch), decode-and-crop with the Inception
box, resize, flip, optional AutoAugment/RandAugment. The random
draws of an example depend only on (seed, process, epoch, its index in the
split), and the example order only on (seed, process, epoch), so the iterator
started at step k yields exactly the batches the uninterrupted one yields from
step k on; resuming reads, but never decodes, at most one epoch of records.

Eval: one deterministic pass with the centre crop; the last batch is padded,
with `mask` 0 and `index` -1 on the padding, so every example counts exactly
once across processes and every process runs the same number of batches.

Images leave the host as [0, 255] RGB, not normalised: the jitted steps
compute (x - mean_rgb) / std_rgb on the device (steps.normalise). Their host
dtype is `host_image_dtype(config, train=...)`: uint8 where the preprocessing
ends in integers (AutoAugment/RandAugment work on uint8), a quarter of the
float32 bytes to hold, prefetch and transfer; float32 where it does not (the
bicubic/bilinear resize of unaugmented training and of eval leaves fractions
and overshoot outside [0, 255], which TPU-PRE feeds to the network as they
are). Either way the device sees the values TPU-PRE computes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterable, Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from efficientnet_jax import augment
from efficientnet_jax import autoaugment
from efficientnet_jax import datasets
from efficientnet_jax import validate

AUGMENTATIONS = validate.AUGMENTATIONS
HOST_IMAGE_DTYPES = validate.HOST_IMAGE_DTYPES
# Files read at once; the Flax ImageNet example and tfds use 16 too.
CYCLE_LENGTH = 16
# The map functions are plain TF ops with no Python control flow on tensors;
# skipping AutoGraph's source conversion saves seconds of tracing per pipeline.
_no_autograph = tf.autograph.experimental.do_not_convert

# Datasets of centred scans, not photographs: a mirrored digit or a crop of
# 10 % of one is no longer that digit (training from scratch on such crops
# stays at chance for hundreds of steps), so they skip the Inception crop and
# the flip.
CENTRED_DATASETS = ('digits',)

# Batches buffered ahead of the trainer: enough to hide step jitter, small
# enough that host memory stays a few batches (no AUTOTUNE growth).
PREFETCH_BATCHES = 2


class DatasetInfo:
  """Class count of a prepared dataset; a split's size only when read.

  Evaluation reads `num_classes` and `num_eval_examples`, training also
  `num_train_examples`; each split is looked up when its size is first read,
  so a dataset with only its evaluation split prepared serves evaluation.
  """

  def __init__(self, builder: tfds.core.DatasetBuilder, train_split: str,
               eval_split: str):
    self._builder = builder
    self.train_split = train_split
    self.eval_split = eval_split

  @property
  def num_classes(self) -> int:
    return self._builder.info.features['label'].num_classes

  @property
  def num_train_examples(self) -> int:
    return _split_info(self._builder, self.train_split).num_examples

  @property
  def num_eval_examples(self) -> int:
    return _split_info(self._builder, self.eval_split).num_examples

  def __repr__(self) -> str:
    return (f'DatasetInfo({self._builder.name}, num_classes='
            f'{self.num_classes}, splits: '
            f'{", ".join(self._builder.info.splits)})')


@dataclasses.dataclass(frozen=True)
class _FileRange:
  """Records [skip, skip + take) of one TFRecord file."""
  filename: str
  skip: int
  take: int


def _split_info(builder: tfds.core.DatasetBuilder, split: Any):
  try:
    return builder.info.splits[split]
  except (KeyError, ValueError) as error:
    raise ValueError(
        f'dataset {builder.name} has no split {split!r} (splits: '
        f'{", ".join(builder.info.splits)}): {error}') from None


def dataset_info(config) -> DatasetInfo:
  """Class count and (lazily) split sizes of config.dataset.

  Only the splits whose sizes are read need to be prepared: evaluation never
  touches config.train_split.
  """
  builder = datasets.get_builder(config.dataset, config.data_dir)
  return DatasetInfo(builder, config.train_split, config.eval_split)


def _process_shard(builder, split: str, process_index: int, process_count: int
                   ) -> tuple[list[_FileRange], int]:
  """This process's file ranges and the split index of its first example."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in '
                     f'[0, {process_count}).')
  _split_info(builder, split)  # Names a missing split before sharding it.
  shards = tfds.even_splits(split, process_count)
  first_index = sum(_split_info(builder, shard).num_examples
                    for shard in shards[:process_index])
  ranges = []
  for instruction in _split_info(builder, shards[process_index]
                                 ).file_instructions:
    take = instruction.take
    if take < 0:  # Older tfds: -1 means "to the end of the file".
      take = instruction.examples_in_shard - instruction.skip
    if take > 0:
      ranges.append(_FileRange(instruction.filename, instruction.skip, take))
  return ranges, first_index


def _read_records(ranges: Sequence[_FileRange], first_index: int, *,
                  file_order_seed: tf.Tensor | None = None
                  ) -> tf.data.Dataset:
  """(index in split, serialized example) for every record in `ranges`.

  Files are read CYCLE_LENGTH at a time, round-robin, in a deterministic
  order: the given one, or a shuffle of it when file_order_seed is set.
  """
  takes = np.array([r.take for r in ranges], np.int64)
  offsets = first_index + np.concatenate([[0], np.cumsum(takes)[:-1]])
  files = tf.data.Dataset.from_tensor_slices((
      [r.filename for r in ranges],
      np.array([r.skip for r in ranges], np.int64), takes, offsets))
  if file_order_seed is not None:
    files = files.shuffle(len(ranges), seed=file_order_seed)

  @_no_autograph
  def read_file(filename, skip, take, offset):
    indices = tf.data.Dataset.range(offset, offset + take)
    records = tf.data.TFRecordDataset(filename).skip(skip).take(take)
    return tf.data.Dataset.zip((indices, records))

  return files.interleave(
      read_file, cycle_length=min(CYCLE_LENGTH, len(ranges)), block_length=1,
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _parse(builder, record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Encoded image bytes and int32 label of one serialized example."""
  example = builder.info.features.deserialize_example(
      record, decoders={'image': tfds.decode.SkipDecoding()})
  return example['image'], tf.cast(example['label'], tf.int32)


def host_image_dtype(config, *, train: bool) -> tf.DType:
  """The dtype images are handed to the devices in (config.host_image_dtype).

  'auto': uint8 for training with AutoAugment/RandAugment, whose output is
  uint8 (exact); float32 otherwise, keeping the resize's fractions and
  overshoot. 'uint8' forces uint8 everywhere: where the preprocessing ends in
  floats, images are clipped to [0, 255] and rounded, so the network sees
  up to half a level and the overshoot less than TPU-PRE gives it. 'float32'
  is the float32 hand-over everywhere (augmented images cast exactly).
  """
  choice = config.host_image_dtype
  if choice not in HOST_IMAGE_DTYPES:
    raise ValueError(f'config.host_image_dtype={choice!r}: use one of '
                     f'{HOST_IMAGE_DTYPES}.')
  if choice == 'auto':
    integral = train and config.augment != 'none'
    return tf.uint8 if integral else tf.float32
  return tf.as_dtype(choice)


def to_host_dtype(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """`image` ([0, 255] RGB, uint8 or float32) in the hand-over dtype.

  uint8 to float32 is exact; float32 to uint8 clips and rounds to nearest.
  """
  if image.dtype == dtype:
    return image
  if dtype == tf.uint8:
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
  return tf.cast(image, dtype)


def preprocess_train(image_bytes: tf.Tensor, seed: tf.Tensor, *,
                     resolution: int, resize_method: str, augment_name: str,
                     randaugment_num_layers: int, randaugment_magnitude: int,
                     crop_padding: int, photo_crops: bool = True,
                     crop_min_area: float = augment.AREA_RANGE[0]
                     ) -> tf.Tensor:
  """TPU-PRE preprocess_for_train: [res, res, 3] on about [0, 255].

  Crop, resize, flip; then, for AutoAugment/RandAugment, clip and truncate to
  uint8 and augment at final size (docs/reference.md §6.1), returning uint8.
  Without augmentation the result is float32 and keeps the bicubic overshoot
  outside [0, 255], as in TPU-PRE. With photo_crops=False the crop is the
  eval centre crop and there is no flip.
  """
  if photo_crops:
    window_fn = functools.partial(
        augment.random_crop_window, seed=augment.sub_seed(seed, 0),
        resolution=resolution, crop_padding=crop_padding,
        min_area=crop_min_area)
  else:
    window_fn = functools.partial(augment.center_crop_window,
                                  resolution=resolution,
                                  crop_padding=crop_padding)
  image = augment.decode_and_crop(image_bytes, window_fn)
  image = augment.resize(image, resolution, resize_method)
  if photo_crops:
    image = augment.random_flip(image, augment.sub_seed(seed, 1))
  if augment_name == 'none':
    return image
  image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
  augment_seed = augment.sub_seed(seed, 2)
  if augment_name == 'autoaugment':
    image = autoaugment.autoaugment(image, augment_seed)
  else:
    image = autoaugment.randaugment(image, augment_seed,
                                    num_layers=randaugment_num_layers,
                                    magnitude=randaugment_magnitude)
  return image


def preprocess_eval(image_bytes: tf.Tensor, *, resolution: int,
                    resize_method: str, crop_padding: int,
                    center_crop: bool = True) -> tf.Tensor:
  """TPU-PRE preprocess_for_eval: centre crop, resize; float32 [0, ~255].

  center_crop=False resizes the whole image (google/automl efficientnetv2
  at 320 px and above, docs/reference.md §10.7).
  """
  if center_crop:
    window_fn = functools.partial(augment.center_crop_window,
                                  resolution=resolution,
                                  crop_padding=crop_padding)
  else:
    window_fn = augment.whole_image_window
  image = augment.decode_and_crop(image_bytes, window_fn)
  return augment.resize(image, resolution, resize_method)


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # One thread per op inside map: the parallelism is across examples, and
  # nested thread pools oversubscribe the host CPUs.
  options.threading.max_intra_op_parallelism = 1
  return options


def _process_defaults(process_index, process_count) -> tuple[int, int]:
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  return process_index, process_count


def train_dataset(config, *, resolution: int, resize_method: str,
                  local_batch_size: int, start_step: int = 0,
                  process_index: int | None = None,
                  process_count: int | None = None) -> tf.data.Dataset:
  """The infinite, batched train tf.data.Dataset of this process."""
  if config.augment not in AUGMENTATIONS:
    raise ValueError(f'config.augment={config.augment!r}: use one of '
                     f'{AUGMENTATIONS}.')
  image_dtype = host_image_dtype(config, train=True)
  process_index, process_count = _process_defaults(process_index,
                                                   process_count)
  builder = datasets.get_builder(config.dataset, config.data_dir)
  ranges, first_index = _process_shard(builder, config.train_split,
                                       process_index, process_count)
  shard_size = sum(r.take for r in ranges)
  if not shard_size:
    raise ValueError(
        f'split {config.train_split!r} of {config.dataset} has no examples '
        f'for process {process_index} of {process_count}.')
  # Every process consumes local_batch_size examples per step.
  start_epoch, skip = divmod(start_step * local_batch_size, shard_size)
  process_seed = tf.constant([config.seed, process_index], tf.int64)
  buffer_size = min(config.shuffle_buffer_size, shard_size)

  @_no_autograph
  def epoch_examples(epoch):
    epoch_seed = tf.random.experimental.stateless_fold_in(process_seed, epoch)
    order_seeds = tf.random.stateless_uniform(
        [2], epoch_seed, minval=None, maxval=None, dtype=tf.int64)
    records = _read_records(ranges, first_index,
                            file_order_seed=order_seeds[0])
    records = records.shuffle(buffer_size, seed=order_seeds[1],
                              reshuffle_each_iteration=False)
    return records.map(
        _no_autograph(lambda index, record: (epoch_seed, index, record)))

  @_no_autograph
  def preprocess(epoch_seed, index, record):
    image_bytes, label = _parse(builder, record)
    seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
    image = preprocess_train(
        image_bytes, seed, resolution=resolution, resize_method=resize_method,
        augment_name=config.augment,
        randaugment_num_layers=config.randaugment_num_layers,
        randaugment_magnitude=config.randaugment_magnitude,
        crop_padding=config.crop_padding,
        photo_crops=config.dataset not in CENTRED_DATASETS,
        crop_min_area=config.train_crop_min_area)
    return {'image': to_host_dtype(image, image_dtype), 'label': label}

  # Epochs are concatenated lazily; the skip drops serialized records only.
  dataset = tf.data.Dataset.range(start_epoch, np.iinfo(np.int64).max)
  dataset = dataset.flat_map(epoch_examples).skip(skip)
  dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(local_batch_size, drop_remainder=True)
  return dataset.prefetch(PREFETCH_BATCHES).with_options(_options())


def create_train_iter(config, *, resolution: int, resize_method: str,
                      local_batch_size: int,
                      start_step: int = 0, process_index: int | None = None,
                      process_count: int | None = None
                      ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of {'image': (B,H,W,3), 'label': int32 (B,)}.

  Images are [0, 255] RGB in host_image_dtype(config, train=True), not
  normalised. `start_step=k` yields what the iterator started at 0 yields
  from step k on.
  """
  return train_dataset(
      config, resolution=resolution, resize_method=resize_method,
      local_batch_size=local_batch_size,
      start_step=start_step, process_index=process_index,
      process_count=process_count).as_numpy_iterator()


class EvalIterable:
  """Re-iterable eval pass; `len()` is the batch count, equal on all hosts."""

  def __init__(self, dataset: tf.data.Dataset, num_batches: int):
    self.dataset = dataset
    self.num_batches = num_batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self.dataset.as_numpy_iterator()

  def __len__(self) -> int:
    return self.num_batches


def create_eval_iter(config, *, resolution: int, resize_method: str,
                     local_batch_size: int, split: str | None = None,
                     process_index: int | None = None,
                     process_count: int | None = None
                     ) -> Iterable[dict[str, np.ndarray]]:
  """One deterministic pass over this process's share of the eval split.

  Batches: 'image' ([0, 255] RGB in host_image_dtype(config, train=False);
  zeros on padding), 'label' int32, 'mask' float32 (1 real, 0 pad) and
  'index' int64 (the example's position in the split, -1 on padding).
  Every batch has local_batch_size rows.
  """
  image_dtype = host_image_dtype(config, train=False)
  process_index, process_count = _process_defaults(process_index,
                                                   process_count)
  split = config.eval_split if split is None else split
  builder = datasets.get_builder(config.dataset, config.data_dir)
  ranges, first_index = _process_shard(builder, split, process_index,
                                       process_count)
  shard_size = sum(r.take for r in ranges)
  # even_splits shards differ by at most one example; all processes pad to
  # the largest so they run the same number of steps.
  largest_shard = math.ceil(_split_info(builder, split).num_examples
                            / process_count)
  num_batches = max(1, math.ceil(largest_shard / local_batch_size))
  num_padding = num_batches * local_batch_size - shard_size

  @_no_autograph
  def preprocess(index, record):
    image_bytes, label = _parse(builder, record)
    image = preprocess_eval(image_bytes, resolution=resolution,
                            resize_method=resize_method,
                            crop_padding=config.crop_padding,
                            center_crop=config.eval_center_crop)
    return {'image': to_host_dtype(image, image_dtype), 'label': label,
            'mask': tf.constant(1.0), 'index': index}

  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([resolution, resolution, 3], image_dtype),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(0.0),
      'index': tf.constant(-1, tf.int64),
  }).repeat(num_padding)
  if ranges:
    dataset = _read_records(ranges, first_index).map(
        preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.concatenate(padding)
  else:
    dataset = padding
  dataset = dataset.batch(local_batch_size, drop_remainder=True)
  dataset = dataset.prefetch(PREFETCH_BATCHES).with_options(_options())
  return EvalIterable(dataset, num_batches)
