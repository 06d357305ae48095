"""Tests for network.py: a model section becomes the network, or one error."""

import pytest

from configs import imagenet
from efficientnet_jax import errors
from efficientnet_jax import network


def test_bad_model_or_execution_config_is_a_config_error():
  config = imagenet.get_config('b0')
  config.execution.recompute = 'False'  # --config.execution.recompute=False.
  with pytest.raises(errors.ConfigError, match=r"config.execution: Unknown "
                     r"recompute policy 'False'"):
    network.build(config.model, 1000, None, execution=config.execution)
  config.model.variant = 'b99'
  with pytest.raises(errors.ConfigError,
                     match=r"config.model: Unknown EfficientNet variant 'b99'"):
    network.build(config.model, 1000, None)


def test_execution_comes_from_the_config_never_the_model_section():
  config = imagenet.get_config('b0')
  config.execution.recompute = 'all'
  # A checkpoint written before the sections were split recorded these.
  recorded = config.model.to_dict() | dict(recompute='none', dtype='float32')
  net = network.build(recorded, 10, None, execution=config.execution)
  assert (net.model.execution.recompute, net.model.dtype.name) == (
      'all', 'bfloat16')
  # The model section may carry the execution section (as eval passes it).
  carried = network.build(recorded | {'execution': config.execution}, 10,
                          None)
  assert carried.model.execution == net.model.execution
