"""Every rewritten op equals its plain formulation within float32 tolerance.

The fast forms in layers.py exist for speed on XLA:CPU (issue 6); these tests
hold them to the plain ones, forward and gradients: the shifted depthwise
convolution against lax's grouped convolution, the 1x1 convolution as a dot
against flax's Conv, and our BatchNorm against flax.linen.BatchNorm (and its
grouped statistics against statistics computed per group by hand).
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
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


def depthwise_cases():
  for kernel in (3, 5):
    for stride in (1, 2, 3):  # 3: the input gradient's phases beyond two.
      for padding in ('same', 'symmetric'):
        for size in (8, 9):
          yield (f'k{kernel}_s{stride}_{padding}_{size}px', kernel, stride,
                 padding, size)


class DepthwiseTest(parameterized.TestCase):

  @parameterized.named_parameters(*depthwise_cases())
  def test_shifted_equals_grouped_forward_and_gradients(
      self, kernel_size, stride, padding, size):
    keys = jax.random.split(jax.random.key(kernel_size * 100 + size), 3)
    x = jax.random.normal(keys[0], (2, size, size + 1, 8))
    kernel = jax.random.normal(keys[1], (kernel_size, kernel_size, 1, 8))
    pads = layers.spatial_padding(x.shape, kernel_size, stride, padding)

    def loss(impl, x, kernel):
      out = impl(x, kernel, stride, pads)
      # A fixed random cotangent, so every output element matters.
      weights = jax.random.normal(keys[2], out.shape)
      return jnp.sum(out * weights), out

    grad = lambda impl: jax.jit(jax.grad(
        functools.partial(loss, impl), argnums=(0, 1), has_aux=True))
    (dx, dk), out = grad(layers.depthwise_shifted)(x, kernel)
    (dx_ref, dk_ref), out_ref = grad(layers.depthwise_grouped)(x, kernel)
    self.assertEqual(out.shape, out_ref.shape)
    assert_close(self, out, out_ref)
    assert_close(self, dx, dx_ref)
    assert_close(self, dk, dk_ref, atol=1e-4)  # Sums over every pixel.

  @parameterized.named_parameters(('s1', 1), ('s2', 2))
  def test_kernel_gradient_summed_over_batch_chunks(self, stride):
    # The hand-written kernel gradient scans over batch chunks when a layer
    # outgrows the cache budget; a 1-byte budget forces one example a chunk.
    keys = jax.random.split(jax.random.key(stride), 3)
    x = jax.random.normal(keys[0], (4, 9, 8, 8))
    kernel = jax.random.normal(keys[1], (3, 3, 1, 8))
    pads = layers.spatial_padding(x.shape, 3, stride, 'same')
    grad_out = jax.random.normal(
        keys[2], layers.depthwise_grouped(x, kernel, stride, pads).shape)
    _, vjp = jax.vjp(
        lambda k: layers.depthwise_grouped(x, k, stride, pads), kernel)
    padded = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    chunked = layers._shifted_kernel_grad(  # pylint: disable=protected-access
        padded, grad_out, kernel, stride, chunk_bytes=1)
    assert_close(self, chunked, vjp(grad_out)[0], atol=1e-4)

  def test_module_impls_agree(self):
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
    conv = lambda impl: layers.DepthwiseConv(3, 2, impl=impl)
    variables = conv('shifted').init(jax.random.key(1), x)
    assert_close(self, conv('shifted').apply(variables, x),
                 conv('grouped').apply(variables, x))

  def test_unknown_impl_is_refused(self):
    x = jnp.zeros((1, 4, 4, 2))
    with self.assertRaisesRegex(ValueError, "'auto', 'shifted' or 'grouped'"):
      layers.DepthwiseConv(3, impl='fft').init(jax.random.key(0), x)


class PointwiseConvTest(absltest.TestCase):

  def assert_equals_flax_conv(self, x, features, **options):
    """layers.Conv against nn.Conv: parameters, forward and gradients."""
    ours = layers.Conv(features, use_bias=False, **options)
    plain = nn.Conv(features, use_bias=False, **options)
    variables = ours.init(jax.random.key(1), x)
    # Same parameter name, shape and initial values as flax's Conv.
    assert_close(self, variables, plain.init(jax.random.key(1), x), 0, 0)
    weights = jax.random.normal(jax.random.key(2),
                                plain.apply(variables, x).shape)

    def loss(module, v, x):
      return jnp.sum(module.apply(v, x) * weights)

    assert_close(self, ours.apply(variables, x), plain.apply(variables, x))
    assert_close(self, jax.grad(functools.partial(loss, ours), (0, 1))(
        variables, x), jax.grad(functools.partial(loss, plain), (0, 1))(
            variables, x))

  def test_1x1_dot_equals_flax_conv_forward_and_gradients(self):
    x = jax.random.normal(jax.random.key(0), (2, 6, 5, 16))
    self.assert_equals_flax_conv(x, 24, kernel_size=(1, 1))

  def test_other_kernels_are_flax_conv(self):
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 3))
    for options in (dict(kernel_size=(3, 3), strides=(2, 2)),
                    dict(kernel_size=(1, 1), strides=(2, 2))):
      ours = layers.Conv(5, use_bias=False, **options)
      variables = ours.init(jax.random.key(1), x)
      np.testing.assert_array_equal(
          ours.apply(variables, x),
          nn.Conv(5, use_bias=False, **options).apply(variables, x))

  def test_few_channel_conv_as_patches_equals_flax_conv(self):
    # The stem: 3 input channels, 3x3, stride 2, explicit pads ('same' and
    # symmetric).
    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
    for pads in (((0, 1), (0, 1)), ((1, 1), (1, 1))):
      self.assert_equals_flax_conv(x, 5, kernel_size=(3, 3), strides=(2, 2),
                                   padding=pads)


class RecomputeInBackwardTest(absltest.TestCase):

  def test_value_and_gradients_equal_autodiff(self):
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (4, 5, 6))
    params = {'w': jax.random.normal(keys[1], (6,)),
              'b': jax.random.normal(keys[2], (6,))}
    grad_out = jax.random.normal(keys[3], (4, 5, 6))

    def fn(x, params):
      return jnp.tanh(x * params['w'] + params['b']) * x

    out, vjp = jax.vjp(
        lambda *args: layers.recompute_in_backward(fn, *args), x, params)
    ref_out, ref_vjp = jax.vjp(fn, x, params)
    assert_close(self, out, ref_out, 0, 0)
    assert_close(self, vjp(grad_out), ref_vjp(grad_out))


class SwishTest(parameterized.TestCase):

  @parameterized.named_parameters(('float32', jnp.float32, 1e-6),
                                  ('bfloat16', jnp.bfloat16, 8e-3))
  def test_equals_autodiff_of_nn_swish(self, dtype, rtol):
    # Far into both tails too, where the hand-written derivative is clipped.
    x = jnp.concatenate([jnp.linspace(-8, 8, 1001),
                         jnp.array([-1e4, -200, -90, -30, 30, 50, 200, 1e4])
                         ]).astype(dtype)
    weights = jax.random.normal(jax.random.key(0), x.shape, dtype)
    grad = lambda fn, x, w: jax.grad(lambda x: jnp.sum(fn(x) * w))(x)
    np.testing.assert_array_equal(layers.swish(x), nn.swish(x))
    # The reference in float32 on the same inputs: ours computes the
    # derivative in float32 and rounds once, autodiff in bfloat16 rounds
    # at every step.
    expected = grad(nn.swish, x.astype(jnp.float32),
                    weights.astype(jnp.float32))
    np.testing.assert_allclose(
        np.asarray(grad(layers.swish, x, weights), np.float32), expected,
        rtol=rtol, atol=1e-6)


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
