"""steps.py stays pure JAX: a process that only runs steps carries no TF.

(The steps' behaviour is tested end to end in train_lib_test.py.)
"""

import subprocess
import sys

from absl.testing import absltest


class StepsTest(absltest.TestCase):

  def test_importing_the_steps_loads_no_tensorflow(self):
    # TensorFlow is 0.6 GB of resident memory, which benchmarks/throughput.py
    # would otherwise count against our train step.
    out = subprocess.run(
        [sys.executable, '-c', 'import sys; from efficientnet_jax import steps;'
         ' print(sorted(m for m in sys.modules if m.startswith("tensorflow")'
         ' or m == "clu.metric_writers"))'],
        check=True, capture_output=True, text=True).stdout
    self.assertEqual(out.strip(), '[]')


if __name__ == '__main__':
  absltest.main()
