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


# docs/reference.md §10.4 (V2) and §10.5 (EdgeTPU), from REFERENCE-V2 and the
# official tables: stem, (repeats x out) per stage, head; and multiply-adds
# (G) at the eval size: the reference's independent count to the digit, and
# timm's infer_gmacs within 2%.
NEW_STAGE_TABLE = {
    'v2-b0': (32, '1x16 2x32 2x48 3x96 5x112 8x192', 1280),
    'v2-b3': (40, '2x16 3x40 3x56 5x112 7x136 12x232', 1536),
    'v2-s': (24, '2x24 4x48 4x64 6x128 9x160 15x256', 1280),
    'v2-xl': (32, '4x32 8x64 8x96 16x192 24x256 32x512 8x640', 1280),
    'edgetpu-s': (32, '1x24 2x32 4x48 5x96 4x144 2x192', 1280),
    'edgetpu-l': (40, '2x32 3x40 6x56 7x112 6x176 3x232', 1536),
}
V2_DERIVED_MACS = {'v2-b0': 0.718, 'v2-b1': 1.197, 'v2-b2': 1.698,
                   'v2-b3': 3.011, 'v2-s': 8.366, 'v2-m': 24.582,
                   'v2-l': 56.080, 'v2-xl': 93.353}
V2_MACS = {'v2-b0': 0.73, 'v2-b1': 1.21, 'v2-b2': 1.72, 'v2-b3': 3.04,
           'v2-s': 8.44, 'v2-m': 24.76, 'v2-l': 56.4, 'v2-xl': 93.85}


class FamiliesTest(parameterized.TestCase):

  @parameterized.named_parameters((v, v) for v in NEW_STAGE_TABLE)
  def test_stage_layout(self, variant):
    spec = arch.spec_for(variant)
    stem, stages, head = NEW_STAGE_TABLE[variant]
    counts = collections.Counter(b.stage for b in spec.blocks)
    widths = {b.stage: b.out_filters for b in spec.blocks}
    got = ' '.join(f'{counts[s]}x{widths[s]}' for s in sorted(counts))
    self.assertEqual((spec.stem_filters, got, spec.head_filters),
                     (stem, stages, head))

  @parameterized.named_parameters((v, v) for v in V2_MACS)
  def test_v2_macs_match_independent_count_and_timm(self, variant):
    macs = arch.count_macs(arch.spec_for(variant)) / 1e9
    self.assertEqual(round(macs, 3), V2_DERIVED_MACS[variant])
    self.assertAlmostEqual(macs / V2_MACS[variant], 1.0, delta=0.02)

  def test_edgetpu_macs_count_the_expansion_at_full_resolution(self):
    # TPU-MODEL strides the 1x1 projection, not the 3x3 expansion, so a
    # stride-2 fused stage expands at its input's resolution: 2.35 G for S,
    # where timm's port (stride on the expansion) counts 1.81.
    spec = arch.spec_for('edgetpu-s')
    self.assertAlmostEqual(arch.count_macs(spec) / 1e9, 2.352, delta=5e-4)
    strided = [b for b in spec.blocks if b.block_type == 'fused_expand' and
               b.stride == 2]
    self.assertLen(strided, 2)

  def test_block_strings_name_their_type_in_either_stride_syntax(self):
    v1 = arch.decode_block_string('r1_k3_s11_e1_i32_o16_se0.25')
    self.assertEqual((v1.stride, v1.block_type, v1.se_ratio),
                     (1, 'mbconv', 0.25))
    v2 = arch.decode_block_string('r4_k3_s2_e4_i24_o48_c1')
    self.assertEqual((v2.stride, v2.block_type, v2.se_ratio),
                     (2, 'fused_mbconv', None))
    edge = arch.decode_block_string('r1_k3_s11_e4_i24_o24_c1_noskip')
    self.assertEqual((edge.block_type, edge.id_skip), ('fused_expand', False))
    self.assertEqual(arch.decode_block_string('r1_k3_s2_e4_i8_o8_c0')
                     .block_type, 'mbconv')
    with self.assertRaisesRegex(ValueError, 'use one of c0, c1'):
      arch.decode_block_string('r1_k3_s2_e4_i8_o8_c2')

  def test_noskip_drops_the_residual(self):
    spec = arch.spec_for('edgetpu-m')  # Stage 1: two 24 -> 24 blocks, noskip.
    first_stage = [b for b in spec.blocks if b.stage == 1]
    self.assertEqual([(b.in_filters, b.out_filters, b.stride)
                      for b in first_stage], [(32, 24, 1), (24, 24, 1)])
    self.assertFalse(any(b.has_skip for b in first_stage))
    self.assertTrue(spec.blocks[3].has_skip)  # Stage 2, second block.

  def test_edgetpu_first_block_expands_its_declared_width(self):
    block = arch.spec_for('edgetpu-s').blocks[0]
    self.assertEqual((block.in_filters, block.mid_filters), (32, 96))

  def test_v2_rounds_without_the_ten_percent_rule(self):
    self.assertEqual(arch.round_filters(16, 1.2, round_limit=False), 16)
    self.assertEqual(arch.round_filters(16, 1.2), 24)
    self.assertEqual(arch.spec_for('v2-b3').blocks[0].out_filters, 16)

  def test_per_family_settings(self):
    s, b0, edge = (arch.spec_for(v) for v in ('v2-s', 'v2-b0', 'edgetpu-s'))
    self.assertEqual((s.activation, s.bn_momentum, s.mean_rgb, s.dropout_rate),
                     ('swish', 0.9, arch.V2_MEAN, 0.2))
    self.assertEqual((b0.mean_rgb, b0.resize_method),
                     (arch.IMAGENET_MEAN, 'bicubic'))
    self.assertEqual(arch.spec_for('v2-l').dropout_rate, 0.4)
    self.assertEqual((edge.activation, edge.bn_momentum, edge.mean_rgb),
                     ('relu', 0.99, arch.LITE_MEAN))
    self.assertTrue(all(b.se_filters == 0 for b in edge.blocks))
    self.assertEqual([s.name, edge.name],
                     ['efficientnetv2-s', 'efficientnet-edgetpu-s'])

  def test_phi_on_another_family(self):
    spec = arch.spec_for('v2-phi=1')
    self.assertEqual((spec.name, spec.family, spec.resolution),
                     ('efficientnetv2-phi1', 'v2', 256))


class BadInputTest(absltest.TestCase):

  def test_unknown_name_lists_the_valid_ones(self):
    with self.assertRaisesRegex(ValueError, r"'v3-s'.*b0, .*edgetpu-s, "
                                r"edgetpu-m, edgetpu-l, v2-b0, .*v2-xl"):
      arch.spec_for('v3-s')

  def test_coefficients_on_a_named_preset_are_refused(self):
    with self.assertRaisesRegex(ValueError, r'apply only with model.phi'):
      arch.spec_for('b3', alpha=1.3)
    self.assertEqual(arch.spec_for('phi=1', alpha=1.3).depth_coefficient, 1.3)


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
    with self.assertRaisesRegex(ValueError, 'Bad block string'):
      arch.decode_block_string('r1_k3_s222_e1_i32_o16')


if __name__ == '__main__':
  absltest.main()
