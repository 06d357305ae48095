"""Tiny networks, states and batches derived from the demo recipe (tests only).

Shared by the test files and tests/multidevice_check.py; each compiles in a
second or two on CPU.
"""

import dataclasses

import jax

from configs import demo
from efficientnet_jax import arch
from efficientnet_jax import models
from efficientnet_jax import optim
from efficientnet_jax import steps
from tests import fake_pipeline


def tiny_config(**overrides):
  """The demo recipe shrunk: one block per stage, quarter width, 32 px."""
  config = demo.get_config()
  config.model.phi = 1.0
  config.model.alpha = 0.01  # depth 0.01 -> one block per stage.
  config.model.beta = 0.25  # width 0.25 -> 8..80 channels.
  config.model.resolution = 32
  config.batch_size = 8
  config.eval_batch_size = 8
  for key, value in overrides.items():
    config[key] = value
  return config


def two_block_model(drop_path_rate=0.0, num_classes=10):
  """The first two blocks of the tiny network (fastest to compile)."""
  spec = arch.resolve(tiny_config().model)
  spec = dataclasses.replace(spec, blocks=spec.blocks[:2], dropout_rate=0.0,
                             drop_path_rate=drop_path_rate)
  return models.EfficientNet(spec, num_classes=num_classes)


def random_ops_model(rate=0.3, num_classes=10):
  """two_block_model plus a repeat of its second block, which has an identity
  skip: drop-path (on that block) and head dropout both at `rate`."""
  spec = arch.resolve(tiny_config().model)
  second = spec.blocks[1]
  repeat = dataclasses.replace(second, index=1, stride=1,
                               in_filters=second.out_filters,
                               drop_path_rate=rate)
  assert repeat.has_skip
  spec = dataclasses.replace(spec, blocks=(spec.blocks[0], second, repeat),
                             dropout_rate=rate, drop_path_rate=rate)
  return models.EfficientNet(spec, num_classes=num_classes)


def make_state(model, learning_rate=0.05, **config_overrides):
  config = tiny_config(**config_overrides)
  tx = optim.create_optimizer(config, lambda step: learning_rate)
  return steps.create_train_state(jax.random.key(0), model=model, tx=tx)


def fixed_batch(batch_size=8, resolution=32):
  """A batch as the pipeline hands it over: uint8 [0, 255] images."""
  config = tiny_config()
  return next(fake_pipeline.create_train_iter(
      config, resolution=resolution, resize_method='bicubic',
      local_batch_size=batch_size))
