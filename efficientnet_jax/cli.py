"""What train.py and eval.py share: flag parsing, device setup, clean errors.

`ml_collections.config_flags` reports an unknown `--config.<field>` override
as a bare `AttributeError: "'field'"` raised from inside `app.run`; `run`
turns that, and the library's own config errors, into one line that says
what is wrong and how to fix it.
"""

from __future__ import annotations

import importlib.util
import logging as logging_lib
import os
import re
import sys
from typing import Any, Callable, Sequence

from absl import app
from absl import logging

from efficientnet_jax import errors
from efficientnet_jax import host_memory


def load_config_file(argv: Sequence[str]) -> Any:
  """The config named by --config=path[:arg], loaded without overrides."""
  for arg in argv:
    match = re.fullmatch(r'--config=([^:]+)(?::(.*))?', arg)
    if match:
      spec = importlib.util.spec_from_file_location('recipe', match.group(1))
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      return module.get_config(match.group(2))
  return None


def unknown_field_message(argv: Sequence[str], error: Exception) -> str:
  """'Unknown config field config.model.bogus (...); valid fields: ...'."""
  quoted = re.findall(r"'([^']+)'", str(error))
  name = quoted[0] if quoted else str(error)
  flag = next((a for a in argv if a.startswith('--config.') and
               name in a.split('=', 1)[0].split('.')), None)
  if flag is None:
    return f'Unknown config field {name!r}: {error}'
  path = flag.split('=', 1)[0][len('--config.'):].split('.')
  parent = path[:path.index(name)]
  section = load_config_file(argv)
  for key in parent:
    section = section[key] if section is not None else None
  valid = ', '.join(sorted(section.keys())) if hasattr(section, 'keys') else '?'
  where = '.'.join(['config', *parent])
  return (f'Unknown config field {".".join(["config", *path])} in '
          f'{flag.split("=", 1)[0]}; {where} has: {valid}.')


def flags_parser(argv: list[str]) -> list[str]:
  """app.run's parser, with a one-line error for unknown config fields."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    sys.exit(f'FATAL: {unknown_field_message(argv, e)}')


class _DropLibraryInfo(logging_lib.Filter):
  """Drops orbax's per-save INFO chatter (dozens of lines per checkpoint)."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    return (record.levelno >= logging_lib.WARNING or
            f'{os.sep}orbax{os.sep}' not in record.pathname)


def quiet_library_logs() -> None:
  """Keeps our INFO lines (progress, metrics) and drops orbax's."""
  logging.get_absl_handler().addFilter(_DropLibraryInfo())


def setup_devices(distributed: bool) -> None:
  """Process-wide settings of an entry point, before any jax computation.

  Keeps TF (data only) off accelerators, sets how XLA:CPU holds host memory
  (read when jax creates its CPU client; host_memory.py), and joins a
  multi-process job.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  import jax
  host_memory.reuse_execution_memory()
  host_memory.release_after_each_compile()
  tf.config.set_visible_devices([], 'GPU')
  if distributed or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    # Auto-detects SLURM, Open MPI, Kubernetes and Cloud TPU environments.
    jax.distributed.initialize()
  logging.info('JAX process %d of %d, %d local / %d global devices (%s).',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.default_backend())


def run(main: Callable[[list[str]], Any]) -> None:
  """app.run(main) with clean one-line exits for the user's mistakes."""

  def guarded(argv):
    quiet_library_logs()
    try:
      return main(argv)
    except (errors.ConfigError, FloatingPointError, FileNotFoundError) as e:
      logging.error('%s', e)
      sys.exit(f'FATAL: {e}')

  app.run(guarded, flags_parser=flags_parser)
