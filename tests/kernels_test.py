"""Every XLA:CPU kernel equals its plain formulation within float32 tolerance.

The kernels in efficientnet_jax/kernels/ exist for speed on XLA:CPU (issue 6);
these tests hold them to the plain layers, forward and gradients: the shifted
depthwise convolution against lax's grouped convolution, the 1x1 convolution
as a dot (and the stem as patches) against flax's Conv, recompute in the
backward pass against autodiff, and swish against nn.swish.
"""

import functools

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficientnet_jax import layers
from efficientnet_jax.kernels import depthwise_cpu
from efficientnet_jax.kernels import pointwise_cpu
from efficientnet_jax.kernels import recompute
from efficientnet_jax.kernels import swish as swish_kernel

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
    (dx, dk), out = grad(depthwise_cpu.depthwise_shifted)(x, kernel)
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
    chunked = depthwise_cpu._shifted_kernel_grad(  # pylint: disable=protected-access
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
    with self.assertRaisesRegex(ValueError, "use one of grouped, shifted"):
      layers.DepthwiseConv(3, impl='fft').init(jax.random.key(0), x)


class PointwiseConvTest(absltest.TestCase):

  def assert_equals_flax_conv(self, x, features, **options):
    """pointwise_cpu.Conv against nn.Conv: parameters, forward and gradients."""
    ours = pointwise_cpu.Conv(features, use_bias=False, **options)
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
      ours = pointwise_cpu.Conv(5, use_bias=False, **options)
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
        lambda *args: recompute.recompute_in_backward(fn, *args), x, params)
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
    np.testing.assert_array_equal(swish_kernel.swish(x), nn.swish(x))
    # The reference in float32 on the same inputs: ours computes the
    # derivative in float32 and rounds once, autodiff in bfloat16 rounds
    # at every step.
    expected = grad(nn.swish, x.astype(jnp.float32),
                    weights.astype(jnp.float32))
    np.testing.assert_allclose(
        np.asarray(grad(swish_kernel.swish, x, weights), np.float32), expected,
        rtol=rtol, atol=1e-6)

if __name__ == '__main__':
  absltest.main()
