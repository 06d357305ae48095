"""steps.py stays pure JAX, and its compiler options keep results.

(The steps' behaviour is tested end to end in train_lib_test.py.)
"""

import subprocess
import sys

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from efficientnet_jax import steps
from tests import models_test


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

  def test_step_compiler_options_keep_the_logits(self):
    # Wider vectors may only reorder float32 sums: every block type of B0
    # (32 px) gives the default compilation's logits to float32 rounding.
    model, variables = models_test.tiny_model(), models_test.tiny_variables()
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))

    def logits(variables, images):
      return model.apply(variables, images, train=False)

    default = jax.jit(logits)(variables, images)
    options = steps.step_compiler_options()
    tuned = jax.jit(logits, compiler_options=options)(variables, images)
    np.testing.assert_allclose(tuned, default, rtol=1e-5,
                               atol=1e-5 * float(np.abs(default).max()))

  def test_step_compiler_options_keep_the_train_gradients(self):
    # The same for the train step: loss, BN statistics and gradients, with
    # every projection stage recomputed so that the hand-written gradients
    # (depthwise, swish, recomputation) all run under the wider vectors.
    model = models_test.tiny_model(recompute_min_bytes=0)
    variables = models_test.tiny_variables()
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    weights = jax.random.normal(jax.random.key(2), (4, 10))

    def loss(params):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']},
          images, train=True, rngs={'dropout': jax.random.key(3)},
          mutable=['batch_stats'])
      return jnp.sum(logits * weights), updates

    value_and_grad = jax.value_and_grad(loss, has_aux=True)
    default = jax.jit(value_and_grad)(variables['params'])
    tuned = jax.jit(value_and_grad,
                    compiler_options=steps.step_compiler_options())(
                        variables['params'])
    for got, want in zip(jax.tree.leaves(tuned), jax.tree.leaves(default)):
      np.testing.assert_allclose(got, want, rtol=1e-4,
                                 atol=1e-5 * float(np.abs(want).max()))


if __name__ == '__main__':
  absltest.main()
