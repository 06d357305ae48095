"""Tests for sharding.py: the mesh, batch placement, per-process batch size."""

import json
import os
import subprocess
import sys

import jax
import pytest

from efficientnet_jax import errors
from efficientnet_jax import sharding


def test_batch_size_must_divide_over_devices(monkeypatch):
  monkeypatch.setattr(jax, 'device_count', lambda: 8)
  with pytest.raises(errors.ConfigError,
                     match=r'config.batch_size=12 is not divisible by the 8 '):
    sharding.local_batch_size(12, 'batch_size')
  assert sharding.local_batch_size(16, 'batch_size') == 16


def test_eight_devices_equal_one_device_with_one_compile():
  """One step on 8 (fake CPU) devices = one step on 1, BN statistics,
  dropout and drop-path included."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  result = subprocess.run([sys.executable, '-m', 'tests.multidevice_check'],
                          cwd=root, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  measured = json.loads(result.stdout.strip().splitlines()[-1])
  assert measured['devices'] == 8
  # params, batch_stats, opt_state and EMA after the step.
  assert measured['first_step_difference'] < 1e-5, measured
  assert measured['other_rng_difference'] > 1e-4, measured
  assert measured['compiles'] == 1, measured
  assert measured['shardings_preserved'], measured
  assert 'not divisible by the 8 devices' in measured['indivisible_error']
