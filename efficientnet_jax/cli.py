"""What the entry points share: flag parsing, device setup, one-line errors.

`run(main)` is `app.run(main)` for train.py, eval.py, the converter and the
summary, with every error a user can cause printed as one line,
`FATAL: <what is wrong and how to fix it>`, and no traceback unless
`--verbose` or EFFICIENTNET_JAX_VERBOSE=1 asks for one. Exit codes (README,
"Exit codes"): 0 done, 1 a bad value, file or run, 2 a bad command line,
75 SIGTERM before the first training step (nothing saved), 130 Ctrl-C, 143
SIGTERM during training (saved; rerun to resume).

`ml_collections.config_flags` reports an unknown `--config.<field>` override
as a bare `AttributeError` raised from inside flag parsing; `flags_parser`
finds the field from the command line itself and lists the valid ones.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import logging as logging_lib
import os
import re
import signal
import socket
import sys
import threading
import traceback
from typing import Any, Callable, Iterator, Mapping, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging

from efficientnet_jax import errors

EXIT_ERROR = 1
EXIT_USAGE = 2
# sysexits.h EX_TEMPFAIL ("try again later"): stopped before anything was
# saved, unlike 143 (a checkpoint of the current step was saved).
EXIT_NOTHING_SAVED = 75
EXIT_INTERRUPTED = 130  # 128 + SIGINT.
EXIT_PREEMPTED = 143  # 128 + SIGTERM.
VERBOSE_ENV = 'EFFICIENTNET_JAX_VERBOSE'
# What a user can cause and fix: bad values, missing or damaged files,
# divergence. Anything else is a bug and keeps its traceback.
USER_ERRORS = (errors.ConfigError, ValueError, OSError, FloatingPointError)
MAX_MESSAGE_CHARS = 2000


def verbose(argv: Sequence[str] = ()) -> bool:
  """--verbose on the command line (parsed or not) or EFFICIENTNET_JAX_VERBOSE=1."""
  if os.environ.get(VERBOSE_ENV, '') not in ('', '0'):
    return True
  if 'verbose' in flags.FLAGS and flags.FLAGS.is_parsed():
    return bool(flags.FLAGS.verbose)
  return any(arg in ('--verbose', '-verbose') for arg in argv)


def one_line(message: Any) -> str:
  """A message on one line (whitespace collapsed), at most ~2000 characters."""
  text = ' '.join(str(message).split())
  if len(text) > MAX_MESSAGE_CHARS:
    text = text[:MAX_MESSAGE_CHARS] + ' ...'
  return text


def fatal(message: Any, code: int = EXIT_ERROR, *,
          argv: Sequence[str] = ()) -> NoReturn:
  """Prints `FATAL: message` (after the traceback when verbose) and exits."""
  if verbose(argv) and sys.exc_info()[0] is not None:
    traceback.print_exc()
  sys.stderr.write(f'FATAL: {one_line(message)}\n')
  sys.stderr.flush()
  raise SystemExit(code)


def _config_spec(argv: Sequence[str]) -> str | None:
  """The value of --config (as '--config=X' or '--config X')."""
  for index, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg[len('--config='):]
    if arg == '--config' and index + 1 < len(argv):
      return argv[index + 1]
  return None


def load_config_file(argv: Sequence[str]) -> Any:
  """The config named by --config=path[:arg], loaded without overrides."""
  spec = _config_spec(argv)
  if spec is None:
    return None
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no recipe file {path!r}; '
                            'e.g. --config=configs/demo.py.')
  module_spec = importlib.util.spec_from_file_location('recipe', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _overrides(argv: Sequence[str]) -> list[tuple[str, list[str]]]:
  """[('--config.model.phi', ['model', 'phi']), ...] in command-line order."""
  found = []
  for arg in argv:
    if arg.startswith('--config.'):
      flag = arg.split('=', 1)[0]
      found.append((flag, flag[len('--config.'):].split('.')))
  return found


def unknown_field_message(argv: Sequence[str], error: Exception) -> str:
  """'Unknown config field config.modle in --config.modle; config has: ...'."""
  try:
    config = load_config_file(argv)
  except Exception:  # pylint: disable=broad-except
    config = None
  for flag, path in _overrides(argv):
    section = config
    for depth, key in enumerate(path):
      if not hasattr(section, 'keys'):
        break
      if key not in section:
        parent = '.'.join(['config', *path[:depth]])
        valid = sorted(section.keys())
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f' (did you mean {close[0]}?)' if close else ''
        return (f'Unknown config field {".".join(["config", *path[:depth + 1]])}'
                f' in {flag}; {parent} has: {", ".join(valid)}{hint}.')
      section = section[key]
  # The field could not be found from the command line: read the error.
  text = str(error).replace('\\', '')
  name = (re.search(r'instead of "(\w+)"', text) or
          re.search(r'Key "(\w+)"', text) or re.search(r"'(\w+)'", text))
  name = name.group(1) if name else one_line(text)
  close = re.search(r'Did you mean "(\w+)"', text)
  hint = f' (did you mean {close.group(1)}?)' if close else ''
  return f'Unknown config field {name!r}{hint}.'


def flag_error_message(error: flags.Error) -> str:
  """absl's flag error, without the config loader's embedded traceback."""
  text = str(error)
  if 'Traceback (most recent call last)' in text:
    head = text.split(': Error whilst', 1)[0]  # 'flag --config=x.py:arg'.
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return f'{head}: {lines[-1].strip()}'
  return text


def flags_parser(argv: list[str]) -> list[str]:
  """app.run's parser: every command-line mistake is one line (exit 2)."""
  try:
    load_config_file(argv)  # A bad recipe path or :arg, named as such.
  except Exception as e:  # pylint: disable=broad-except
    fatal(f'--config={_config_spec(argv)}: {e}', EXIT_USAGE, argv=argv)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    fatal(unknown_field_message(argv, e), EXIT_USAGE, argv=argv)
  except flags.Error as e:
    fatal(f'{flag_error_message(e)} (--helpshort lists the flags).',
          EXIT_USAGE, argv=argv)


class _DropLibraryInfo(logging_lib.Filter):
  """Drops orbax's per-save INFO chatter (dozens of lines per checkpoint)."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    return (record.levelno >= logging_lib.WARNING or
            f'{os.sep}orbax{os.sep}' not in record.pathname)


def quiet_library_logs() -> None:
  """Keeps our INFO lines (progress, metrics) and drops orbax's."""
  logging.get_absl_handler().addFilter(_DropLibraryInfo())


def define_launch_flags() -> dict[str, Any]:
  """The multi-process launch flags train.py and eval.py share."""
  return dict(
      coordinator_address=flags.DEFINE_string(
          'coordinator_address', None, 'host:port of process 0 of a '
          'multi-process job (or JAX_COORDINATOR_ADDRESS); docs/launch.md.'),
      num_processes=flags.DEFINE_integer(
          'num_processes', None, 'Processes in the job (or JAX_NUM_PROCESSES).'),
      process_id=flags.DEFINE_integer(
          'process_id', None, 'This process, 0..num_processes-1 (or '
          'JAX_PROCESS_ID).'))


def distributed_args(distributed: bool, *, coordinator_address: str | None,
                     num_processes: int | None, process_id: int | None,
                     environ: Mapping[str, str] = os.environ
                     ) -> dict[str, Any] | None:
  """jax.distributed.initialize's arguments from the flags or environment.

  None for a single-process run. Flags win over JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES and JAX_PROCESS_ID; what neither gives is left for jax to
  detect (SLURM, Open MPI, Kubernetes, Cloud TPU).
  """
  given = dict(
      coordinator_address=(coordinator_address or
                           environ.get('JAX_COORDINATOR_ADDRESS')),
      num_processes=(num_processes if num_processes is not None else
                     _int_env(environ, 'JAX_NUM_PROCESSES')),
      process_id=(process_id if process_id is not None else
                  _int_env(environ, 'JAX_PROCESS_ID')))
  if not distributed and all(value is None for value in given.values()):
    return None
  return {name: value for name, value in given.items() if value is not None}


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
  value = environ.get(name)
  if value is None:
    return None
  try:
    return int(value)
  except ValueError:
    raise errors.ConfigError(f'{name}={value!r} is not an integer.') from None


def use_compilation_cache(directory: str | None, workdir: str) -> None:
  """JAX's persistent compilation cache in `directory` (WORKDIR/jax_cache
  by default, 'none' for off; JAX_COMPILATION_CACHE_DIR when set and no
  directory is given), so a restart does not recompile its steps."""
  import jax  # pylint: disable=g-import-not-at-top
  if directory == 'none' or (directory is None and
                             os.environ.get('JAX_COMPILATION_CACHE_DIR')):
    return
  jax.config.update('jax_compilation_cache_dir', directory or
                    os.path.join(os.path.abspath(workdir), 'jax_cache'))


def setup_devices(distributed: bool,
                  launch: Mapping[str, Any] | None = None) -> None:
  """Process-wide settings of an entry point, before any jax computation.

  Keeps TF (data only) off accelerators, sets how XLA:CPU holds host memory
  (read when jax creates its CPU client; host_memory.py), and joins a
  multi-process job when `distributed_args` says so (`launch` holds the
  launch flags' values).
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  import jax
  from efficientnet_jax import host_memory
  host_memory.reuse_execution_memory()
  host_memory.release_after_each_compile()
  tf.config.set_visible_devices([], 'GPU')
  kwargs = distributed_args(distributed, **dict(
      dict.fromkeys(('coordinator_address', 'num_processes', 'process_id')),
      **(launch or {})))
  if kwargs is not None:
    try:
      jax.distributed.initialize(**kwargs)
    except (ValueError, RuntimeError) as error:
      raise errors.ConfigError(
          f'Could not join the multi-process job ({one_line(error)}); pass '
          '--coordinator_address, --num_processes and --process_id (or '
          'JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID), or '
          'launch where jax detects them (docs/launch.md).') from None
  logging.info('JAX process %d of %d, %d local / %d global devices (%s).',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               jax.default_backend())


def run(main: Callable[[list[str]], Any]) -> None:
  """app.run(main) with one-line exits for every error a user can cause."""
  if 'verbose' not in flags.FLAGS:
    flags.DEFINE_bool('verbose', False, 'Print the traceback of an error '
                      f'(also {VERBOSE_ENV}=1).')

  def guarded(argv):
    quiet_library_logs()
    try:
      return main(argv)
    except KeyboardInterrupt:
      fatal('Interrupted (Ctrl-C).', EXIT_INTERRUPTED)
    except (flags.Error, app.UsageError) as e:
      fatal(f'{e} (--helpshort lists the flags).', EXIT_USAGE)
    except USER_ERRORS as e:
      fatal(e, EXIT_ERROR)

  app.run(guarded, flags_parser=flags_parser)


def _newest_step(workdir: str) -> int | None:
  """The largest numbered entry of a workdir (orbax step directories)."""
  try:
    steps = [int(name) for name in os.listdir(workdir) if name.isdigit()]
  except OSError:
    return None
  return max(steps, default=None)


@contextlib.contextmanager
def sigterm_before_training(workdir: str, *,
                            enabled: bool = True) -> Iterator[None]:
  """SIGTERM while starting up exits at once with EXIT_NOTHING_SAVED.

  Start-up (dataset preparation, restoring, compiling) runs in C for minutes
  at a time, where a Python signal handler would wait for it to return, so a
  thread reads the signal from signal.set_wakeup_fd and exits from there.
  While the training loop's own handler is installed (train_lib.sigterm_flag:
  save, then exit 143) the thread leaves SIGTERM to it. Single-process runs
  on the main thread only, as the loop's handler (`enabled=False` for
  --distributed: jax.distributed's preemption service owns SIGTERM there).
  """
  if (not enabled or
      threading.current_thread() is not threading.main_thread() or
      os.environ.get('JAX_COORDINATOR_ADDRESS')):
    yield
    return
  newest_at_start = _newest_step(workdir)
  reader, writer = socket.socketpair()
  reader.setblocking(True)
  writer.setblocking(False)

  def ours(*_):  # A Python handler, so that the wakeup fd is written.
    pass

  def watch():
    while True:
      try:
        data = reader.recv(64)
      except OSError:
        return
      if not data:
        return
      if signal.SIGTERM in data and signal.getsignal(signal.SIGTERM) is ours:
        newest = _newest_step(workdir)
        if newest == newest_at_start:
          kept = ('there is none' if newest is None else
                  f'the newest is still step {newest}')
          sys.stderr.write(
              'FATAL: SIGTERM before the first training step: nothing was '
              f'saved ({kept} in {workdir}); rerun the same command to '
              'start again.\n')
          code = EXIT_NOTHING_SAVED
        else:
          sys.stderr.write(f'FATAL: SIGTERM after training; step {newest} is '
                           f'saved in {workdir}.\n')
          code = EXIT_PREEMPTED
        sys.stderr.flush()
        os._exit(code)  # pylint: disable=protected-access

  previous_handler = signal.signal(signal.SIGTERM, ours)
  previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
  thread = threading.Thread(target=watch, name='sigterm-watch', daemon=True)
  thread.start()
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous_fd)
    signal.signal(signal.SIGTERM, previous_handler)
    with contextlib.suppress(OSError):
      reader.shutdown(socket.SHUT_RDWR)  # Ends the watcher's recv.
    writer.close()
    reader.close()
