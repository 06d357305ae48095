"""Tests for efficientnet_jax.autoaugment: each op on a crafted image, the
magnitude tables of docs/reference.md §7, reproducibility, eager == tf.data."""

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image
from PIL import ImageOps
import tensorflow as tf

from efficientnet_jax import autoaugment

SEED = tf.constant([7, 11], tf.int64)


def _random_image(height=24, width=20, low=0, high=256, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(low, high, (height, width, 3)).astype(np.uint8)


def _run(op, *args):
  return op(*[tf.constant(a) if isinstance(a, np.ndarray) else a
              for a in args]).numpy()


class PixelOpsTest(absltest.TestCase):

  def test_invert(self):
    image = _random_image()
    np.testing.assert_array_equal(_run(autoaugment.invert, image), 255 - image)

  def test_solarize_128_inverts_only_bright_pixels(self):
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    expected = np.where(image >= 128, 255 - image, image)
    np.testing.assert_array_equal(_run(autoaugment.solarize, image, 128),
                                  expected)

  def test_solarize_threshold_wraps_like_uint8(self):
    # Magnitude 10 gives threshold 256, which TF turns into uint8 0: every
    # pixel is inverted (what TPU-AA computed; docs/reference.md says "no-op").
    image = _random_image()
    np.testing.assert_array_equal(_run(autoaugment.solarize, image, 256),
                                  255 - image)
    # RandAugment M=17: threshold 435 acts as 435 - 256 = 179.
    np.testing.assert_array_equal(
        _run(autoaugment.solarize, image, 435),
        np.where(image >= 179, 255 - image, image))

  def test_solarize_add(self):
    image = _random_image()
    added = np.minimum(image.astype(int) + 110, 255).astype(np.uint8)
    np.testing.assert_array_equal(_run(autoaugment.solarize_add, image, 110),
                                  np.where(image < 128, added, image))

  def test_posterize_keeps_top_bits(self):
    image = _random_image()
    np.testing.assert_array_equal(_run(autoaugment.posterize, image, 4),
                                  image & 0xF0)
    np.testing.assert_array_equal(_run(autoaugment.posterize, image, 2),
                                  image & 0xC0)

  def test_posterize_out_of_range_bits_keep_top_bit(self):
    # TF's shift kernel clamps shifts to [0, 7]: 0 bits (v0 sub-policy 23)
    # and 11 bits (RandAugment M=28) both leave the top bit, not black.
    image = _random_image()
    for bits in (0, 11):
      np.testing.assert_array_equal(_run(autoaugment.posterize, image, bits),
                                    image & 0x80)

  def test_equalize_and_autocontrast_match_pil(self):
    image = _random_image(low=30, high=200)
    image[..., 2] = 77  # A flat channel: both ops leave it alone.
    pil = Image.fromarray(image)
    np.testing.assert_array_equal(_run(autoaugment.equalize, image),
                                  np.asarray(ImageOps.equalize(pil)))
    # AutoContrast: TPU-AA truncates where PIL rounds, so 1 apart at most.
    contrasted = _run(autoaugment.autocontrast, image)
    np.testing.assert_allclose(contrasted,
                               np.asarray(ImageOps.autocontrast(pil)), atol=1)
    pixels = image[..., :2].astype(np.float32)
    low, high = pixels.min((0, 1)), pixels.max((0, 1))
    scale = np.float32(255) / (high - low)
    stretched = np.clip(pixels * scale - low * scale, 0, 255)
    np.testing.assert_array_equal(contrasted[..., :2],
                                  stretched.astype(np.uint8))
    np.testing.assert_array_equal(contrasted[..., 2], image[..., 2])

  def test_blend_ops(self):
    image = _random_image(32, 32)
    pixels = image.astype(np.float32)
    # Brightness blends with black: truncated factor * x, clipped.
    np.testing.assert_array_equal(
        _run(autoaugment.brightness, image, 1.9),
        np.clip(np.float32(1.9) * pixels, 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(
        _run(autoaugment.brightness, image, 0.28),
        (np.float32(0.28) * pixels).astype(np.uint8))
    # Contrast blends with a flat pixel_count / 256 = 4 (the TPU-AA quirk).
    np.testing.assert_array_equal(_run(autoaugment.contrast, image, 0.0),
                                  np.full_like(image, 4))
    # Color 0 is TF's grayscale, replicated.
    gray = tf.image.rgb_to_grayscale(image).numpy()
    np.testing.assert_array_equal(_run(autoaugment.color, image, 0.0),
                                  gray.repeat(3, -1))
    np.testing.assert_array_equal(_run(autoaugment.color, image, 1.0), image)

  def test_sharpness_zero_is_smoothing_with_original_border(self):
    image = _random_image(12, 10)
    result = _run(autoaugment.sharpness, image, 0.0)
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
    pixels = image.astype(np.float32)
    smooth = sum(kernel[dy, dx] * pixels[dy:dy + 10, dx:dx + 8]
                 for dy in range(3) for dx in range(3))
    np.testing.assert_allclose(result[1:-1, 1:-1],
                               np.clip(smooth, 0, 255).astype(np.uint8),
                               atol=1)  # Float summation order.
    np.testing.assert_array_equal(result[0], image[0])
    np.testing.assert_array_equal(result[:, -1], image[:, -1])


class GeometricOpsTest(absltest.TestCase):

  def test_rotate_90_moves_mark_counter_clockwise(self):
    image = np.zeros((16, 16, 3), np.uint8)
    image[1:4, 2:5] = 255  # A mark near the top-left corner.
    rotated = _run(autoaugment.rotate, image, 90.0)
    np.testing.assert_array_equal(rotated, np.rot90(image))
    self.assertTrue((rotated[-5:-2, 1:4] == 255).all())  # Now bottom-left.
    np.testing.assert_array_equal(_run(autoaugment.rotate, image, -90.0),
                                  np.rot90(image, -1))

  def test_rotate_fills_corners_with_128(self):
    image = np.zeros((21, 21, 3), np.uint8)
    rotated = _run(autoaugment.rotate, image, 45.0)
    self.assertTrue((rotated[0, 0] == 128).all())
    self.assertTrue((rotated[10, 10] == 0).all())

  def test_shear_x_tilts_vertical_line(self):
    image = np.zeros((16, 24, 3), np.uint8)
    image[:, 12] = 255
    sheared = _run(autoaugment.shear_x, image, 0.2)
    # Output (x, y) reads input x + 0.2 y: row y shows the line at
    # 12 - round(0.2 y), and reads outside (fill 128) for x >= 24 - 0.2 y.
    expected = np.zeros_like(image)
    for y in range(16):
      source_x = np.round(np.arange(24) + 0.2 * y).astype(int)
      expected[y] = np.where(source_x >= 24, 128,
                             np.where(source_x == 12, 255, 0))[:, None]
    np.testing.assert_array_equal(sheared, expected)
    self.assertEqual(np.argmax(sheared[15, :, 0]), 12 - 3)

  def test_shear_y_is_transposed_shear_x(self):
    image = _random_image(20, 20)
    np.testing.assert_array_equal(
        _run(autoaugment.shear_y, image, -0.3),
        _run(autoaugment.shear_x, image.transpose(1, 0, 2), -0.3
             ).transpose(1, 0, 2))

  def test_translate_moves_content_and_fills_128(self):
    image = _random_image(10, 12)
    moved = _run(autoaugment.translate_x, image, 5.0)
    np.testing.assert_array_equal(moved[:, :7], image[:, 5:])
    self.assertTrue((moved[:, 7:] == 128).all())
    moved = _run(autoaugment.translate_y, image, -3.0)
    np.testing.assert_array_equal(moved[3:], image[:7])
    self.assertTrue((moved[:3] == 128).all())

  def test_cutout_fills_a_square_patch(self):
    image = _random_image(40, 40, high=100)  # No 128 anywhere.
    for salt in range(5):
      seed = tf.constant([3, salt], tf.int64)
      result = _run(autoaugment.cutout, image, 6, seed)
      rows, cols = np.nonzero((result != image).any(-1))
      top, bottom = rows.min(), rows.max() + 1
      left, right = cols.min(), cols.max() + 1
      self.assertTrue((result[top:bottom, left:right] == 128).all())
      np.testing.assert_array_equal(result[:top], image[:top])
      # Side 2 * 6, unless the square is clipped at a border.
      self.assertTrue(bottom - top == 12 or top == 0 or bottom == 40)
      self.assertTrue(right - left == 12 or left == 0 or right == 40)


class MagnitudeTest(absltest.TestCase):

  def test_policy_v0_resolved_table(self):
    # docs/reference.md §7.3, one (op, p, argument) per slot; sign drawn separately.
    expected = [
        (('Equalize', .8, 0), ('ShearY', .8, .12)),
        (('Color', .4, 1.72), ('Equalize', .6, 0)),
        (('Color', .4, .28), ('Rotate', .6, 24)),
        (('Solarize', .8, 76), ('Equalize', .4, 0)),
        (('Solarize', .4, 51), ('Solarize', .6, 51)),
        (('Color', .2, .1), ('Equalize', .8, 0)),
        (('Equalize', .4, 0), ('SolarizeAdd', .8, 33)),
        (('ShearX', .2, .27), ('Rotate', .6, 24)),
        (('Color', .6, .28), ('Equalize', 1., 0)),
        (('Invert', .4, 0), ('Rotate', .6, 0)),
        (('Equalize', 1., 0), ('ShearY', .6, .09)),
        (('Color', .4, 1.36), ('Equalize', .6, 0)),
        (('Posterize', .4, 2), ('AutoContrast', .4, 0)),
        (('Solarize', .6, 204), ('Color', .6, 1.72)),
        (('Solarize', .2, 102), ('Rotate', .8, 27)),
        (('Rotate', 1., 21), ('TranslateY', .8, 225)),
        (('ShearX', 0., 0), ('Solarize', .8, 102)),
        (('ShearY', .8, 0), ('Color', .6, .82)),
        (('Color', 1., .1), ('Rotate', .6, 6)),
        (('Equalize', .8, 0), ('Equalize', 0., 0)),
        (('Equalize', 1., 0), ('AutoContrast', .6, 0)),
        (('ShearY', .4, .21), ('SolarizeAdd', .6, 77)),
        (('Posterize', .8, 0), ('Solarize', .6, 256)),
        (('Solarize', .6, 204), ('Equalize', .6, 0)),
        (('Color', .8, 1.18), ('Rotate', .4, 15)),
    ]
    names, op_index, probability, argument = autoaugment.autoaugment_tables()
    self.assertLen(op_index, 25)
    for row, sub_policy in enumerate(expected):
      for slot, (name, p, arg) in enumerate(sub_policy):
        self.assertEqual(names[op_index[row, slot]], name, (row, slot))
        self.assertAlmostEqual(probability[row, slot], p, places=6)
        self.assertAlmostEqual(argument[row, slot], arg, places=5)

  def test_integer_arguments_truncate(self):
    # int() truncation of TPU-AA: 0.3 * 256 = 76.8 -> 76, 0.7 * 110 -> 77.
    def arg(name, magnitude):
      return autoaugment.op_argument(name, magnitude, translate_const=250,
                                 cutout_const=100)
    self.assertEqual(arg('Solarize', 3), 76)
    self.assertEqual(arg('SolarizeAdd', 7), 77)
    self.assertEqual(arg('Posterize', 6), 2)
    self.assertEqual(arg('Cutout', 5), 50)
    self.assertIsNone(arg('Invert', 9))

  def test_randaugment_table(self):
    # docs/reference.md §7.4: M = 10, 17, 28 with translate 100 px, cutout 40.
    expected = {
        10: dict(Rotate=30, ShearX=.3, TranslateY=100, Sharpness=1.9,
                 Solarize=256, Posterize=4, SolarizeAdd=110, Cutout=40),
        17: dict(Rotate=51, ShearX=.51, TranslateY=170, Sharpness=3.16,
                 Solarize=435, Posterize=6, SolarizeAdd=187, Cutout=68),
        28: dict(Rotate=84, ShearX=.84, TranslateY=280, Sharpness=5.14,
                 Solarize=716, Posterize=11, SolarizeAdd=308, Cutout=112),
    }
    for magnitude, arguments in expected.items():
      for name, value in arguments.items():
        self.assertAlmostEqual(
            autoaugment.op_argument(
                name, magnitude,
                translate_const=autoaugment.RANDAUGMENT_TRANSLATE_CONST,
                cutout_const=autoaugment.RANDAUGMENT_CUTOUT_CONST),
            value, places=5, msg=(magnitude, name))
    self.assertLen(autoaugment.RANDAUGMENT_OPS, 16)


class PolicyTest(parameterized.TestCase):

  def test_autoaugment_reproducible_and_seed_dependent(self):
    image = tf.constant(_random_image(32, 32))
    first = [autoaugment.autoaugment(image, tf.constant([1, i], tf.int64))
             for i in range(12)]
    again = [autoaugment.autoaugment(image, tf.constant([1, i], tf.int64))
             for i in range(12)]
    for a, b in zip(first, again):
      np.testing.assert_array_equal(a, b)
    distinct = {a.numpy().tobytes() for a in first}
    self.assertGreater(len(distinct), 6)

  def test_randaugment_reproducible(self):
    image = tf.constant(_random_image(32, 32))
    results = [autoaugment.randaugment(image, SEED, num_layers=2, magnitude=10)
               for _ in range(2)]
    np.testing.assert_array_equal(results[0], results[1])
    self.assertEqual(results[0].dtype, tf.uint8)
    self.assertEqual(results[0].shape, (32, 32, 3))

  def test_ops_eager_equal_tf_data(self):
    image = _random_image(24, 24)

    def all_ops(seed):
      return tf.stack([
          autoaugment.apply_op(tf.constant(image), name, 5.0, seed)
          for name in autoaugment.RANDAUGMENT_OPS] + [
              autoaugment.autoaugment(tf.constant(image), seed),
              autoaugment.randaugment(tf.constant(image), seed, num_layers=2,
                                  magnitude=9)])

    eager = all_ops(SEED).numpy()
    # No AutoGraph: the ops are plain TF, as in the input pipeline.
    all_ops_graph = tf.autograph.experimental.do_not_convert(all_ops)
    in_data = next(iter(
        tf.data.Dataset.from_tensors(SEED).map(all_ops_graph))).numpy()
    np.testing.assert_array_equal(eager, in_data)
    # Most ops changed the image (the 5.0 argument is not a no-op).
    changed = [not np.array_equal(result, image) for result in eager]
    self.assertGreaterEqual(sum(changed), 14)


if __name__ == '__main__':
  absltest.main()
