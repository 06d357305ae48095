"""Run by train_lib_test in its own process: 8 fake CPU devices vs 1.

XLA_FLAGS must be set before jax is imported, which a pytest worker that has
already imported jax cannot do; so this script runs as a subprocess and prints
one JSON line of measurements for the test to assert on.
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import json

import jax
import numpy as np

from efficientnet_jax import optim
from efficientnet_jax import steps
from efficientnet_jax import train_lib
from tests import train_lib_test


def one_step_and_compiles(devices, batches):
  """Runs the train_and_evaluate step function on a mesh of `devices`."""
  mesh = train_lib.create_mesh(devices)
  replicated = jax.sharding.NamedSharding(mesh, train_lib.P())
  data = jax.sharding.NamedSharding(mesh, train_lib.P('data'))
  model = train_lib_test.two_block_model(drop_path_rate=0.2)
  config = train_lib_test.tiny_config()
  learning_rate_fn = lambda step: 0.05
  tx = optim.create_optimizer(config, learning_rate_fn)
  create = functools.partial(steps.create_train_state, model=model, tx=tx)
  shardings = jax.tree.map(lambda _: replicated,
                           jax.eval_shape(create, jax.random.key(0)))
  state = jax.jit(create, out_shardings=shardings)(jax.random.key(0))
  step = jax.jit(
      functools.partial(steps.train_step,
                        learning_rate_fn=learning_rate_fn,
                        label_smoothing=0.1, ema_decay=0.9999),
      in_shardings=(shardings, data, replicated),
      out_shardings=(shardings, replicated), donate_argnums=0)
  states = []
  for batch in batches:
    state, _ = step(state, train_lib.shard_batch(batch, mesh),
                    jax.random.key(1))
    states.append(jax.device_get(train_lib.checkpoint_tree(state)))
  preserved = all(leaf.sharding == replicated
                  for leaf in jax.tree.leaves(state))
  return states, step._cache_size(), preserved  # pylint: disable=protected-access


def max_difference(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  batches = [train_lib_test.fixed_batch(batch_size=8),
             train_lib_test.fixed_batch(batch_size=8)]
  batches[1] = dict(batches[1], image=batches[1]['image'][::-1].copy(),
                    label=batches[1]['label'][::-1].copy())
  many, compiles, preserved = one_step_and_compiles(jax.devices(), batches)
  one, _, _ = one_step_and_compiles(jax.devices()[:1], batches[:1])
  try:
    train_lib.check_batch_size(12, 'batch_size')
    error = None
  except train_lib.ConfigError as e:
    error = str(e)
  print(json.dumps(dict(
      devices=jax.device_count(),
      first_step_difference=max_difference(many[0], one[0]),
      compiles=compiles,
      shardings_preserved=preserved,
      indivisible_error=error)))


if __name__ == '__main__':
  jax.config.update('jax_disable_most_optimizations', True)
  main()
