"""Tests for the Flax network: exact sizes, train/eval behaviour, bad input."""

import dataclasses
import functools
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import common
import efficientnet_jax
from efficientnet_jax import arch
from efficientnet_jax import checkpoints
from efficientnet_jax import execution
from efficientnet_jax import layers
from efficientnet_jax import models
from tests import tiny

# docs/reference.md §3 and §4.1: trainable parameters with 1000 classes (TF official =
# timm = Keras "trainable"); BN moving statistics are not parameters.
TRAINABLE_PARAMS = {
    'b0': 5_288_548, 'b1': 7_794_184, 'b2': 9_109_994, 'b3': 12_233_232,
    'b4': 19_341_616, 'b5': 30_389_784, 'b6': 43_040_704, 'b7': 66_347_960,
    'b8': 87_413_142, 'l2': 480_309_308,
    'lite0': 4_652_008, 'lite1': 5_416_680, 'lite2': 6_092_072,
    'lite3': 8_197_096, 'lite4': 13_006_568,
    # docs/reference.md §10.4: google/automl effnetv2_model_test.py totals less
    # BN statistics = timm = Keras trainable; §10.5: timm's tf_efficientnet_e*
    # (1000 classes).
    'v2-b0': 7_139_704, 'v2-b1': 8_141_052, 'v2-b2': 10_096_086,
    'v2-b3': 14_358_406, 'v2-s': 21_458_488, 'v2-m': 54_139_356,
    'v2-l': 118_515_272, 'v2-xl': 208_119_808,
    'edgetpu-s': 5_438_392, 'edgetpu-m': 6_899_496, 'edgetpu-l': 10_589_712,
}
# docs/reference.md §3: Keras "Total params" = trainable + BN mean/var + 7 (its input
# Normalization layer's mean, variance and count).
KERAS_TOTAL = {'b0': 5_330_571, 'b3': 12_320_535, 'b7': 66_658_687}


def eval_fn(model):
  return jax.jit(functools.partial(model.apply, train=False))


def train_fn(model):
  """Compiled train-mode logits for (variables, images, dropout key)."""
  def logits(variables, images, key):
    return model.apply(variables, images, train=True, rngs={'dropout': key},
                       mutable=['batch_stats'])[0]
  return jax.jit(logits)


def module_options(options):
  """EfficientNet fields from options, execution fields resolved into one
  Execution for this backend."""
  options = dict(options)
  fields = {k: options.pop(k) for k in execution.FIELDS if k in options}
  if fields:
    options['execution'] = execution.resolve(fields)
  return options


def tiny_model(**options):
  """B0 layout at 32 px: every block type, compiled in seconds."""
  return models.EfficientNet(arch.spec_for('b0', resolution=32), num_classes=10,
                             **module_options(options))


@functools.cache
def tiny_variables():
  """Variables of tiny_model; padding, dtype and BN options share them."""
  return models.init_variables(tiny_model(), jax.random.key(0))


@functools.cache
def b0_variables():
  """B0 with 1000 classes (shapes do not depend on the resolution)."""
  return models.init_variables(models.EfficientNet(arch.spec_for('b0')),
                               jax.random.key(0))


class SizeTest(parameterized.TestCase):

  @parameterized.named_parameters((name, name) for name in TRAINABLE_PARAMS)
  def test_trainable_parameters_match_reference(self, variant):
    variables = models.abstract_variables(
        models.EfficientNet(arch.spec_for(variant)))
    self.assertEqual(models.count_params(variables['params']),
                     TRAINABLE_PARAMS[variant])

  @parameterized.named_parameters((name, name) for name in KERAS_TOTAL)
  def test_keras_total_counts_bn_statistics(self, variant):
    variables = models.abstract_variables(
        models.EfficientNet(arch.spec_for(variant)))
    self.assertEqual(models.count_params(variables) + 7, KERAS_TOTAL[variant])

  def test_b7_output_shape_by_shape_evaluation(self):
    model = models.EfficientNet(arch.spec_for('b7'))
    variables = models.abstract_variables(model)
    images = jax.ShapeDtypeStruct((2, 600, 600, 3), jnp.float32)
    logits = jax.eval_shape(
        functools.partial(model.apply, train=False), variables, images)
    self.assertEqual((logits.shape, logits.dtype), ((2, 1000), jnp.float32))

  # The last block's width at each stride and the head's, per family
  # (docs/reference.md §1.1 B0/Lite0 table; §10 V2-B0, V2-S, EdgeTPU-S tables).
  @parameterized.named_parameters(
      ('b0', 'b0', (16, 24, 40, 112, 320, 1280)),
      ('lite0', 'lite0', (16, 24, 40, 112, 320, 1280)),
      ('edgetpu_s', 'edgetpu-s', (24, 32, 48, 144, 192, 1280)),
      ('v2_b0', 'v2-b0', (16, 32, 48, 112, 192, 1280)),
      ('v2_s', 'v2-s', (24, 48, 64, 160, 256, 1280)),
  )
  def test_endpoints_at_strides_2_to_32(self, variant, channels):
    model = models.EfficientNet(arch.spec_for(variant), include_top=False)
    variables = models.abstract_variables(model)
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    endpoints = jax.eval_shape(
        functools.partial(model.apply, train=False), variables, images)
    shapes = {name: value.shape for name, value in endpoints.items()}
    names = ('stride_2', 'stride_4', 'stride_8', 'stride_16', 'stride_32',
             'features')
    sizes = (112, 56, 28, 14, 7, 7)
    self.assertEqual(shapes, {
        name: (1, size, size, width)
        for name, size, width in zip(names, sizes, channels)})
    self.assertNotIn('classifier', variables['params'])


# docs/reference.md §10.4: google/automl effnetv2_model_test.py count_params,
# which counts the BN moving statistics too.
OFFICIAL_V2_TOTAL = {'v2-b0': 7_200_312, 'v2-s': 21_612_360}


def small_v2_and_edgetpu_spec():
  """V2-B0's first four blocks (Fused-MBConv, e1 and e4, strides 1 and 2),
  then EdgeTPU-S's first three (fused expansion, noskip, stride 2, skip):
  every fused form, compiled in seconds."""
  v2 = arch.spec_for('v2-b0', resolution=32)
  edge = arch.spec_for('edgetpu-s').blocks[:3]
  edge = [dataclasses.replace(b, stage=b.stage + 4) for b in edge]
  # The EdgeTPU blocks read V2's 48 channels where they expect the stem's.
  edge[0] = dataclasses.replace(edge[0], in_filters=48)
  return dataclasses.replace(v2, blocks=(*v2.blocks[:4], *edge))


class FusedBlocksTest(parameterized.TestCase):

  @parameterized.named_parameters((v, v) for v in OFFICIAL_V2_TOTAL)
  def test_official_v2_totals_count_bn_statistics(self, variant):
    del self
    variables = models.abstract_variables(
        models.EfficientNet(arch.spec_for(variant)))
    assert models.count_params(variables) == OFFICIAL_V2_TOTAL[variant]

  def test_edgetpu_official_head_of_1001_classes(self):
    # TPU-EDGE: 1001 classes, label 0 = background (docs/reference.md §10.5).
    variables = models.abstract_variables(
        models.EfficientNet(arch.spec_for('edgetpu-s'), num_classes=1001))
    self.assertEqual(models.count_params(variables['params']), 5_439_673)

  def test_parameter_tree_of_each_block_type(self):
    spec = small_v2_and_edgetpu_spec()
    params = models.abstract_variables(
        models.EfficientNet(spec, num_classes=10))['params']
    shapes = lambda name: {k: v['kernel'].shape for k, v in
                           params[name].items() if 'kernel' in v}
    self.assertEqual(shapes('blocks_1_0'), {'project_conv': (3, 3, 32, 16)})
    self.assertEqual(shapes('blocks_2_0'), {'expand_conv': (3, 3, 16, 64),
                                            'project_conv': (1, 1, 64, 32)})
    self.assertEqual(shapes('blocks_5_0'), {'expand_conv': (3, 3, 48, 96),
                                            'project_conv': (1, 1, 96, 24)})

  def test_train_step_through_every_fused_form(self):
    model = models.EfficientNet(small_v2_and_edgetpu_spec(), num_classes=10)
    variables = models.init_variables(model, jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    logits = eval_fn(model)(variables, images)
    self.assertEqual(logits.shape, (2, 10))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(train_fn(model)(
        {'params': p, 'batch_stats': variables['batch_stats']}, images,
        jax.random.key(2)))))(variables['params'])
    self.assertTrue(all(bool(jnp.all(jnp.isfinite(g)))
                        for g in jax.tree.leaves(grads)))
    self.assertGreater(
        float(jnp.abs(grads['blocks_5_0']['expand_conv']['kernel']).sum()), 0)

  def test_edgetpu_block_strides_its_projection_not_its_expansion(self):
    # TPU-MODEL MBConvBlockWithoutDepthwise: at stride 2 the block is the
    # stride-1 block sampled at even pixels (TF 'SAME' 1x1, even sizes).
    block = arch.spec_for('edgetpu-s').blocks[1]  # 24 -> 32, stride 2.
    self.assertEqual((block.block_type, block.stride), ('fused_expand', 2))
    conv = functools.partial(nn.Conv, use_bias=False)
    module = lambda b: models.FusedExpand(b, conv, layers.BatchNorm, nn.relu)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 24))
    variables = module(block).init(jax.random.key(1), x, train=False)
    strided = module(block).apply(variables, x, train=False)
    full = module(dataclasses.replace(block, stride=1)).apply(
        variables, x, train=False)
    np.testing.assert_allclose(strided, full[:, ::2, ::2], rtol=1e-6,
                               atol=1e-6)


class InitializerTest(absltest.TestCase):

  def test_depthwise_std_uses_tf_fan_out(self):
    # docs/reference.md §1.8: TF fan_out of a depthwise kernel is kh * kw, so a 3x3
    # depthwise std is sqrt(2 / 9) = 0.471, whatever the channel count.
    kernel = layers.DepthwiseConv(3).init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 4096)))['params']['kernel']
    self.assertEqual(kernel.shape, (3, 3, 1, 4096))
    self.assertAlmostEqual(float(jnp.std(kernel)), np.sqrt(2 / 9), delta=0.01)

  def test_conv_and_dense_initializers(self):
    variables = b0_variables()
    head = variables['params']['head_conv']['kernel']  # (1, 1, 320, 1280)
    self.assertAlmostEqual(float(jnp.std(head)), np.sqrt(2 / 1280), delta=2e-3)
    # Untruncated normal: about 0.3% of draws lie beyond 3 std.
    beyond = float(jnp.mean(jnp.abs(head) > 3 * np.sqrt(2 / 1280)))
    self.assertGreater(beyond, 0.001)
    classifier = variables['params']['classifier']['kernel']
    self.assertLessEqual(float(jnp.max(jnp.abs(classifier))), 1 / np.sqrt(1000))
    self.assertGreater(float(jnp.max(jnp.abs(classifier))),
                       0.99 / np.sqrt(1000))


class BehaviourTest(absltest.TestCase):

  def test_b0_forward_backward_under_jit(self):
    model = models.EfficientNet(arch.spec_for('b0', resolution=64))
    variables = b0_variables()
    images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    labels = jnp.array([3, 7])

    @jax.jit
    def loss_and_grads(params, batch_stats):
      def loss_fn(params):
        logits, updates = model.apply(
            {'params': params, 'batch_stats': batch_stats}, images, train=True,
            rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats'])
        one_hot = jax.nn.one_hot(labels, 1000)
        loss = -jnp.mean(jnp.sum(one_hot * jax.nn.log_softmax(logits), -1))
        return loss, updates
      return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, updates), grads = loss_and_grads(variables['params'],
                                            variables['batch_stats'])
    self.assertTrue(np.isfinite(float(loss)))
    grad_leaves = jax.tree_util.tree_leaves(grads)
    self.assertTrue(all(bool(jnp.all(jnp.isfinite(g))) for g in grad_leaves))
    self.assertGreater(float(jnp.abs(grads['stem_conv']['kernel']).sum()), 0)
    # BN running statistics moved from their (0, 1) start.
    stem_mean = updates['batch_stats']['stem_bn']['mean']
    self.assertGreater(float(jnp.abs(stem_mean).sum()), 0)

  def test_eval_is_deterministic_and_train_is_stochastic(self):
    model = tiny_model()
    variables = tiny_variables()
    images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    np.testing.assert_array_equal(eval_fn(model)(variables, images),
                                  eval_fn(model)(variables, images))

    def train(seed):
      return train_fn(model)(variables, images, jax.random.key(seed))
    np.testing.assert_array_equal(train(0), train(0))
    self.assertGreater(float(jnp.abs(train(0) - train(1)).max()), 0)

  def test_inference_on_batch_chunks_keeps_the_logits(self):
    # 64 KB: chunks of 1, 2 and 4 of the 8 examples, and whole batches, by
    # the blocks' expanded activations (16^2 x 32 floats is 32 KB).
    chunked = tiny_model(inference_chunk_bytes=64 << 10)
    images = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    loops = str(jax.make_jaxpr(functools.partial(chunked.apply, train=False))(
        tiny_variables(), images)).count(' scan[')
    self.assertBetween(loops, 3, len(chunked.spec.blocks) - 1)
    np.testing.assert_allclose(
        eval_fn(chunked)(tiny_variables(), images),
        eval_fn(tiny_model(inference_chunk_bytes=0))(tiny_variables(), images),
        rtol=1e-5, atol=1e-6)

  def test_bn_running_average_uses_tf_momentum(self):
    norm = layers.BatchNorm()
    x = jax.random.normal(jax.random.key(0), (8, 4, 4, 3)) * 2 + 5
    variables = norm.init(jax.random.key(1), x, train=False)
    _, updates = norm.apply(variables, x, train=True, mutable=['batch_stats'])
    np.testing.assert_allclose(updates['batch_stats']['mean'],
                               0.01 * jnp.mean(x, axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(updates['batch_stats']['var'],
                               0.99 + 0.01 * jnp.var(x, axis=(0, 1, 2)),
                               rtol=1e-5)

  def test_drop_path_keeps_the_expectation(self):
    x = jnp.ones((20000, 1, 1, 1))
    dropped = layers.drop_path(x, 0.2, jax.random.key(0))
    values = set(np.unique(np.asarray(dropped)).round(6))
    self.assertEqual(values, {0.0, 1.25})
    self.assertAlmostEqual(float(dropped.mean()), 1.0, delta=0.02)

  def test_bfloat16_compute_keeps_float32_params_and_logits(self):
    model = tiny_model(dtype=jnp.bfloat16)
    variables = tiny_variables()
    abstract = models.abstract_variables(model)
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves(abstract)}
    self.assertEqual(dtypes, {jnp.dtype(jnp.float32)})
    logits = eval_fn(model)(variables, jnp.ones((2, 32, 32, 3)))
    self.assertEqual(logits.dtype, jnp.float32)
    reference = eval_fn(tiny_model())(variables, jnp.ones((2, 32, 32, 3)))
    np.testing.assert_allclose(logits, reference, atol=0.05, rtol=0.05)

  def test_symmetric_padding_differs_only_at_stride_two(self):
    same, symmetric = tiny_model(), tiny_model(padding='symmetric')
    variables = tiny_variables()
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    self.assertGreater(float(jnp.abs(
        eval_fn(same)(variables, images) -
        eval_fn(symmetric)(variables, images)).max()), 1e-6)
    # With odd sizes TF 'SAME' is symmetric too (docs/reference.md §1.9).
    self.assertEqual(layers.explicit_padding(33, 3, 2, 'same'), (1, 1))
    self.assertEqual(layers.explicit_padding(32, 3, 2, 'same'), (0, 1))
    self.assertEqual(layers.explicit_padding(32, 5, 2, 'same'), (1, 2))
    self.assertEqual(layers.explicit_padding(32, 5, 2, 'symmetric'), (2, 2))

  def test_grouped_bn_normalises_each_group(self):
    # 64 px: at 32 px the last stages are 1x1, where two-example statistics
    # turn float rounding into O(1) differences.
    spec = arch.spec_for('b0', resolution=64, drop_path_rate=0.0,
                         dropout_rate=0.0)
    grouped = models.EfficientNet(spec, num_classes=10, bn_group_size=2)
    whole = models.EfficientNet(spec, num_classes=10)
    variables = tiny_variables()
    images = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))

    def train_logits(model, images):
      return train_fn(model)(variables, images, jax.random.key(0))
    # Examples 0-1 form one group: they see the statistics of that pair only,
    # exactly as if the batch were those two examples.
    np.testing.assert_allclose(train_logits(grouped, images)[:2],
                               train_logits(whole, images[:2]), atol=1e-3)
    self.assertGreater(float(jnp.abs(train_logits(grouped, images)[:2] -
                                      train_logits(whole, images)[:2]).max()),
                       1e-2)


def four_block_model(**options):
  """B0's first four blocks at 64 px: no expansion, stride 2, skip, 5x5."""
  spec = arch.spec_for('b0', resolution=64)
  return models.EfficientNet(dataclasses.replace(spec, blocks=spec.blocks[:4]),
                             num_classes=10, **module_options(options))


def train_loss_grad(model):
  """Compiled (loss, batch-stat updates), gradient of a train-mode loss."""
  weights = jax.random.normal(jax.random.key(5), (8, 10))

  def loss(params, batch_stats, images):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': batch_stats}, images, train=True,
        rngs={'dropout': jax.random.key(6)}, mutable=['batch_stats'])
    return jnp.sum(logits * weights), updates

  return jax.jit(jax.value_and_grad(loss, has_aux=True))


# Between the projection inputs per example of four_block_model's blocks
# (float32): 32x32x32 and 16x16x144 are recomputed, 16x16x96 and 8x8x144 not.
SMALL_BLOCKS_BYTES = 100_000


def train_temp_bytes(model):
  """XLA's temporaries for train_loss_grad on a batch of eight 64 px images."""
  abstract = models.abstract_variables(model)
  images = jax.ShapeDtypeStruct((8, 64, 64, 3), jnp.float32)
  compiled = train_loss_grad(model).lower(
      abstract['params'], abstract['batch_stats'], images).compile()
  return compiled.memory_analysis().temp_size_in_bytes


class RecomputeTest(parameterized.TestCase):
  """MBConv's recompute-in-backward against storing every activation."""

  @parameterized.parameters(('all', 0), ('project', 0),
                            ('project', SMALL_BLOCKS_BYTES))
  def test_same_loss_statistics_and_gradients(self, policy, min_bytes):
    ours = four_block_model(recompute=policy, recompute_min_bytes=min_bytes)
    plain = four_block_model(recompute='none')
    variables = models.init_variables(ours, jax.random.key(0))
    self.assertEqual(jax.tree.structure(variables),
                     jax.tree.structure(models.init_variables(
                         plain, jax.random.key(0))))
    # Batch-norm affines away from (1, 0) so every recomputed term matters.
    keys = iter(jax.random.split(jax.random.key(1), 1000))
    params = jax.tree.map(
        lambda p: p + 0.2 * jax.random.normal(next(keys), p.shape),
        variables['params'])
    images = jax.random.normal(jax.random.key(2), (8, 64, 64, 3))
    args = (params, variables['batch_stats'], images)
    (loss, updates), grads = train_loss_grad(ours)(*args)
    (ref_loss, ref_updates), ref_grads = train_loss_grad(plain)(*args)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(updates),
                         jax.tree.leaves(ref_updates)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Float32 summation order differs; some gradients (a BN bias before
    # another BN) are zero up to that rounding, so the floor is global.
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref_grads))
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale)

  def test_backward_keeps_less_than_stored_activations(self):
    # The recomputation must run when its layer's gradient arrives; were it
    # hoisted to the start of the backward pass (as XLA:CPU schedules
    # jax.checkpoint) every recomputed map would be live at once and the
    # temporaries would exceed storing them (measured 50 -> 24 MB here).
    self.assertLess(
        train_temp_bytes(four_block_model(recompute='all',
                                          recompute_min_bytes=0)),
        0.6 * train_temp_bytes(four_block_model(recompute='none')))

  def test_only_stages_of_min_bytes_are_recomputed(self):
    def temps(min_bytes):
      return train_temp_bytes(four_block_model(
          recompute='project', recompute_min_bytes=min_bytes))

    none = train_temp_bytes(four_block_model(recompute='none'))
    every, some = temps(0), temps(SMALL_BLOCKS_BYTES)
    self.assertLess(every, some)
    self.assertLess(some, none)
    # Above the largest projection input (16 px x 144 channels) nothing is.
    self.assertEqual(temps(16 * 16 * 144 * 4 + 1), none)

  def test_unknown_policy(self):
    with self.assertRaisesRegex(ValueError, "Unknown recompute policy 'some'"):
      models.abstract_variables(four_block_model(recompute='some'))

  def test_config_spells_out_the_execution_defaults(self):
    # configs/ imports no jax, so the config spells the defaults out.
    self.assertEqual(common.execution_config().to_dict(), execution.DEFAULTS)


class AcceleratorDefaultsTest(absltest.TestCase):
  """The execution resolved for GPU/TPU, forced on CPU: plain layers."""

  def test_forward_mode_autodiff_and_same_logits_as_cpu_defaults(self):
    accelerator = execution.resolve(None, 'gpu')
    self.assertEqual((accelerator.recompute, accelerator.kernels,
                      accelerator.depthwise_impl,
                      accelerator.inference_chunk_bytes),
                     ('none', 'xla', 'grouped', 0))
    self.assertFalse(accelerator.uses_custom_gradients)
    self.assertTrue(execution.resolve(None, 'cpu').uses_custom_gradients)
    plain = tiny_model(execution=accelerator)
    variables = tiny_variables()
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    cpu_model = tiny_model(execution=execution.resolve(None, 'cpu'))
    np.testing.assert_allclose(eval_fn(plain)(variables, images),
                               eval_fn(cpu_model)(variables, images),
                               rtol=1e-5, atol=1e-5)

    params = variables['params']
    keys = iter(jax.random.split(jax.random.key(3), 1000))
    tangent = jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape),
                           params)
    cotangent = jax.random.normal(jax.random.key(4), (2, 10))

    def logits(params):
      return plain.apply({'params': params,
                          'batch_stats': variables['batch_stats']},
                         images, train=False)

    def loss(params):
      return jnp.sum(logits(params) * cotangent)

    # <J t, u> = <t, J^T u>: forward mode agrees with reverse mode.
    _, jvp_out = jax.jit(lambda t: jax.jvp(logits, (params,), (t,)))(tangent)
    grads = jax.jit(jax.grad(loss))(params)
    dot = sum(jnp.vdot(t, g) for t, g in zip(jax.tree.leaves(tangent),
                                             jax.tree.leaves(grads)))
    np.testing.assert_allclose(jnp.vdot(jvp_out, cotangent), dot, rtol=1e-4)
    # Hessian-vector product (forward over reverse), finite and nonzero.
    _, hvp = jax.jit(lambda t: jax.jvp(jax.grad(loss), (params,), (t,)))(
        tangent)
    leaves = jax.tree.leaves(hvp)
    self.assertTrue(all(bool(jnp.all(jnp.isfinite(h))) for h in leaves))
    self.assertGreater(sum(float(jnp.abs(h).sum()) for h in leaves), 0)


class ApiTest(absltest.TestCase):

  def test_create_model_round_trips_through_a_checkpoint(self):
    model, variables = efficientnet_jax.create_model(
        'b0', num_classes=10, resolution=32, rng=jax.random.key(0))
    with tempfile.TemporaryDirectory() as directory:
      checkpoints.save(directory, variables, {'source': 'test'})
      loaded_model, loaded = efficientnet_jax.create_model(
          'b0', num_classes=10, resolution=32, checkpoint=directory)
      images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
      np.testing.assert_array_equal(
          eval_fn(model)(variables, images),
          eval_fn(loaded_model)(loaded, images))
      with self.assertRaisesRegex(
          ValueError, r"does not fit efficientnet-b2 with 10 classes: tensor "
          r"\[.*\] has shape \(\d+,\) in the checkpoint but the model needs \(\d+,\)"):
        efficientnet_jax.create_model('b2', num_classes=10,
                                      checkpoint=directory)

  def test_checkpoint_normalisation_is_adopted_and_can_run_inside(self):
    model, variables = tiny_model(), tiny_variables()
    advprop = ((127.5,) * 3, (127.5,) * 3)
    with tempfile.TemporaryDirectory() as directory:
      checkpoints.save(directory, variables, {'mean_rgb': advprop[0],
                                              'std_rgb': advprop[1]})
      loaded_model, loaded = efficientnet_jax.create_model(
          'b0', num_classes=10, resolution=32, checkpoint=directory,
          normalize_input=True)
    self.assertEqual(loaded_model.normalization, advprop)
    self.assertEqual(model.normalization,
                     (arch.IMAGENET_MEAN, arch.IMAGENET_STD))
    raw = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3)) * 255
    np.testing.assert_allclose(
        eval_fn(loaded_model)(loaded, raw),
        eval_fn(model)(variables, raw / 127.5 - 1), atol=1e-5)

  def test_create_model_takes_every_module_option(self):
    # The variant errors themselves are arch_test's (create_model passes
    # arch's ValueError through); here the options create_model forwards.
    model, _ = efficientnet_jax.create_model(
        'b0', num_classes=10, resolution=32, recompute_min_bytes=0,
        recompute='all', inference_chunk_bytes=0, padding='symmetric',
        dtype='bfloat16')
    self.assertEqual((model.execution.recompute_min_bytes,
                      model.execution.recompute,
                      model.execution.inference_chunk_bytes, model.padding,
                      model.dtype),
                     (0, 'all', 0, 'symmetric', jnp.bfloat16))
    with self.assertRaisesRegex(ValueError, r"Unknown model option\(s\) "
                                r"\['recompute_bytes'\]"):
      efficientnet_jax.create_model('b0', recompute_bytes=0)

  def test_wrong_channel_count(self):
    model, variables = tiny_model(), tiny_variables()
    with self.assertRaisesRegex(ValueError, 'takes 3 RGB channels last'):
      model.apply(variables, jnp.zeros((1, 32, 32, 1)), train=False)
    with self.assertRaisesRegex(ValueError, 'takes 3 RGB channels last'):
      model.apply(variables, jnp.zeros((1, 3, 32, 32)), train=False)

  def test_endpoints_need_sizes_divisible_by_32(self):
    model, variables = tiny_model(include_top=False), tiny_variables()
    with self.assertRaisesRegex(ValueError, 'divisible by 32'):
      model.apply(variables, jnp.zeros((1, 40, 64, 3)), train=False)


def test_drop_path_off_at_eval_and_rescales_kept_paths_at_train():
  spec = arch.resolve(tiny.tiny_config().model)
  block = next(b for b in spec.blocks if b.has_skip)
  conv = functools.partial(nn.Conv, use_bias=False)
  norm = layers.BatchNorm
  depthwise = layers.DepthwiseConv

  def run(rate, train, rng):
    module = models.MBConv(dataclasses.replace(block, drop_path_rate=rate),
                           conv, depthwise, norm, nn.swish)
    x = jax.random.normal(jax.random.key(7), (16, 8, 8, block.in_filters))
    variables = module.init(jax.random.key(0), x, train=False)
    out = module.apply(variables, x, train=train, rngs={'dropout': rng},
                       mutable=['batch_stats'])
    return x, out[0]

  x, eval_a = run(0.5, False, jax.random.key(1))
  _, eval_b = run(0.5, False, jax.random.key(2))
  _, eval_none = run(0.0, False, jax.random.key(1))
  np.testing.assert_array_equal(eval_a, eval_b)
  np.testing.assert_array_equal(eval_a, eval_none)

  _, full = run(0.0, True, jax.random.key(3))
  _, dropped = run(0.5, True, jax.random.key(3))
  branch = np.asarray(full - x)
  kept = 0
  for i in range(x.shape[0]):
    if np.allclose(dropped[i], x[i]):
      continue  # Branch dropped: identity only.
    np.testing.assert_allclose(dropped[i], x[i] + branch[i] / 0.5, rtol=1e-4,
                               atol=1e-4)
    kept += 1
  assert 0 < kept < x.shape[0]


if __name__ == '__main__':
  absltest.main()
