"""Our BatchNorm against flax.linen.BatchNorm, and its grouped statistics
against statistics computed per group by hand.
"""

import functools

from absl.testing import absltest
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficientnet_jax import layers

# float32 tolerance for sums of up to a few hundred products of O(1) values.
RTOL = 1e-5
ATOL = 1e-5


def assert_close(testcase, actual, expected, rtol=RTOL, atol=ATOL):
  del testcase
  jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=rtol, atol=atol),
      jax.tree.map(np.asarray, actual), jax.tree.map(np.asarray, expected))


class BatchNormTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), (8, 5, 5, 6))

  def test_matches_flax_batchnorm_train_and_eval(self):
    ours = layers.BatchNorm()
    flax_bn = nn.BatchNorm(momentum=0.99, epsilon=1e-3)
    variables = ours.init(jax.random.key(0), self.x, train=False)
    reference = flax_bn.init(jax.random.key(0), self.x,
                             use_running_average=True)
    assert_close(self, variables, reference, 0, 0)
    # Non-trivial affine and running statistics.
    variables = jax.tree.map(
        lambda v: v + 0.1 * jax.random.normal(jax.random.key(1), v.shape),
        variables)

    out, updates = ours.apply(variables, self.x, train=True,
                              mutable=['batch_stats'])
    ref_out, ref_updates = flax_bn.apply(variables, self.x,
                                         use_running_average=False,
                                         mutable=['batch_stats'])
    assert_close(self, out, ref_out)
    assert_close(self, updates, ref_updates)
    assert_close(self, ours.apply(variables, self.x, train=False),
                 flax_bn.apply(variables, self.x, use_running_average=True))

  def test_gradients_match_flax_batchnorm(self):
    variables = layers.BatchNorm().init(jax.random.key(0), self.x, train=False)
    weights = jax.random.normal(jax.random.key(2), self.x.shape)

    def loss(apply, params, x):
      out, _ = apply({'params': params,
                      'batch_stats': variables['batch_stats']}, x)
      return jnp.sum(out * weights)

    ours = functools.partial(layers.BatchNorm().apply, train=True,
                             mutable=['batch_stats'])
    plain = functools.partial(
        nn.BatchNorm(momentum=0.99, epsilon=1e-3).apply,
        use_running_average=False, mutable=['batch_stats'])
    assert_close(
        self,
        jax.grad(functools.partial(loss, ours), (0, 1))(variables['params'],
                                                        self.x),
        jax.grad(functools.partial(loss, plain), (0, 1))(variables['params'],
                                                         self.x),
        atol=1e-4)

  def test_grouped_statistics_equal_per_group_by_hand(self):
    bn = layers.BatchNorm(group_size=2)
    variables = bn.init(jax.random.key(0), self.x, train=False)
    out, updates = bn.apply(variables, self.x, train=True,
                            mutable=['batch_stats'])
    x = np.asarray(self.x, np.float64)
    means, variances, expected = [], [], []
    for group in np.split(x, 4):  # 8 examples, groups of 2.
      mean = group.mean(axis=(0, 1, 2))
      var = group.var(axis=(0, 1, 2))
      means.append(mean)
      variances.append(var)
      expected.append((group - mean) / np.sqrt(var + 1e-3))
    np.testing.assert_allclose(out, np.concatenate(expected), atol=1e-4)
    # Running averages move towards the mean of the group statistics.
    np.testing.assert_allclose(updates['batch_stats']['mean'],
                               0.01 * np.mean(means, axis=0), rtol=1e-5)
    np.testing.assert_allclose(updates['batch_stats']['var'],
                               0.99 + 0.01 * np.mean(variances, axis=0),
                               rtol=1e-5)

  def test_grouped_gradients_equal_plain_formulation(self):
    # Per group, against autodiff of plain jnp statistics.
    bn = layers.BatchNorm(group_size=2)
    variables = bn.init(jax.random.key(0), self.x, train=False)
    params = jax.tree.map(
        lambda v: v + 0.1 * jax.random.normal(jax.random.key(3), v.shape),
        variables['params'])
    weights = jax.random.normal(jax.random.key(2), self.x.shape)

    def ours(params, x):
      out, _ = bn.apply({'params': params,
                         'batch_stats': variables['batch_stats']}, x,
                        train=True, mutable=['batch_stats'])
      return jnp.sum(out * weights)

    def plain(params, x):
      groups = x.reshape(4, 2, *x.shape[1:])
      mean = jnp.mean(groups, axis=(1, 2, 3), keepdims=True)
      var = jnp.var(groups, axis=(1, 2, 3), keepdims=True)
      out = ((groups - mean) * jax.lax.rsqrt(var + 1e-3) * params['scale'] +
             params['bias'])
      return jnp.sum(out.reshape(x.shape) * weights)

    assert_close(self, jax.grad(ours, (0, 1))(params, self.x),
                 jax.grad(plain, (0, 1))(params, self.x), atol=1e-4)

  def test_affine_normalises_like_the_layer(self):
    for bn in (layers.BatchNorm(), layers.BatchNorm(group_size=2)):
      variables = bn.init(jax.random.key(0), self.x, train=False)
      for train in (True, False):
        apply = functools.partial(bn.apply, variables, self.x, train=train,
                                  mutable=['batch_stats'])
        out, updates = apply()
        affine, affine_updates = apply(normalize=False)
        self.assertEqual(affine.multiplier.shape,
                         (4 if bn.group_size and train else 1, 6))
        assert_close(self, layers.apply_affine(self.x, affine, jnp.float32),
                     out, 0, 0)
        assert_close(self, affine_updates, updates, 0, 0)

  def test_group_size_must_divide_batch(self):
    bn = layers.BatchNorm(group_size=3)
    variables = bn.init(jax.random.key(0), self.x, train=False)
    with self.assertRaisesRegex(ValueError, 'does not divide the batch of 8'):
      bn.apply(variables, self.x, train=True, mutable=['batch_stats'])


if __name__ == '__main__':
  absltest.main()
