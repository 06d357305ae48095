"""Trains an EfficientNet: `python train.py --config=configs/X.py:arg --workdir=DIR`.

Every config field can be overridden (`--config.batch_size=1024`,
`--config.model.phi=2.5`). Rerunning with the same workdir resumes from its
newest checkpoint. SIGTERM saves a checkpoint and exits with status 143.
"""

import sys

from absl import flags
from ml_collections import config_flags

from efficientnet_jax import cli
from efficientnet_jax import train_lib

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Recipe file and variant, e.g. configs/imagenet.py:b0.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, TensorBoard events and metrics.jsonl.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() (multi-process); '
    'implied when JAX_COORDINATOR_ADDRESS is set.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise flags.Error(f'Unexpected arguments: {argv[1:]}')
  cli.setup_devices(_DISTRIBUTED.value)
  results = train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if results['preempted']:
    sys.exit(143)  # 128 + SIGTERM: the job did not finish; rerun to resume.


if __name__ == '__main__':
  cli.run(main)
