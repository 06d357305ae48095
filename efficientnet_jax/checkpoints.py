"""The checkpoint directory format shared by training, conversion and eval.

A checkpoint directory is an orbax `CheckpointManager` directory whose steps
hold two items:
- `state`: a pytree with at least `params` and `batch_stats`; training
  checkpoints add `step`, `opt_state`, `ema_params` and `ema_batch_stats`.
- `meta`: JSON describing how to rebuild and feed the network: `model` (the
  config's model section, see arch.default_model_config), `num_classes`,
  `padding`, `mean_rgb`/`std_rgb` (the normalisation the weights expect, on
  [0, 255] RGB) and `source` (where the weights came from).

Orbax writes each step to a temporary directory and renames it when complete,
so a crash mid-save never leaves a half-written step as the latest. A step
damaged afterwards (a truncated file, a partial copy) or a directory written
by another program is reported in one line naming the directory and the step
(`CheckpointError`); `prepare_resume` sets damaged steps aside so that training
resumes from the newest intact one.

Reads are topology independent: `restore_raw` restores every leaf as a host
numpy array from the checkpoint's own metadata, so a checkpoint saved sharded
over 8 devices or 2 processes reads on 1 device.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

from efficientnet_jax import errors

STATE = 'state'
META = 'meta'
# What a network needs (eval, create_model, fine-tuning): not `opt_state`,
# which is most of a training checkpoint and which eval never uses.
MODEL_KEYS = ('step', 'params', 'batch_stats', 'ema_params', 'ema_batch_stats')
DAMAGED_PREFIX = 'damaged_'


class CheckpointError(errors.ConfigError):
  """A checkpoint step that cannot be read: damaged, partial or foreign."""


def manager(directory: str, *, max_to_keep: int | None = None,
            create: bool = True,
            enable_async: bool = False) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory` with the `state` and `meta` items."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=create,
      enable_async_checkpointing=enable_async)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=(STATE, META))


def save(directory: str, state: Mapping[str, Any], meta: Mapping[str, Any],
         *, step: int = 0) -> None:
  """Writes one complete checkpoint step (used by the converters)."""
  with manager(directory) as mngr:
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(dict(state)),
        meta=ocp.args.JsonSave(dict(meta))), force=True)
    mngr.wait_until_finished()


def latest_step(directory: str) -> int | None:
  """The newest complete step in `directory`, or None when there is none."""
  if not os.path.isdir(directory):
    return None
  with manager(directory, create=False) as mngr:
    return mngr.latest_step()


def check_directory(directory: str) -> None:
  """Raises FileNotFoundError (one line) unless `directory` holds a step.

  Reads the listing only (no orbax, no jax backend): orbax renames a step's
  temporary directory to its bare number once the step is complete.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'No checkpoint directory at {directory!r}; pass '
                            'a train.py workdir or a convert --output.')
  if not any(name.isdigit() and os.path.isdir(os.path.join(directory, name))
             for name in os.listdir(directory)):
    raise FileNotFoundError(f'{directory!r} holds no complete checkpoint '
                            'step; train or convert into it first.')


def _reader(directory: str) -> ocp.CheckpointManager:
  """A manager that reads `state` as a plain pytree (no target, no devices)."""
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(create=False),
      item_handlers=dict(state=ocp.PyTreeCheckpointHandler(),
                         meta=ocp.JsonCheckpointHandler()))


def _reason(error: BaseException) -> str:
  """The first line of an orbax/tensorstore error, shortened."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  text = lines[0] if lines else ''
  if len(text) > 240:
    text = text[:240] + '...'
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _read_step(mngr: ocp.CheckpointManager, directory: str, step: int,
               keys: Sequence[str] | None) -> tuple[dict[str, Any],
                                                    dict[str, Any]]:
  step_dir = os.path.join(directory, str(step))
  items = sorted(name for name in os.listdir(step_dir)
                 if os.path.isdir(os.path.join(step_dir, name)))
  if STATE not in items or META not in items:
    raise CheckpointError(
        f'Checkpoint step {step} in {directory} holds {items}, not the '
        f'{STATE!r} and {META!r} items: it was not written by efficientnet_jax'
        ' (train.py or convert).')
  try:
    metadata = mngr.item_metadata(step)
    tree = metadata[STATE] if metadata is not None else None
    if tree is None:
      raise CheckpointError(
          f'Checkpoint step {step} in {directory} has no {STATE!r} item: it '
          'was not written by efficientnet_jax (train.py or convert).')
    tree = dict(tree)
    missing = [k for k in ('params', 'batch_stats') if k not in tree]
    if missing:
      raise CheckpointError(
          f'Checkpoint step {step} in {directory} is not an EfficientNet '
          f'checkpoint: its state has {sorted(tree)}, not {missing}.')
    wanted = {k: v for k, v in tree.items() if keys is None or k in keys}
    restore_args = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=wanted, restore_args=restore_args,
                                     partial_restore=keys is not None),
        meta=ocp.args.JsonRestore()))
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # orbax and tensorstore raise ValueError, OSError, FileNotFoundError,
    # KeyError... for a truncated or missing file; one line says which step.
    raise CheckpointError(
        f'Checkpoint step {step} in {directory} cannot be read ({_reason(e)}):'
        ' it is damaged or was not written by efficientnet_jax; pass another '
        '--step or checkpoint.') from e
  state = jax.tree.map(np.asarray, dict(restored[STATE]))
  if restored[META] is None:
    raise CheckpointError(f'Checkpoint step {step} in {directory} has no '
                          f'{META!r} item: it was not written by '
                          'efficientnet_jax (train.py or convert).')
  return state, dict(restored[META])


def restore_raw(directory: str, step: int | None = None, *,
                keys: Sequence[str] | None = MODEL_KEYS
                ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Restores (state, meta) as saved, host numpy arrays, no target tree.

  Args:
    directory: a checkpoint directory (see the module docstring).
    step: the step to read; None: the newest.
    keys: the entries of the state to read (default: what a network needs,
      not the optimizer state); None reads everything.

  Raises:
    FileNotFoundError: no directory, or no complete step in it.
    CheckpointError: the step is damaged, partial or foreign.
  """
  check_directory(directory)
  with _reader(directory) as mngr:
    step = mngr.latest_step() if step is None else step
    if step not in mngr.all_steps():
      raise FileNotFoundError(
          f'{directory!r} has no checkpoint step {step}; it has '
          f'{sorted(mngr.all_steps())}.')
    return _read_step(mngr, directory, step, keys)


def newest_intact_step(directory: str) -> int | None:
  """The newest step that reads completely (all of it), or None if none.

  Damaged steps are skipped with a warning naming them; when every step is
  damaged this raises the newest one's CheckpointError.
  """
  if not os.path.isdir(directory):
    return None
  first_error = None
  with _reader(directory) as mngr:
    for step in sorted(mngr.all_steps(), reverse=True):
      try:
        _read_step(mngr, directory, step, keys=None)
      except CheckpointError as e:
        logging.warning('%s', e)
        first_error = first_error or e
        continue
      return step
  if first_error is not None:
    raise CheckpointError(f'No intact checkpoint step in {directory}: '
                          f'{first_error} Pass a new --workdir, or delete the '
                          'damaged steps to start again.')
  return None


def prepare_resume(directory: str) -> int | None:
  """Sets damaged steps newer than the newest intact one aside; returns it.

  Each damaged step directory N is renamed to `damaged_N` (orbax ignores the
  name), so training resumes from the newest intact step and saving step N
  again does not collide with the damaged copy. Process 0 renames.
  """
  step = newest_intact_step(directory)
  if not os.path.isdir(directory):
    return step
  with manager(directory, create=False) as mngr:
    damaged = [s for s in mngr.all_steps() if step is None or s > step]
  if damaged and jax.process_index() == 0:
    for bad in damaged:
      os.rename(os.path.join(directory, str(bad)),
                os.path.join(directory, f'{DAMAGED_PREFIX}{bad}'))
    logging.warning(
        'Set aside damaged checkpoint step(s) %s in %s as %s; resuming from '
        'step %s, the newest intact one.', damaged, directory,
        ', '.join(f'{DAMAGED_PREFIX}{b}' for b in damaged), step)
  if damaged and jax.process_count() > 1:
    # Every process sees the renamed steps before its manager lists them.
    multihost_utils.sync_global_devices('checkpoints.prepare_resume')
  return step


def load_variables(directory: str, *, use_ema: bool = True,
                   step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """(variables, meta) of the latest (or given) step of a checkpoint dir."""
  state, meta = restore_raw(directory, step)
  return model_variables(state, use_ema=use_ema), meta


def model_variables(state: Mapping[str, Any], *,
                    use_ema: bool = True) -> dict[str, Any]:
  """{'params', 'batch_stats'} from a restored state, EMA copies if asked."""
  if use_ema and state.get('ema_params') is not None:
    return dict(params=state['ema_params'],
                batch_stats=state.get('ema_batch_stats', state['batch_stats']))
  return dict(params=state['params'], batch_stats=state['batch_stats'])


def first_mismatch(expected: Any, actual: Any) -> str | None:
  """Describes the first tensor that differs in shape, is missing or is extra.

  Shape differences come first: they are what a checkpoint of another variant
  shows, and naming both shapes says which variant it was.
  """
  expected_flat = _flatten(expected)
  actual_flat = _flatten(actual)
  for name, shape in expected_flat.items():
    if name in actual_flat and actual_flat[name] != shape:
      return (f'tensor {name} has shape {actual_flat[name]} in the checkpoint '
              f'but the model needs {shape}')
  for name, shape in expected_flat.items():
    if name not in actual_flat:
      return f'tensor {name} {shape} is missing from the checkpoint'
  for name, shape in actual_flat.items():
    if name not in expected_flat:
      return f'tensor {name} {shape} in the checkpoint has no place in the model'
  return None


def _flatten(tree: Any) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in
          jax.tree_util.tree_leaves_with_path(tree)}
