"""Tests for efficientnet_jax.augment: the crop windows, fused decode-and-crop,
channel handling and resize of the official preprocessing."""

from absl.testing import absltest
import numpy as np
import tensorflow as tf

from efficientnet_jax import augment

SEED = tf.constant([7, 11], tf.int64)


def _random_image(height, width, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (height, width, 3)).astype(np.uint8)


class CropTest(absltest.TestCase):

  def test_center_crop_window(self):
    # docs/reference.md §6.2: side floor(224/256 * 375) = 328, offsets rounded up.
    window = augment.center_crop_window(tf.constant([375, 500]),
                                        resolution=224, crop_padding=32)
    np.testing.assert_array_equal(window, [24, 86, 328, 328])

  def test_random_crop_window_ranges(self):
    shape = tf.constant([300, 400])
    for salt in range(20):
      seed = tf.constant([5, salt], tf.int64)
      window = augment.random_crop_window(shape, seed, resolution=224,
                                          crop_padding=32).numpy()
      np.testing.assert_array_equal(
          window, augment.random_crop_window(shape, seed, resolution=224,
                                             crop_padding=32))
      y, x, height, width = window
      self.assertTrue(0 <= y and y + height <= 300 and x + width <= 400)
      # min_object_covered 0.1 over the whole image: area >= 10 %.
      self.assertGreaterEqual(height * width, 0.1 * 300 * 400 - 1)
      self.assertBetween(width / height, 0.7, 1.4)  # [3/4, 4/3] + rounding.

  def test_random_crop_falls_back_to_center_crop(self):
    # A 1x20 strip admits no box of area >= 8 % and aspect in [3/4, 4/3].
    shape = tf.constant([1, 20])
    np.testing.assert_array_equal(
        augment.random_crop_window(shape, SEED, resolution=224,
                                   crop_padding=32),
        augment.center_crop_window(shape, resolution=224, crop_padding=32))

  def test_jpeg_fused_crop_equals_decode_then_crop(self):
    image = _random_image(50, 60)
    jpeg = tf.io.encode_jpeg(image)
    window = tf.constant([5, 7, 30, 40])
    cropped = augment.decode_and_crop(jpeg, lambda shape: window)
    np.testing.assert_array_equal(
        cropped, tf.io.decode_jpeg(jpeg, channels=3)[5:35, 7:47])

  def test_gray_and_rgba_png_become_rgb(self):
    gray = _random_image(9, 8)[..., :1]
    decoded = augment.decode_and_crop(tf.io.encode_png(gray),
                                      lambda shape: [0, 0, shape[0], shape[1]])
    np.testing.assert_array_equal(decoded, gray.repeat(3, -1))
    rgba = np.concatenate([_random_image(9, 8), gray], -1)
    decoded = augment.decode_and_crop(tf.io.encode_png(rgba),
                                      lambda shape: [1, 2, 4, 5])
    np.testing.assert_array_equal(decoded, rgba[1:5, 2:7, :3])  # Alpha dropped.

  def test_resize_uses_tf1_kernels(self):
    # No half-pixel centres (TPU-PRE's tf.compat.v1 resize): output pixel i
    # samples input position i * in / out, so 4 -> 8 doubles a ramp.
    ramp = tf.constant(np.arange(0, 40, 10, dtype=np.uint8)[None, :, None]
                       .repeat(4, 0).repeat(3, 2))
    resized = augment.resize(ramp, 8, 'bilinear').numpy()
    self.assertEqual(resized.dtype, np.float32)
    np.testing.assert_allclose(resized[0, :, 0],
                               [0, 5, 10, 15, 20, 25, 30, 30])
    bicubic = augment.resize(ramp, 8, 'bicubic').numpy()
    self.assertEqual(bicubic.shape, (8, 8, 3))
    np.testing.assert_allclose(bicubic[0, ::2, 0], [0, 10, 20, 30],
                               atol=1e-4)

  def test_random_flip_is_seeded(self):
    image = _random_image(6, 5)
    flips = []
    for salt in range(40):
      seed = tf.constant([1, salt], tf.int64)
      flipped = augment.random_flip(image, seed).numpy()
      np.testing.assert_array_equal(flipped,
                                    augment.random_flip(image, seed))
      flips.append(np.array_equal(flipped, image[:, ::-1]))
      self.assertTrue(flips[-1] or np.array_equal(flipped, image))
    self.assertBetween(sum(flips), 10, 30)

  def test_resize_rejects_unknown_method(self):
    with self.assertRaisesRegex(ValueError, 'bilinear'):
      augment.resize(tf.zeros([4, 4, 3], tf.uint8), 8, 'lanczos')


if __name__ == '__main__':
  absltest.main()
