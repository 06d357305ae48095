"""Trains an EfficientNet: `python train.py --config=configs/X.py:arg --workdir=DIR`.

Every config field can be overridden (`--config.batch_size=1024`,
`--config.model.phi=2.5`). Rerunning with the same workdir resumes from its
newest checkpoint. SIGTERM during training saves a checkpoint and exits with
status 143; before the first step it exits with 75 (nothing saved). Errors are
one line (`--verbose` for the traceback); README.md, "Exit codes".
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from efficientnet_jax import cli
from efficientnet_jax import validate

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Recipe file and variant, e.g. configs/imagenet.py:b0.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Checkpoints, TensorBoard events and metrics.jsonl.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Call jax.distributed.initialize() (multi-process); '
    'implied when JAX_COORDINATOR_ADDRESS is set.')
_COMPILATION_CACHE = flags.DEFINE_string(
    'compilation_cache', None, 'JAX persistent compilation cache directory '
    '(default WORKDIR/jax_cache; "none" turns it off): a restarted run '
    'reaches its first step without recompiling.')
_LAUNCH = cli.define_launch_flags()
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Before anything is imported, prepared or written: a bad value fails in a
  # second, with nothing in the workdir.
  validate.check_config(_CONFIG.value)
  with cli.sigterm_before_training(_WORKDIR.value,
                                   enabled=not _DISTRIBUTED.value):
    cli.use_compilation_cache(_COMPILATION_CACHE.value, _WORKDIR.value)
    cli.setup_devices(_DISTRIBUTED.value,
                      {k: v.value for k, v in _LAUNCH.items()})
    # Imported here so that a refused config costs no TensorFlow/jax import.
    # pylint: disable=g-import-not-at-top
    from efficientnet_jax import checkpoints
    from efficientnet_jax import train_lib
    # pylint: enable=g-import-not-at-top
    # Damaged newest steps are set aside (saying so): resume from the newest
    # intact one.
    checkpoints.prepare_resume(_WORKDIR.value)
    results = train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if results['preempted']:
    sys.exit(cli.EXIT_PREEMPTED)  # Not finished; rerun to resume.


if __name__ == '__main__':
  cli.run(main)
