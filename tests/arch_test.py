"""Tests for efficientnet_jax.arch: the published numbers, to the unit."""

import collections

from absl.testing import absltest
from absl.testing import parameterized

from efficientnet_jax import arch

# docs/reference.md §2.5: repeats x out-channels per stage, stem and head widths.
STAGE_TABLE = {
    'b0': (32, '1x16 2x24 2x40 3x80 3x112 4x192 1x320', 1280),
    'b1': (32, '2x16 3x24 3x40 4x80 4x112 5x192 2x320', 1280),
    'b2': (32, '2x16 3x24 3x48 4x88 4x120 5x208 2x352', 1408),
    'b3': (40, '2x24 3x32 3x48 5x96 5x136 6x232 2x384', 1536),
    'b4': (48, '2x24 4x32 4x56 6x112 6x160 8x272 2x448', 1792),
    'b5': (48, '3x24 5x40 5x64 7x128 7x176 9x304 3x512', 2048),
    'b6': (56, '3x32 6x40 6x72 8x144 8x200 11x344 3x576', 2304),
    'b7': (64, '4x32 7x48 7x80 10x160 10x224 13x384 4x640', 2560),
    'b8': (72, '4x32 8x56 8x88 11x176 11x248 15x424 4x704', 2816),
    'l2': (136, '6x72 11x104 11x176 16x344 16x480 22x824 6x1376', 5504),
    # docs/reference.md §4.1: Lite keeps stem 32 / head 1280 and one block in stages 1, 7.
    'lite0': (32, '1x16 2x24 2x40 3x80 3x112 4x192 1x320', 1280),
    'lite1': (32, '1x16 3x24 3x40 4x80 4x112 5x192 1x320', 1280),
    'lite2': (32, '1x16 3x24 3x48 4x88 4x120 5x208 1x352', 1280),
    'lite3': (32, '1x24 3x32 3x48 5x96 5x136 6x232 1x384', 1280),
    'lite4': (32, '1x24 4x32 4x56 6x112 6x160 8x272 1x448', 1280),
}

# docs/reference.md §3: our independent MAC count (G) and the paper's Table 2 FLOPs.
MACS = {'b0': 0.386, 'b1': 0.687, 'b2': 0.994, 'b3': 1.827, 'b4': 4.394,
        'b5': 10.266, 'b6': 19.068, 'b7': 37.746, 'b8': 62.597, 'l2': 475.7}
PAPER_FLOPS = {'b0': 0.39, 'b1': 0.70, 'b2': 1.0, 'b3': 1.8, 'b4': 4.2,
               'b5': 9.9, 'b6': 19, 'b7': 37}

# docs/reference.md §1.2: B0 block by block (k, s, in, mid, se, out, skip).
B0_BLOCKS = [
    (3, 1, 32, 32, 8, 16, False), (3, 2, 16, 96, 4, 24, False),
    (3, 1, 24, 144, 6, 24, True), (5, 2, 24, 144, 6, 40, False),
    (5, 1, 40, 240, 10, 40, True), (3, 2, 40, 240, 10, 80, False),
    (3, 1, 80, 480, 20, 80, True), (3, 1, 80, 480, 20, 80, True),
    (5, 1, 80, 480, 20, 112, False), (5, 1, 112, 672, 28, 112, True),
    (5, 1, 112, 672, 28, 112, True), (5, 2, 112, 672, 28, 192, False),
    (5, 1, 192, 1152, 48, 192, True), (5, 1, 192, 1152, 48, 192, True),
    (5, 1, 192, 1152, 48, 192, True), (3, 1, 192, 1152, 48, 320, False),
]


def stage_layout(spec: arch.ArchSpec) -> str:
  repeats = collections.Counter(block.stage for block in spec.blocks)
  widths = {block.stage: block.out_filters for block in spec.blocks}
  return ' '.join(f'{repeats[s]}x{widths[s]}' for s in sorted(repeats))


class RoundingTest(parameterized.TestCase):

  @parameterized.parameters(
      (32, 1.0, 32), (32, 1.1, 32), (40, 1.1, 48), (80, 1.1, 88),
      (112, 1.1, 120), (192, 1.1, 208), (320, 1.1, 352), (1280, 1.1, 1408),
      (16, 1.2, 24), (24, 1.4, 32), (16, 4.3, 72), (1280, 4.3, 5504),
      (16, 0.5, 8), (3, 1.0, 8))
  def test_round_filters(self, filters, width, expected):
    self.assertEqual(arch.round_filters(filters, width), expected)

  def test_round_filters_never_drops_more_than_ten_percent(self):
    # 0.9 rule: 20 * 1.1 = 22 rounds to 24, not 16; 12 * 1.0 -> 16 (halves up).
    self.assertEqual(arch.round_filters(20, 1.1), 24)
    self.assertEqual(arch.round_filters(12, 1.0), 16)

  @parameterized.parameters((1, 1.1, 2), (2, 1.1, 3), (4, 3.1, 13),
                            (3, 1.0, 3), (1, 5.3, 6))
  def test_round_repeats_is_ceil(self, repeats, depth, expected):
    self.assertEqual(arch.round_repeats(repeats, depth), expected)


class PresetTest(parameterized.TestCase):

  @parameterized.named_parameters((name, name) for name in STAGE_TABLE)
  def test_stage_layout_matches_reference(self, variant):
    stem, layout, head = STAGE_TABLE[variant]
    spec = arch.spec_for(variant)
    self.assertEqual(spec.stem_filters, stem)
    self.assertEqual(stage_layout(spec), layout)
    self.assertEqual(spec.head_filters, head)

  @parameterized.named_parameters((name, name) for name in MACS)
  def test_macs_match_independent_count_within_one_percent(self, variant):
    macs = arch.count_macs(arch.spec_for(variant)) / 1e9
    self.assertAlmostEqual(macs / MACS[variant], 1.0, delta=0.01)

  @parameterized.named_parameters((name, name) for name in PAPER_FLOPS)
  def test_macs_match_paper_within_six_percent(self, variant):
    macs = arch.count_macs(arch.spec_for(variant)) / 1e9
    self.assertAlmostEqual(macs / PAPER_FLOPS[variant], 1.0, delta=0.06)

  def test_b0_blocks_match_reference_table(self):
    spec = arch.spec_for('b0')
    got = [(b.kernel_size, b.stride, b.in_filters, b.mid_filters, b.se_filters,
            b.out_filters, b.has_skip) for b in spec.blocks]
    self.assertEqual(got, B0_BLOCKS)

  def test_drop_path_rate_is_linear_in_global_block_index(self):
    spec = arch.spec_for('b0')
    self.assertEqual([b.drop_path_rate for b in spec.blocks],
                     [0.2 * i / 16 for i in range(16)])

  def test_lite_has_no_se_and_relu6(self):
    spec = arch.spec_for('lite2')
    self.assertTrue(all(b.se_filters == 0 for b in spec.blocks))
    self.assertEqual(spec.activation, 'relu6')
    self.assertEqual(spec.mean_rgb, (127.0, 127.0, 127.0))
    self.assertEqual(spec.resize_method, 'bilinear')

  def test_published_table_is_not_the_rule(self):
    # docs/reference.md §2.3: B4 is not alpha**4 / beta**4 / 224 * gamma**4.
    b4 = arch.spec_for('b4')
    width, depth, resolution = arch.compound_coefficients(4)
    self.assertEqual((b4.width_coefficient, b4.depth_coefficient,
                      b4.resolution), (1.4, 1.8, 380))
    self.assertNotAlmostEqual(width, 1.4, places=2)
    self.assertNotAlmostEqual(depth, 1.8, places=2)
    self.assertEqual(resolution, 392)

  @parameterized.parameters(('b1', 0.0, 0.52, 0.49), ('b2', 1.0, 1.0, 1.07),
                            ('b4', 3.53, 3.22, 3.78), ('l2', 15.30, 9.15, 9.11))
  def test_implied_phi(self, variant, width, depth, resolution):
    phi = arch.implied_phi(arch.PRESETS[variant])
    self.assertAlmostEqual(phi['width'], width, delta=0.01)
    self.assertAlmostEqual(phi['depth'], depth, delta=0.01)
    self.assertAlmostEqual(phi['resolution'], resolution, delta=0.01)


class RuleTest(parameterized.TestCase):

  @parameterized.parameters((0, 224), (1, 256), (2, 296), (2.5, 316),
                            (7, 596))
  def test_resolution_is_a_multiple_of_four(self, phi, resolution):
    self.assertEqual(arch.compound_coefficients(phi)[2], resolution)

  def test_phi_variant_scales_width_and_depth(self):
    spec = arch.spec_for('phi=2.5')
    self.assertEqual(spec.name, 'efficientnet-phi2.5')
    self.assertAlmostEqual(spec.width_coefficient, 1.1**2.5)
    self.assertAlmostEqual(spec.depth_coefficient, 1.2**2.5)
    self.assertEqual(spec.stem_filters, arch.round_filters(32, 1.1**2.5))
    self.assertEqual(spec.dropout_rate, 0.3)

  def test_phi_zero_is_b0(self):
    rule, table = arch.spec_for('phi=0'), arch.spec_for('b0')
    self.assertEqual(rule.blocks, table.blocks)
    self.assertEqual(rule.resolution, table.resolution)

  def test_phi_override_on_a_preset_switches_to_the_rule(self):
    config = arch.parse_variant('b0')
    config['phi'] = 1.0
    self.assertEqual(arch.resolve(config).resolution, 256)

  def test_resolution_and_dropout_overrides(self):
    spec = arch.spec_for('b0', resolution=64, dropout_rate=0.1)
    self.assertEqual((spec.resolution, spec.dropout_rate), (64, 0.1))


class BadInputTest(absltest.TestCase):

  def test_unknown_variant(self):
    with self.assertRaisesRegex(ValueError, "Unknown EfficientNet variant 'b9'"):
      arch.spec_for('b9')

  def test_negative_phi(self):
    with self.assertRaisesRegex(ValueError, 'phi must be >= 0'):
      arch.spec_for('phi=-1')

  def test_unknown_override(self):
    with self.assertRaisesRegex(ValueError, 'Unknown model option'):
      arch.spec_for('b0', width=2.0)

  def test_bad_block_string(self):
    with self.assertRaisesRegex(ValueError, 'Bad block string'):
      arch.decode_block_string('r1_k3_s12_e1_i32_o16')


if __name__ == '__main__':
  absltest.main()
