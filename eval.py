"""Evaluates a checkpoint: `python eval.py --config=... --checkpoint=DIR`.

DIR is a train.py workdir (EMA weights when present) or a converted pretrained
checkpoint. Prints what it scores (the checkpoint's network, resolution,
normalisation, EMA or raw weights and source, and where the config differs),
then top-1, top-5, the number of examples, the pass's seconds and images/s
(real examples after the compiling first batch), and writes them as JSON (--output, default DIR/eval_<split>.json).
`--predictions=FILE` also writes one JSON line per example: its index in the
split, label, top-5 class ids and their probabilities.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from efficientnet_jax import checkpoints
from efficientnet_jax import cli
from efficientnet_jax import validate

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Recipe file naming the dataset, e.g. configs/demo.py.',
    lock_config=True)
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, 'A train.py workdir or a converted checkpoint.')
_SPLIT = flags.DEFINE_string(
    'split', None, 'TFDS split to score (default: config.eval_split).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: newest).')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'Results JSON (default: CHECKPOINT/eval_<split>.json).')
_PREDICTIONS = flags.DEFINE_string(
    'predictions', None, 'Also write per-example top-5 predictions (JSONL).')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() (multi-process).')
_LAUNCH = cli.define_launch_flags()
flags.mark_flags_as_required(['config', 'checkpoint'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  validate.check_config(_CONFIG.value, training=False)
  checkpoints.check_directory(_CHECKPOINT.value)
  cli.setup_devices(_DISTRIBUTED.value,
                      {k: v.value for k, v in _LAUNCH.items()})
  # Imported here so that a refused config costs no TensorFlow import.
  from efficientnet_jax import eval_lib  # pylint: disable=g-import-not-at-top
  results = eval_lib.evaluate_checkpoint(
      _CONFIG.value, _CHECKPOINT.value, split=_SPLIT.value, step=_STEP.value,
      predictions_path=_PREDICTIONS.value)
  output = _OUTPUT.value or os.path.join(
      _CHECKPOINT.value, f'eval_{results["split"].replace("+", "_")}.json')
  logging.info('Results: %s', results)
  print(results['scoring'])
  print(f'{results["model"]} step {results["step"]} on {results["dataset"]} '
        f'{results["split"]} ({results["num_examples"]} examples, '
        f'{results["weights"]} weights): top-1 {100 * results["top1"]:.2f}%, '
        f'top-5 {100 * results["top5"]:.2f}%; {results["eval_seconds"]:.1f} s '
        f'for the pass, {results["images_per_sec"]:.1f} images/s after the '
        f'first (compiling) batch. Written to {output}.')
  if jax.process_index() == 0:
    with open(output, 'w') as f:
      json.dump(results, f, indent=2)


if __name__ == '__main__':
  cli.run(main)
