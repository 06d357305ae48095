"""One process of a multi-process training run, for multiprocess_test.py.

  python -m tests.multiprocess_run --process_id=I --num_processes=N \\
      --port=P --workdir=W --steps=S

Joins a jax.distributed job on 127.0.0.1:P (CPU collectives over gloo, one
device per process), then runs the real train_lib.train_and_evaluate on the
multi-process test recipe with the fake pipeline, which hands each process its
rows of the same global batches. Prints one JSON line of the results and exits
143 when preempted, as train.py does.
"""

import argparse
import json
import sys

from absl import logging
import jax

from efficientnet_jax import train_lib
from tests import fake_pipeline
from tests import tiny


def recipe(steps: int):
  """The tiny network with dropout and drop-path on (blocks with skips)."""
  config = tiny.tiny_config(num_train_steps=steps, log_every_steps=1,
                            checkpoint_every_steps=0, eval_every_epochs=0.0)
  config.model.alpha = 0.5  # Two blocks in stages 4-6: residuals to drop.
  config.model.dropout_rate = 0.3
  config.model.drop_path_rate = 0.3
  return config


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--process_id', type=int, required=True)
  parser.add_argument('--num_processes', type=int, required=True)
  parser.add_argument('--port', type=int, required=True)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--steps', type=int, required=True)
  args = parser.parse_args()
  logging.set_verbosity(logging.INFO)  # train_lib's progress lines.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.config.update('jax_disable_most_optimizations', True)
  jax.distributed.initialize(f'127.0.0.1:{args.port}',
                             num_processes=args.num_processes,
                             process_id=args.process_id)
  results = train_lib.train_and_evaluate(recipe(args.steps), args.workdir,
                                         data=fake_pipeline)
  print(json.dumps({k: v for k, v in results.items()}), flush=True)
  jax.distributed.shutdown()
  if results['preempted']:
    sys.exit(143)


if __name__ == '__main__':
  main()
