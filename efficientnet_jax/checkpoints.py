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
so a crash mid-save never leaves a half-written step as the latest.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

STATE = 'state'
META = 'meta'


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


def restore_raw(directory: str,
                step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Restores (state, meta) as saved, host numpy arrays, no target tree."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'No checkpoint directory at {directory!r}; pass '
                            'a train.py workdir or a convert --output.')
  with manager(directory, create=False) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'{directory!r} holds no complete checkpoint '
                              'step; train or convert into it first.')
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(),
        meta=ocp.args.JsonRestore()))
  state = jax.tree_util.tree_map(np.asarray, restored[STATE])
  return state, dict(restored[META])


def model_variables(state: Mapping[str, Any], *,
                    use_ema: bool = True) -> dict[str, Any]:
  """{'params', 'batch_stats'} from a restored state, EMA copies if asked."""
  if use_ema and state.get('ema_params') is not None:
    return dict(params=state['ema_params'],
                batch_stats=state.get('ema_batch_stats', state['batch_stats']))
  return dict(params=state['params'], batch_stats=state['batch_stats'])


def load_variables(directory: str, *, use_ema: bool = True,
                   step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """(variables, meta) of the latest (or given) step of a checkpoint dir."""
  state, meta = restore_raw(directory, step)
  return model_variables(state, use_ema=use_ema), meta


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
