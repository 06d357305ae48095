"""Where arrays live: one 'data' mesh axis over every device of every process.

The state is replicated and batches are sharded on their leading axis, so
`jax.jit` partitions each step as data parallelism and batch norm sees the
global batch (docs/reference.md §5.7).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np

from efficientnet_jax import errors

P = jax.sharding.PartitionSpec
DATA_AXIS = 'data'


def create_mesh(devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A one-axis ('data') mesh over `devices` (default: every device).

  `jax.make_mesh` orders the devices for the interconnect (ICI rings on TPU
  slices); an explicit device list is taken in the order given.
  """
  devices = jax.devices() if devices is None else list(devices)
  # Auto axes: jit propagates the shardings (no sharding-in-types).
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Every device holds the whole array (the train state, the variables)."""
  return jax.sharding.NamedSharding(mesh, P())


def data_sharded(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Split on the leading (batch) axis across the 'data' axis."""
  return jax.sharding.NamedSharding(mesh, P(DATA_AXIS))


def shard_batch(batch: Mapping[str, Any],
                mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Host (per-process) numpy arrays -> global arrays sharded on 'data'."""
  sharding = data_sharded(mesh)

  def to_global(x):
    x = np.asarray(x)
    if x.dtype == np.int64:  # The eval 'index'; jax defaults to 32 bits.
      x = x.astype(np.int32)
    return jax.make_array_from_process_local_data(sharding, x)

  return {key: to_global(x) for key, x in batch.items()}


def local_batch_size(batch_size: int, name: str) -> int:
  """This process's part of a global batch; refuses uneven splits.

  Args:
    batch_size: the global batch, config.<name>.
    name: the config field, for the error message.
  """
  devices = jax.device_count()
  if batch_size <= 0 or batch_size % devices:
    raise errors.ConfigError(
        f'config.{name}={batch_size} is not divisible by the {devices} '
        f'devices; set --config.{name} to a multiple of {devices}.')
  return batch_size // jax.process_count()
