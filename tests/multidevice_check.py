"""Run by sharding_test in its own process: 8 fake CPU devices vs 1.

train_lib's train step (steps.jit_steps, on train_lib.state_layout's
shardings) on a network with dropout and drop-path on, one step on 8 devices
against the same step on 1: the random masks must not depend on how the
batch is split.

XLA_FLAGS must be set before jax is imported, which a pytest worker that has
already imported jax cannot do; so this script runs as a subprocess and prints
one JSON line of measurements for the test to assert on.
"""

import os

from tests import fake_devices  # Pure Python: no jax before the flags.

os.environ['XLA_FLAGS'] = fake_devices.xla_flags(
    8, os.environ.get('XLA_FLAGS', ''))

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import json

import jax
import numpy as np

from efficientnet_jax import errors
from efficientnet_jax import optim
from efficientnet_jax import sharding
from efficientnet_jax import steps
from efficientnet_jax import train_lib
from tests import tiny


def one_step_and_compiles(devices, batches, train_rngs):
  """Runs train_lib's construction of the train step on `devices`: from a
  fresh state over `batches`, once per train rng, with one compiled step."""
  mesh = sharding.create_mesh(devices)
  model = tiny.random_ops_model()
  config = tiny.tiny_config()
  learning_rate_fn = lambda step: 0.05
  tx = optim.create_optimizer(config, learning_rate_fn)
  abstract, shardings = train_lib.state_layout(model, tx, jax.random.key(0),
                                               mesh)
  del abstract
  create = jax.jit(functools.partial(steps.create_train_state, model=model,
                                     tx=tx), out_shardings=shardings)
  step = steps.jit_steps(model, mesh, state_shardings=shardings,
                         learning_rate_fn=learning_rate_fn,
                         label_smoothing=0.1, ema_decay=0.9999).train
  states = []
  for train_rng in train_rngs:
    state = create(jax.random.key(0))
    for batch in batches:
      state, _ = step(state, sharding.shard_batch(batch, mesh), train_rng)
      states.append(jax.device_get(train_lib.checkpoint_tree(state)))
  replicated = sharding.replicated(mesh)
  preserved = all(leaf.sharding == replicated
                  for leaf in jax.tree.leaves(state))
  return states, step._cache_size(), preserved  # pylint: disable=protected-access


def max_difference(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  batches = [tiny.fixed_batch(batch_size=8), tiny.fixed_batch(batch_size=8)]
  batches[1] = dict(batches[1], image=batches[1]['image'][::-1].copy(),
                    label=batches[1]['label'][::-1].copy())
  many, compiles, preserved = one_step_and_compiles(
      jax.devices(), batches, [jax.random.key(1)])
  # The masks are live: another train rng (index 1) gives another step.
  one, _, _ = one_step_and_compiles(jax.devices()[:1], batches[:1],
                                    [jax.random.key(1), jax.random.key(2)])
  try:
    sharding.local_batch_size(12, 'batch_size')
    error = None
  except errors.ConfigError as e:
    error = str(e)
  print(json.dumps(dict(
      devices=jax.device_count(),
      first_step_difference=max_difference(many[0], one[0]),
      other_rng_difference=max_difference(one[1], one[0]),
      compiles=compiles,
      shardings_preserved=preserved,
      indivisible_error=error)))


if __name__ == '__main__':
  jax.config.update('jax_disable_most_optimizations', True)
  main()
