"""Numerical parity with Keras applications EfficientNet (issue 2).

A Keras EfficientNet built with weights=None (no download), its BN statistics,
affine parameters, biases and input Normalization randomised so that every
tensor matters, is saved, converted and run by our model on the same images:
the logits agree to 1e-4 in float32. B2 adds width/depth rounding and the
72 px input takes both the even and the odd 'same' padding paths (72 -> 36 ->
18 -> 9 -> 5 -> 3). EfficientNetV2B0 adds Fused-MBConv, V2's
rounding and its weightless input layers (their constants are the presets'
normalisation). EfficientNetV2S adds residual Fused-MBConv stages (e=1 and
e=4) and 40 blocks, which the randomisation keeps well conditioned (see
`randomised_keras_model`). The other Keras file layouts must convert to the
same parameters.
"""

import functools
import os

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # pylint: disable=g-import-not-at-top
import keras
import numpy as np
import pytest

from efficientnet_jax import arch
from efficientnet_jax import convert
from efficientnet_jax import models
from keras.src.legacy.saving import legacy_h5_format
import h5py

RESOLUTION = 72
TOLERANCE = 1e-4  # Issue 2: max |logit difference| in float32 inference.
BUILDERS = {'b0': keras.applications.EfficientNetB0,
            'b2': keras.applications.EfficientNetB2,
            'v2-b0': keras.applications.EfficientNetV2B0,
            'v2-s': keras.applications.EfficientNetV2S}


def randomised_keras_model(variant: str, seed: int) -> keras.Model:
  """A Keras EfficientNet whose every variable holds a non-default value.

  The last BN of each residual branch (`project_bn` of a block with an `add`)
  gets gamma in [0.1, 0.3], the others in [0.5, 1.5]. A branch whose output
  is as large as the trunk it is added to (gain ~1) about doubles the trunk's
  sensitivity to its input at every block: over V2-S's 35 residual blocks
  float32 rounding (1e-7) then grows to O(1) relative error in the logits,
  for Keras against us and for our float32 against our float64 alike. A
  small branch gain keeps the network as well conditioned as a trained one.
  """
  model = BUILDERS[variant](weights=None,
                            input_shape=(RESOLUTION, RESOLUTION, 3),
                            classifier_activation=None)
  names = {layer.name for layer in model.layers}
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      channels = layer.gamma.shape[0]
      branch_end = (layer.name.endswith('_project_bn') and
                    layer.name.replace('_project_bn', '_add') in names)
      gamma_range = (0.1, 0.3) if branch_end else (0.5, 1.5)
      layer.set_weights([
          rng.uniform(*gamma_range, channels),  # gamma
          rng.normal(0, 0.2, channels),  # beta
          rng.normal(0, 0.2, channels),  # moving mean
          rng.uniform(0.5, 1.5, channels),  # moving variance
      ])
    elif isinstance(layer, keras.layers.Normalization) and layer.weights:
      # (V2's Normalization holds its ImageNet mean/variance as constants.)
      # A plausible input normalisation that is not the ImageNet one.
      layer.set_weights([rng.uniform(0.3, 0.6, 3), rng.uniform(0.03, 0.08, 3),
                         np.array(10, np.int64)])
      layer.finalize_state()
    elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
      if layer.use_bias:  # SE convs and the classifier.
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, rng.normal(0, 0.2, bias.shape)])
  return model


def normalization_layer(model: keras.Model) -> keras.layers.Normalization:
  # Found by type: Keras numbers the name of each new model's layer.
  return next(layer for layer in model.layers
              if isinstance(layer, keras.layers.Normalization))


@pytest.fixture(scope='module')
def images():
  rng = np.random.default_rng(0)
  return rng.uniform(0, 255, (2, RESOLUTION, RESOLUTION, 3)).astype(np.float32)


def our_logits(converted: convert.Converted, images: np.ndarray) -> np.ndarray:
  meta = converted.meta
  model = models.from_config(meta['model'], meta['num_classes'])
  normalised = ((images - np.asarray(meta['mean_rgb'], np.float32)) /
                np.asarray(meta['std_rgb'], np.float32))
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return np.asarray(apply(converted.variables, normalised))


@pytest.mark.parametrize('variant', ['b0', 'b2', 'v2-b0', 'v2-s'])
def test_keras_logits_match(variant, images, tmp_path):
  keras_model = shared_keras_model(variant)
  path = str(tmp_path / f'{variant}.keras')
  keras_model.save(path)
  expected = np.asarray(keras_model(images, training=False))
  # The randomised network must produce varied logits, or parity means little.
  assert expected.std() > 0.1

  converted = convert.convert('keras', path, variant)
  logits = our_logits(converted, images)

  assert converted.meta['num_classes'] == 1000
  assert converted.meta['padding'] == 'same'
  difference = np.abs(logits - expected).max()
  assert difference < TOLERANCE, difference


@functools.lru_cache(maxsize=None)
def shared_keras_model(variant: str) -> keras.Model:
  """One randomised Keras model per variant for all tests of this file."""
  return randomised_keras_model(variant, seed=1)


@pytest.mark.parametrize('variant', ['b0', 'v2-b0'])
def test_keras_file_layouts_agree(variant, tmp_path):
  """.keras, Keras 3 .weights.h5, legacy weights .h5 and full .h5 agree."""
  keras_model = shared_keras_model(variant)
  paths = dict(keras=tmp_path / 'm.keras', weights=tmp_path / 'm.weights.h5',
               legacy_weights=tmp_path / 'legacy.h5',
               legacy_model=tmp_path / 'full.h5')
  keras_model.save(paths['keras'])
  keras_model.save_weights(paths['weights'])
  # The layout keras.applications publishes its ImageNet weights in.
  with h5py.File(paths['legacy_weights'], 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, keras_model)
  keras_model.save(paths['legacy_model'])

  results = {name: convert.convert('keras', str(path), variant)
             for name, path in paths.items()}
  reference = results['keras']
  for name, result in results.items():
    same = jax.tree_util.tree_map(np.array_equal, reference.variables,
                                  result.variables)
    assert all(jax.tree_util.tree_leaves(same)), name
    np.testing.assert_allclose(result.meta['mean_rgb'],
                               reference.meta['mean_rgb'], rtol=1e-6)
    np.testing.assert_allclose(result.meta['std_rgb'],
                               reference.meta['std_rgb'], rtol=1e-6)
  if variant == 'v2-b0':
    # KERAS efficientnet_v2.py: constant ImageNet mean/std, our preset's.
    np.testing.assert_allclose(reference.meta['mean_rgb'], arch.IMAGENET_MEAN,
                               rtol=1e-6)
    np.testing.assert_allclose(reference.meta['std_rgb'], arch.IMAGENET_STD,
                               rtol=1e-6)
    return
  # The Normalization's values, as mean/std on [0, 255].
  mean, variance, _ = normalization_layer(keras_model).get_weights()
  np.testing.assert_allclose(reference.meta['mean_rgb'], mean * 255, rtol=1e-6)
  np.testing.assert_allclose(reference.meta['std_rgb'],
                             np.sqrt(variance) * 255, rtol=1e-6)


def test_keras_imagenet_weights_file_records_imagenet_normalisation(tmp_path):
  """keras.applications' ImageNet .h5 stores the std in the variance slot."""
  keras_model = BUILDERS['b0'](weights=None, input_shape=(RESOLUTION,) * 2 +
                               (3,), classifier_activation=None)
  normalization_layer(keras_model).set_weights([np.array([0.485, 0.456, 0.406]),
                    np.array([0.229, 0.224, 0.225]), np.array(0, np.int64)])
  path = str(tmp_path / 'efficientnetb0.h5')
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, keras_model)

  converted = convert.convert('keras', path, 'b0')

  np.testing.assert_allclose(converted.meta['mean_rgb'], arch.IMAGENET_MEAN,
                             rtol=1e-6)
  np.testing.assert_allclose(converted.meta['std_rgb'], arch.IMAGENET_STD,
                             rtol=1e-6)
