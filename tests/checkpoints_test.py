"""Tests for checkpoints.py: topology-independent reads, damaged and foreign steps."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from efficientnet_jax import checkpoints
from efficientnet_jax import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = dict(source='test')

SAVE_SHARDED = '''
import os, sys
os.environ['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=8 '
                           '--xla_cpu_collective_call_terminate_timeout_seconds=600')
import jax, jax.numpy as jnp
from efficientnet_jax import checkpoints
mesh = jax.make_mesh((8,), ('data',))
P = jax.sharding.PartitionSpec
split = jax.sharding.NamedSharding(mesh, P('data'))
replicated = jax.sharding.NamedSharding(mesh, P())
state = dict(step=jnp.int32(3),
             params=dict(w=jax.device_put(jnp.arange(16.).reshape(8, 2), split)),
             batch_stats=dict(m=jax.device_put(jnp.ones(3), replicated)),
             opt_state=dict(nu=jax.device_put(jnp.zeros((8, 2)), split)))
checkpoints.save(sys.argv[1], state, dict(source='8 devices'), step=3)
'''


def state(value=1.0):
  return dict(step=jnp.int32(0), params=dict(w=jnp.full((4, 2), value)),
              batch_stats=dict(m=jnp.zeros(2)),
              opt_state=dict(nu=jnp.ones((4, 2))), ema_params=None)


def test_a_checkpoint_sharded_over_8_devices_reads_on_1(tmp_path):
  directory = str(tmp_path / 'ckpt')
  subprocess.run([sys.executable, '-c', SAVE_SHARDED, directory], cwd=ROOT,
                 env=dict(os.environ, PYTHONPATH=ROOT), check=True,
                 capture_output=True)
  restored, meta = checkpoints.restore_raw(directory, keys=None)
  assert meta == dict(source='8 devices')
  np.testing.assert_array_equal(restored['params']['w'],
                                np.arange(16.).reshape(8, 2))
  assert isinstance(restored['opt_state']['nu'], np.ndarray)
  assert int(restored['step']) == 3


def test_eval_reads_no_optimizer_state(tmp_path):
  directory = str(tmp_path / 'ckpt')
  checkpoints.save(directory, state(), META)
  restored, _ = checkpoints.restore_raw(directory)
  assert 'opt_state' not in restored and 'params' in restored
  variables, _ = checkpoints.load_variables(directory)
  assert set(variables) == {'params', 'batch_stats'}


def data_files(directory, step):
  """The array data files of one step (tensorstore OCDBT)."""
  root = os.path.join(directory, str(step), checkpoints.STATE)
  found = []
  for parent, _, names in os.walk(root):
    for name in names:
      path = os.path.join(parent, name)
      if os.sep + 'd' + os.sep in path + os.sep and os.path.getsize(path):
        found.append(path)
  return found


def truncate(path):
  with open(path, 'r+b') as f:
    f.truncate(max(0, os.path.getsize(path) // 3))


@pytest.mark.parametrize('damage', ['data', 'metadata', 'meta', 'foreign'])
def test_a_damaged_or_foreign_step_is_one_line_naming_directory_and_step(
    tmp_path, damage):
  directory = str(tmp_path / 'ckpt')
  checkpoints.save(directory, state(), META, step=5)
  step_dir = os.path.join(directory, '5')
  if damage == 'data':
    for path in data_files(directory, 5):
      truncate(path)
  elif damage == 'metadata':
    truncate(os.path.join(step_dir, checkpoints.STATE, '_METADATA'))
  elif damage == 'meta':
    truncate(os.path.join(step_dir, checkpoints.META, 'metadata'))
  else:  # Another program's orbax checkpoint: one item named 'default'.
    directory = str(tmp_path / 'foreign')
    with ocp.CheckpointManager(directory) as mngr:
      mngr.save(5, args=ocp.args.StandardSave(dict(x=jnp.ones(2))))
      mngr.wait_until_finished()
  with pytest.raises(errors.ConfigError) as raised:
    checkpoints.restore_raw(directory, keys=None)
  message = str(raised.value)
  print(message)
  assert f'step 5 in {directory}' in message, message
  assert '\n' not in message and len(message) < 600, message


def test_resume_sets_damaged_steps_aside_and_falls_back(tmp_path):
  directory = str(tmp_path / 'ckpt')
  checkpoints.save(directory, state(1.0), META, step=3)
  checkpoints.save(directory, state(2.0), META, step=6)
  for path in data_files(directory, 6):
    truncate(path)
  assert checkpoints.prepare_resume(directory) == 3
  assert checkpoints.latest_step(directory) == 3
  assert os.path.isdir(os.path.join(directory, 'damaged_6'))
  restored, _ = checkpoints.restore_raw(directory)
  np.testing.assert_array_equal(restored['params']['w'], np.ones((4, 2)))
  # Step 6 can be written again.
  checkpoints.save(directory, state(3.0), META, step=6)
  assert checkpoints.latest_step(directory) == 6


def test_every_step_damaged_is_refused(tmp_path):
  directory = str(tmp_path / 'ckpt')
  checkpoints.save(directory, state(), META, step=2)
  for path in data_files(directory, 2):
    truncate(path)
  with pytest.raises(checkpoints.CheckpointError,
                     match='No intact checkpoint step in'):
    checkpoints.prepare_resume(directory)


def test_missing_directory_and_step(tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint directory'):
    checkpoints.restore_raw(str(tmp_path / 'none'))
  with pytest.raises(FileNotFoundError, match='holds no complete checkpoint'):
    checkpoints.restore_raw(str(tmp_path))
  directory = str(tmp_path / 'ckpt')
  checkpoints.save(directory, state(), META, step=1)
  with pytest.raises(FileNotFoundError, match=r'has no checkpoint step 9; it '
                     r'has \[1\]'):
    checkpoints.restore_raw(directory, 9)
