"""Tests for network.py: a model section becomes the network, or one error."""

import pytest

from configs import imagenet
from efficientnet_jax import errors
from efficientnet_jax import network


def test_bad_model_config_is_a_config_error():
  config = imagenet.get_config('b0').model
  config.recompute = 'False'  # What --config.model.recompute=False sets.
  with pytest.raises(errors.ConfigError,
                     match=r"config.model: Unknown recompute policy 'False'"):
    network.build(config, 1000, None)
  config.recompute, config.variant = 'project', 'b99'
  with pytest.raises(errors.ConfigError,
                     match=r"config.model: Unknown EfficientNet variant 'b99'"):
    network.build(config, 1000, None)
