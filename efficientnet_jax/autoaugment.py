"""AutoAugment policy 'v0' and RandAugment, op by op as in TPU-AA.

Plain TensorFlow functions on uint8 [H, W, 3] images at final size, so they
run inside tf.data on the host CPUs (docs/reference.md §7). Geometric ops use
ImageProjectiveTransformV3 (tf.contrib is gone) with nearest sampling and
fill 128. Where TF semantics make an official op do something other than its
name says (uint8 wrap of Solarize's threshold, TF's clamped bit shifts in
Posterize, the "mean" of Contrast), the op reproduces what the official code
computed, and its docstring says so.

Every draw is stateless (`seed`: a shape-[2] integer tensor): a policy applied
to an image with a given seed always gives the same result.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from efficientnet_jax import augment

# TPU-AA: magnitudes are levels on [0, _MAX_LEVEL], never clipped.
MAX_LEVEL = 10.0
# TPU-AA build_and_apply_nas_policy / distort_image_with_randaugment:
# replace_value [128] * 3 fills pixels a geometric op pulls in from outside.
REPLACE_VALUE = 128
# Four bytes of REPLACE_VALUE as one int32 (0x80808080), for _transform; it
# has 24 significant bits, so float32 holds it exactly.
_PACKED_FILL = int(np.frombuffer(bytes([REPLACE_VALUE] * 4), np.int32)[0])
# TPU-AA hparams, absolute pixels whatever the image size.
AUTOAUGMENT_TRANSLATE_CONST = 250
AUTOAUGMENT_CUTOUT_CONST = 100
RANDAUGMENT_TRANSLATE_CONST = 100
RANDAUGMENT_CUTOUT_CONST = 40


def _coin(seed: tf.Tensor, probability: float | tf.Tensor) -> tf.Tensor:
  """True with `probability` (0 never, 1 always)."""
  return tf.random.stateless_uniform([], seed) < probability


def blend(image1: tf.Tensor, image2: tf.Tensor,
          factor: float | tf.Tensor) -> tf.Tensor:
  """image1 + factor * (image2 - image1), clipped to [0, 255], truncated.

  TPU-AA skips the clip for 0 < factor < 1 and returns an input unchanged
  for factor 0 or 1; on uint8 inputs the clipped formula gives the same
  pixels in those cases, so one formula serves every factor, also a tensor.
  """
  image1 = tf.cast(image1, tf.float32)
  image2 = tf.cast(image2, tf.float32)
  blended = image1 + tf.cast(factor, tf.float32) * (image2 - image1)
  return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
  """Per channel, stretch [min, max] to [0, 255]; flat channels unchanged."""
  low = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float32)
  high = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float32)
  # A flat channel gets scale 1, offset 0: the same pixels as TPU-AA's
  # "leave it alone" branch, without a per-pixel select (slow in TF).
  stretch = high > low
  scale = tf.where(stretch, 255.0 / tf.maximum(high - low, 1.0), 1.0)
  offset = tf.where(stretch, -low * scale, 0.0)
  stretched = tf.cast(image, tf.float32) * scale + offset
  return tf.cast(tf.clip_by_value(stretched, 0.0, 255.0), tf.uint8)


def _channel_offsets() -> tf.Tensor:
  return tf.constant([0, 256, 512], tf.int32)


def _channel_histograms(image: tf.Tensor) -> tf.Tensor:
  """int32 [3, 256]: the count of each value in each channel."""
  # Channel c's values shifted by 256 c: one histogram of 768 unit-wide bins
  # counts all three (bin floor(v * 768 / 767) is v for every v < 767).
  values = tf.cast(image, tf.int32) + _channel_offsets()
  histogram = tf.histogram_fixed_width(values, [0, 767], nbins=768)
  return tf.reshape(histogram, [3, 256])


# XLA-compiled: TF's CPU gather copies element by element; the compiled
# gather is several times faster, and exact (integers).
@tf.function(jit_compile=True, reduce_retracing=True)
def _lookup(tables: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
  """Maps each pixel v of channel c to tables[c, v]; tables is [3, 256]."""
  flat = tf.reshape(tf.cast(tables, tf.uint8), [-1])
  return tf.gather(flat, tf.cast(image, tf.int32) + _channel_offsets())


def equalize(image: tf.Tensor) -> tf.Tensor:
  """PIL-style histogram equalisation, each channel on its own (TPU-AA)."""
  histogram = _channel_histograms(image)
  # TPU-AA: step = (pixel count - count of the highest value present) // 255.
  present = tf.cast(histogram > 0, tf.int32)
  top_value = 255 - tf.argmax(tf.reverse(present, axis=[1]), axis=1,
                              output_type=tf.int32)
  top_count = tf.gather(histogram, top_value, batch_dims=1)
  step = (tf.reduce_sum(histogram, axis=1) - top_count) // 255
  safe_step = tf.maximum(step, 1)[:, None]
  lut = (tf.cumsum(histogram, axis=1) + safe_step // 2) // safe_step
  lut = tf.clip_by_value(
      tf.concat([tf.zeros_like(lut[:, :1]), lut[:, :-1]], axis=1), 0, 255)
  # Step 0 (one value besides the top one at most): channel unchanged.
  identity = tf.broadcast_to(tf.range(256), [3, 256])
  lut = tf.where(step[:, None] == 0, identity, lut)
  return _lookup(lut, image)


def invert(image: tf.Tensor) -> tf.Tensor:
  return 255 - image


def posterize(image: tf.Tensor, bits: int | tf.Tensor) -> tf.Tensor:
  """Keeps the top `bits` bits of every pixel.

  TPU-AA shifts right then left by the Python int 8 - bits, which TF converts
  to uint8 (so -3 becomes 253) and its CPU kernel clamps to [0, 7]: bits 0
  (magnitude <= 2) keeps the top bit instead of giving a black image, and
  bits > 8 (RandAugment M >= 23) also keeps only the top bit.
  """
  shift = tf.cast(tf.math.floormod(8 - tf.cast(bits, tf.int32), 256),
                  tf.uint8)
  return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def solarize(image: tf.Tensor, threshold: int | tf.Tensor) -> tf.Tensor:
  """Inverts the pixels >= threshold.

  TPU-AA compares the uint8 image with a Python int, which TF converts to
  uint8: threshold 256 (magnitude 10) wraps to 0 and inverts every pixel
  rather than none (also seen in big_vision, google-research/big_vision#110).
  """
  threshold = tf.cast(tf.math.floormod(tf.cast(threshold, tf.int32), 256),
                      tf.uint8)
  # 255 - v is v XOR 255 on uint8; XOR with 0 or 255 avoids a slow select.
  return tf.bitwise.bitwise_xor(image,
                                tf.cast(image >= threshold, tf.uint8) * 255)


def solarize_add(image: tf.Tensor, addition: int | tf.Tensor,
                 threshold: int = 128) -> tf.Tensor:
  """Adds `addition` to the pixels below `threshold`, clipped to 255."""
  below = tf.cast(image < threshold, tf.int32)
  added = tf.cast(image, tf.int32) + below * tf.cast(addition, tf.int32)
  return tf.cast(tf.clip_by_value(added, 0, 255), tf.uint8)


def color(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """Blend with the image's grayscale version (PIL ImageEnhance.Color)."""
  gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))
  return blend(gray, image, factor)


def contrast(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """Blend with a flat gray image, as TPU-AA computes it.

  TPU-AA's "mean" is the sum of a 256-bin histogram of the grayscale image
  divided by 256, i.e. pixel_count / 256 (196 at 224 px, 255 from ~256 px up),
  not the mean intensity (docs/reference.md §7.2); reproduced as such.
  """
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  level = tf.cast(height * width, tf.float32) / 256.0
  level = tf.cast(tf.clip_by_value(level, 0.0, 255.0), tf.uint8)
  return blend(tf.fill(tf.shape(image), level), image, factor)


def brightness(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """Blend with black."""
  return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor: float | tf.Tensor) -> tf.Tensor:
  """Blend with a 3x3 smoothing of the image, borders kept (PIL SMOOTH)."""
  kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]],
                       tf.float32) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
  smooth = tf.nn.depthwise_conv2d(
      tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1], 'VALID')[0]
  smooth = tf.cast(tf.clip_by_value(smooth, 0.0, 255.0), tf.uint8)
  # The one-pixel border keeps the original values.
  middle = tf.concat([image[1:-1, :1], smooth, image[1:-1, -1:]], axis=1)
  smooth = tf.concat([image[:1], middle, image[-1:]], axis=0)
  return blend(smooth, image, factor)


def _transform(image: tf.Tensor, transform: list[tf.Tensor]) -> tf.Tensor:
  """Projective transform, output -> input coordinates, nearest, fill 128.

  TPU-AA used tf.contrib.image (nearest neighbour) on the image plus an
  all-ones channel and set pixels whose extra channel came out 0 to 128; with
  nearest sampling that is exactly a constant fill of 128.
  """
  transform = tf.reshape(
      tf.stack([tf.cast(t, tf.float32) for t in transform]), [1, 8])
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  # Nearest sampling copies whole pixels, so RGB (+ a pad byte) travels as
  # one int32: the kernel maps each pixel once instead of once per channel.
  rgbx = tf.pad(image, [[0, 0], [0, 0], [0, 1]])
  packed = tf.bitcast(rgbx, tf.int32)[None, :, :, None]
  output = tf.raw_ops.ImageProjectiveTransformV3(
      images=packed, transforms=transform, output_shape=[height, width],
      fill_value=tf.constant(_PACKED_FILL, tf.float32),
      interpolation='NEAREST', fill_mode='CONSTANT')
  output = tf.bitcast(output[0, :, :, 0], tf.uint8)[:, :, :3]
  return tf.ensure_shape(output, image.shape)


def rotate(image: tf.Tensor, degrees: float | tf.Tensor) -> tf.Tensor:
  """Rotates counter-clockwise about the centre (contrib rotate's matrix)."""
  radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
  height = tf.cast(tf.shape(image)[0], tf.float32)
  width = tf.cast(tf.shape(image)[1], tf.float32)
  cos, sin = tf.cos(radians), tf.sin(radians)
  offset_x = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
  offset_y = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
  return _transform(image, [cos, -sin, offset_x, sin, cos, offset_y, 0.0, 0.0])


def shear_x(image: tf.Tensor, level: float | tf.Tensor) -> tf.Tensor:
  """Output (x, y) reads input (x + level * y, y)."""
  return _transform(image, [1.0, level, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])


def shear_y(image: tf.Tensor, level: float | tf.Tensor) -> tf.Tensor:
  """Output (x, y) reads input (x, y + level * x)."""
  return _transform(image, [1.0, 0.0, 0.0, level, 1.0, 0.0, 0.0, 0.0])


def translate_x(image: tf.Tensor, pixels: float | tf.Tensor) -> tf.Tensor:
  """Moves the content `pixels` to the left (TPU-AA translate [-pixels, 0])."""
  return _transform(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0])


def translate_y(image: tf.Tensor, pixels: float | tf.Tensor) -> tf.Tensor:
  """Moves the content `pixels` up."""
  return _transform(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0])


def cutout(image: tf.Tensor, pad_size: int | tf.Tensor, seed: tf.Tensor,
           replace: int = REPLACE_VALUE) -> tf.Tensor:
  """Fills a 2*pad_size square, centred uniformly, clipped at the borders."""
  pad_size = tf.cast(pad_size, tf.int32)
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  center_y = tf.random.stateless_uniform(
      [], augment.sub_seed(seed, 0), minval=0, maxval=height, dtype=tf.int32)
  center_x = tf.random.stateless_uniform(
      [], augment.sub_seed(seed, 1), minval=0, maxval=width, dtype=tf.int32)
  top = tf.maximum(0, center_y - pad_size)
  bottom = tf.minimum(height, center_y + pad_size)
  left = tf.maximum(0, center_x - pad_size)
  right = tf.minimum(width, center_x + pad_size)
  # 0 inside the square, 1 outside, built by padding (TPU-AA's way); the
  # blend below is plain arithmetic, as a per-pixel select is slow in TF.
  keep = tf.pad(tf.zeros([bottom - top, right - left, 3], image.dtype),
                [[top, height - bottom], [left, width - right], [0, 0]],
                constant_values=1)
  return image * keep + (1 - keep) * replace


# Ops whose argument flips sign with probability 0.5 (TPU-AA
# _randomly_negate_tensor).
SIGNED_OPS = frozenset(
    {'Rotate', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY'})


def op_argument(name: str, magnitude: float, *, translate_const: int,
                cutout_const: int) -> float | int | None:
  """The (unsigned) argument op `name` gets at `magnitude`; None if none."""
  level = magnitude / MAX_LEVEL
  if name in ('AutoContrast', 'Equalize', 'Invert'):
    return None
  if name == 'Rotate':
    return level * 30.0
  if name == 'Posterize':
    return int(level * 4)
  if name == 'Solarize':
    return int(level * 256)
  if name == 'SolarizeAdd':
    return int(level * 110)
  if name in ('Color', 'Contrast', 'Brightness', 'Sharpness'):
    return level * 1.8 + 0.1
  if name in ('ShearX', 'ShearY'):
    return level * 0.3
  if name in ('TranslateX', 'TranslateY'):
    return level * float(translate_const)
  if name == 'Cutout':
    return int(level * cutout_const)
  raise ValueError(f'unknown augmentation op {name!r}.')


_OP_FUNCTIONS = {
    'AutoContrast': autocontrast,
    'Equalize': equalize,
    'Invert': invert,
    'Rotate': rotate,
    'Posterize': posterize,
    'Solarize': solarize,
    'SolarizeAdd': solarize_add,
    'Color': color,
    'Contrast': contrast,
    'Brightness': brightness,
    'Sharpness': sharpness,
    'ShearX': shear_x,
    'ShearY': shear_y,
    'TranslateX': translate_x,
    'TranslateY': translate_y,
    'Cutout': cutout,
}


def apply_op(image: tf.Tensor, name: str, argument: float | tf.Tensor | None,
             seed: tf.Tensor) -> tf.Tensor:
  """Applies op `name` with its (unsigned) argument; seed draws sign/place."""
  function = _OP_FUNCTIONS[name]
  if name in ('AutoContrast', 'Equalize', 'Invert'):
    return function(image)
  if name == 'Cutout':
    return function(image, argument, seed)
  if name in SIGNED_OPS:
    argument = tf.where(_coin(seed, 0.5), argument, -argument)
  return function(image, argument)


def _apply_indexed(image: tf.Tensor, names: Sequence[str], index: tf.Tensor,
                   argument: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Applies names[index], or nothing when index == len(names).

  One switch over the distinct ops, the argument a tensor, keeps the traced
  graph small: a branch per sub-policy op (50 for v0) takes seconds to build
  and optimise every time a pipeline starts.
  """
  branches = [functools.partial(apply_op, image, name, argument, seed)
              for name in names]
  branches.append(lambda: image)
  return tf.ensure_shape(tf.switch_case(index, branches), image.shape)


# TPU-AA policy_v0, verbatim: 25 sub-policies of (op, probability, magnitude).
# The magnitudes of Equalize/Invert/AutoContrast are ignored (docs/reference.md §7.3).
POLICY_V0 = (
    (('Equalize', 0.8, 1), ('ShearY', 0.8, 4)),
    (('Color', 0.4, 9), ('Equalize', 0.6, 3)),
    (('Color', 0.4, 1), ('Rotate', 0.6, 8)),
    (('Solarize', 0.8, 3), ('Equalize', 0.4, 7)),
    (('Solarize', 0.4, 2), ('Solarize', 0.6, 2)),
    (('Color', 0.2, 0), ('Equalize', 0.8, 8)),
    (('Equalize', 0.4, 8), ('SolarizeAdd', 0.8, 3)),
    (('ShearX', 0.2, 9), ('Rotate', 0.6, 8)),
    (('Color', 0.6, 1), ('Equalize', 1.0, 2)),
    (('Invert', 0.4, 9), ('Rotate', 0.6, 0)),
    (('Equalize', 1.0, 9), ('ShearY', 0.6, 3)),
    (('Color', 0.4, 7), ('Equalize', 0.6, 0)),
    (('Posterize', 0.4, 6), ('AutoContrast', 0.4, 7)),
    (('Solarize', 0.6, 8), ('Color', 0.6, 9)),
    (('Solarize', 0.2, 4), ('Rotate', 0.8, 9)),
    (('Rotate', 1.0, 7), ('TranslateY', 0.8, 9)),
    (('ShearX', 0.0, 0), ('Solarize', 0.8, 4)),
    (('ShearY', 0.8, 0), ('Color', 0.6, 4)),
    (('Color', 1.0, 0), ('Rotate', 0.6, 2)),
    (('Equalize', 0.8, 4), ('Equalize', 0.0, 8)),
    (('Equalize', 1.0, 4), ('AutoContrast', 0.6, 2)),
    (('ShearY', 0.4, 7), ('SolarizeAdd', 0.6, 7)),
    (('Posterize', 0.8, 2), ('Solarize', 0.6, 10)),
    (('Solarize', 0.6, 8), ('Equalize', 0.6, 1)),
    (('Color', 0.8, 6), ('Rotate', 0.4, 5)),
)

# TPU-AA distort_image_with_randaugment `available_ops`, in its order.
RANDAUGMENT_OPS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize',
    'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
    'TranslateX', 'TranslateY', 'Cutout', 'SolarizeAdd')


def autoaugment_tables(policy=POLICY_V0):
  """The distinct op names and [sub-policy, slot] tables of a policy.

  Returns:
    (names, op_index, probability, argument): op_index int32, probability
    and argument float32 numpy arrays of shape [len(policy), 2], the
    argument resolved with the AutoAugment constants (docs/reference.md §7.3).
  """
  names = tuple(sorted({name for sub_policy in policy
                        for name, _, _ in sub_policy}))
  op_index = [[names.index(name) for name, _, _ in sub_policy]
              for sub_policy in policy]
  probability = [[p for _, p, _ in sub_policy] for sub_policy in policy]
  argument = [[op_argument(name, magnitude,
                           translate_const=AUTOAUGMENT_TRANSLATE_CONST,
                           cutout_const=AUTOAUGMENT_CUTOUT_CONST) or 0.0
               for name, _, magnitude in sub_policy]
              for sub_policy in policy]
  return (names, np.array(op_index, np.int32),
          np.array(probability, np.float32), np.array(argument, np.float32))


def _apply_in_turn(image: tf.Tensor, names: Sequence[str], indices: tf.Tensor,
                   arguments: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
  """Applies names[indices[i]] with arguments[i] and seeds[i], i = 0, 1, ...

  A loop around a single switch: the graph holds each op once, however many
  ops run in turn.
  """

  def body(step, image):
    image = _apply_indexed(image, names, indices[step], arguments[step],
                           seeds[step])
    return step + 1, image

  _, image = tf.while_loop(lambda step, _: step < tf.size(indices), body,
                           (tf.constant(0), image))
  return image


def autoaugment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """AutoAugment policy 'v0': one of 25 sub-policies, chosen uniformly.

  The sub-policy's two ops run in order, each with its own probability.
  """
  names, op_index, probability, argument = autoaugment_tables()
  chosen = tf.random.stateless_uniform(
      [], augment.sub_seed(seed, 0), minval=0, maxval=len(POLICY_V0),
      dtype=tf.int32)
  slots = range(op_index.shape[1])
  draws = tf.stack([
      tf.random.stateless_uniform([], augment.sub_seed(seed, 1 + slot))
      for slot in slots])
  applied = draws < tf.gather(probability, chosen)
  # Index len(names) is "no op".
  indices = tf.where(applied, tf.gather(op_index, chosen), len(names))
  op_seeds = tf.stack([augment.sub_seed(seed, 1 + len(slots) + slot)
                       for slot in slots])
  return _apply_in_turn(image, names, indices, tf.gather(argument, chosen),
                        op_seeds)


def randaugment(image: tf.Tensor, seed: tf.Tensor, *, num_layers: int,
                magnitude: int) -> tf.Tensor:
  """RandAugment: `num_layers` ops drawn uniformly (with replacement).

  Each drawn op is always applied at the fixed `magnitude` (TPU-AA samples a
  probability per op but never uses it, docs/reference.md §7.4).
  """
  if num_layers == 0:
    return image
  arguments = np.array(
      [op_argument(name, float(magnitude),
                   translate_const=RANDAUGMENT_TRANSLATE_CONST,
                   cutout_const=RANDAUGMENT_CUTOUT_CONST) or 0.0
       for name in RANDAUGMENT_OPS], np.float32)
  layers = range(num_layers)
  indices = tf.stack([
      tf.random.stateless_uniform([], augment.sub_seed(seed, layer), minval=0,
                                  maxval=len(RANDAUGMENT_OPS), dtype=tf.int32)
      for layer in layers])
  op_seeds = tf.stack([augment.sub_seed(seed, num_layers + layer)
                       for layer in layers])
  return _apply_in_turn(image, RANDAUGMENT_OPS, indices,
                        tf.gather(arguments, indices), op_seeds)
