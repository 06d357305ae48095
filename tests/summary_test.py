"""Tests for the preset summary (python -m efficientnet_jax.summary)."""

import json
import subprocess
import sys

from absl.testing import absltest

from efficientnet_jax import summary


class SummaryTest(absltest.TestCase):

  def test_rows_give_exact_params_and_paper_ratio(self):
    row = summary.preset_row('b3')
    self.assertEqual(row['params'], 12_233_232)
    self.assertEqual(row['resolution'], 300)
    self.assertAlmostEqual(row['gmacs_vs_paper'], 1.827 / 1.8, delta=1e-3)
    self.assertAlmostEqual(row['phi_width'], 1.91, delta=0.01)

  def test_new_families_beside_their_published_figures(self):
    row = summary.preset_row('v2-s')
    self.assertEqual((row['family'], row['params'], row['resolution']),
                     ('v2', 21_458_488, 384))
    self.assertAlmostEqual(row['gmacs_vs_paper'], 8.366 / 8.4, delta=1e-3)
    self.assertEqual(summary.preset_row('edgetpu-s')['paper_params'], 5.44e6)

  def test_json_output_is_one_parseable_list(self):
    output = subprocess.run(
        [sys.executable, '-m', 'efficientnet_jax.summary', '--json',
         '--variants=b0,lite0'], check=True, capture_output=True, text=True)
    rows = json.loads(output.stdout.strip().splitlines()[-1])
    self.assertEqual([(r['variant'], r['params']) for r in rows],
                     [('b0', 5_288_548), ('lite0', 4_652_008)])
    table = summary.format_table(rows)
    self.assertIn('| b0 | 1.0 | 1.0 | 224 | 0.2 | 5,288,548 | 0.386 |', table)


if __name__ == '__main__':
  absltest.main()
