"""Crop, resize and flip of the official EfficientNet preprocessing (TPU-PRE).

Plain TensorFlow functions for tf.data (docs/reference.md §6): the Inception-style
random crop with its centre-crop fallback, the eval centre crop with PAD=32,
fused JPEG decode-and-crop, TF1 resize kernels and the horizontal flip.
AutoAugment and RandAugment live in autoaugment.py.

Randomness is stateless: every function that draws takes `seed`, a shape-[2]
integer tensor, so an image and a seed always give the same result, eagerly or
inside tf.data, on any number of threads.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

# TPU-PRE _decode_and_random_crop: the Inception-style crop.
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
AREA_RANGE = (0.08, 1.0)
MAX_ATTEMPTS = 10

RESIZE_METHODS = {
    'bicubic': tf.image.ResizeMethod.BICUBIC,
    'bilinear': tf.image.ResizeMethod.BILINEAR,
}


def sub_seed(seed: tf.Tensor, salt: int) -> tf.Tensor:
  """A new stateless seed from `seed`, one per distinct `salt`."""
  return tf.random.experimental.stateless_fold_in(seed, salt)


def random_crop_window(image_shape: tf.Tensor, seed: tf.Tensor,
                       *, resolution: int, crop_padding: int,
                       min_area: float = AREA_RANGE[0]) -> tf.Tensor:
  """[offset_y, offset_x, height, width] of the training crop.

  An Inception-style distorted box over the whole image (TPU-PRE: area
  [0.08, 1], aspect [3/4, 4/3], min_object_covered 0.1, 10 attempts). When
  sampling fails the box is the whole image, and TPU-PRE then uses the eval
  centre crop instead; we decide that before decoding, so the JPEG is decoded
  once (TPU-PRE decodes it twice).

  Args:
    image_shape: int32 [height, width] of the encoded image.
    seed: stateless seed.
    resolution: final side, for the centre-crop fallback.
    crop_padding: the centre crop's padding (docs/reference.md §6.2).
    min_area: the smallest share of the image a crop covers (TPU-PRE 0.08;
      google/automl efficientnetv2 0.05, docs/reference.md §10.7).

  Returns:
    int32 [4] crop window.
  """
  image_shape = tf.cast(image_shape, tf.int32)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([image_shape, [3]], axis=0),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed,
      min_object_covered=MIN_OBJECT_COVERED,
      aspect_ratio_range=ASPECT_RATIO_RANGE,
      area_range=(min_area, AREA_RANGE[1]),
      max_attempts=MAX_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  window = tf.stack([begin[0], begin[1], size[0], size[1]])
  # TPU-PRE `_at_least_x_are_equal(original_shape, crop_shape, 3)`.
  is_whole_image = tf.reduce_all(tf.equal(size[:2], image_shape))
  return tf.cond(
      is_whole_image,
      lambda: center_crop_window(image_shape, resolution=resolution,
                                 crop_padding=crop_padding),
      lambda: window)


def center_crop_window(image_shape: tf.Tensor, *, resolution: int,
                       crop_padding: int) -> tf.Tensor:
  """[offset_y, offset_x, side, side] of the eval centre crop.

  TPU-PRE `_decode_and_center_crop` with PAD=32 (docs/reference.md §6.2): side =
  floor(resolution / (resolution + pad) * min(height, width)), offsets rounded
  up. Images under 2 px would get an empty crop; we keep at least 1 px.
  """
  image_shape = tf.cast(image_shape, tf.int32)
  height, width = image_shape[0], image_shape[1]
  fraction = resolution / (resolution + crop_padding)
  side = tf.cast(fraction * tf.cast(tf.minimum(height, width), tf.float32),
                 tf.int32)
  side = tf.maximum(side, 1)
  offset_y = (height - side + 1) // 2
  offset_x = (width - side + 1) // 2
  return tf.stack([offset_y, offset_x, side, side])


def whole_image_window(image_shape: tf.Tensor) -> tf.Tensor:
  """[0, 0, height, width]: the whole image, for a resize without a crop."""
  image_shape = tf.cast(image_shape, tf.int32)
  return tf.stack([0, 0, image_shape[0], image_shape[1]])


def decode_and_crop(image_bytes: tf.Tensor,
                    window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
  """Decodes the crop `window_fn([height, width])` of an encoded image.

  JPEGs go through the fused decode-and-crop (only the window's rows are
  decoded, TPU-PRE); PNG/GIF/BMP are decoded whole, then cropped. Gray images
  become RGB by replication and an alpha channel is dropped (channels=3).

  Returns:
    uint8 [height, width, 3].
  """

  def jpeg():
    shape = tf.image.extract_jpeg_shape(image_bytes)[:2]
    return tf.image.decode_and_crop_jpeg(image_bytes, window_fn(shape),
                                         channels=3)

  def other():
    image = tf.io.decode_image(image_bytes, channels=3,
                               expand_animations=False)
    window = window_fn(tf.shape(image)[:2])
    return tf.slice(image, [window[0], window[1], 0],
                    [window[2], window[3], 3])

  image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
  image.set_shape([None, None, 3])
  return image


def resize(image: tf.Tensor, resolution: int, method: str) -> tf.Tensor:
  """Resizes to resolution x resolution, ignoring aspect ratio; float32 out.

  TF1 kernels as in TPU-PRE (`tf.compat.v1.image.resize`): no half-pixel
  centres, no antialiasing; the bicubic result can overshoot [0, 255].
  """
  if method not in RESIZE_METHODS:
    raise ValueError(f'resize_method {method!r}: use one of '
                     f'{sorted(RESIZE_METHODS)}.')
  resized = tf.compat.v1.image.resize(
      image[None], [resolution, resolution], method=RESIZE_METHODS[method])
  return tf.cast(resized[0], tf.float32)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Horizontal flip with probability 0.5 (TPU-PRE `_flip`)."""
  return tf.image.stateless_random_flip_left_right(image, seed)
