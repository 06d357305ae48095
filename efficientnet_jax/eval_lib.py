"""Scoring networks on a split: the eval pass, and eval.py's checkpoint scoring.

`evaluate_pass` runs one pass over an eval iterator for one or more sets of
variables (raw and EMA weights share it), so training and eval.py count the
same way: masked sums per batch, divided by the number of real examples at the
end, every example counted exactly once across processes.

`evaluate_checkpoint` works on train.py workdirs and converted pretrained
checkpoints alike: the network, its padding and its input normalisation come
from the checkpoint's meta (see checkpoints.py), so an AdvProp or Lite
checkpoint is fed the way it was trained, and the EMA weights are used when the
checkpoint has them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Iterator, Mapping

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from efficientnet_jax import checkpoints
from efficientnet_jax import errors
from efficientnet_jax import input_pipeline
from efficientnet_jax import models
from efficientnet_jax import network
from efficientnet_jax import sharding
from efficientnet_jax import steps

Batch = Mapping[str, Any]
# Fields of a checkpoint's model section that only change how the network is
# computed, not what it is; eval takes them from the config, not the meta.
# Execution fields that checkpoints written before config.execution existed
# recorded in their model section; the run's own execution section replaces
# them.
RUNTIME_MODEL_FIELDS = ('dtype', 'depthwise_impl', 'recompute',
                        'recompute_min_bytes', 'inference_chunk_bytes')


@dataclasses.dataclass(frozen=True)
class PassResult:
  """One eval pass: metrics per variables name, predictions, timing.

  `timed_examples` are the real (unpadded) examples after the first batch,
  whose time includes compilation; `timed_seconds` is the time they took.
  """
  metrics: dict[str, dict[str, float]]
  predictions: list[dict[str, np.ndarray]]
  timed_examples: int
  timed_seconds: float

  @property
  def images_per_sec(self) -> float:
    if not self.timed_examples:
      return math.nan
    return self.timed_examples / self.timed_seconds


def metrics_from_sums(totals: Mapping[str, Any]) -> dict[str, float]:
  """top1, top5 (fractions), loss (mean) and num_examples from eval sums."""
  totals = jax.device_get(totals)
  count = float(totals['count'])
  return dict(top1=float(totals['top1']) / count,
              top5=float(totals['top5']) / count,
              loss=float(totals['loss']) / count,
              num_examples=int(round(count)))


def evaluate_pass(eval_fn: Callable[..., dict[str, jax.Array]],
                  variables: Mapping[str, Any], eval_iter: Iterator[Batch],
                  mesh: jax.sharding.Mesh, *,
                  predict_fn: Callable[..., dict[str, jax.Array]] | None = None,
                  predict_with: str | None = None) -> PassResult:
  """One pass over `eval_iter`, scoring every entry of `variables`.

  Args:
    eval_fn: a jitted steps.eval_step (steps.jit_steps(...).eval).
    variables: name -> {'params', 'batch_stats'}, e.g. raw and EMA weights.
    eval_iter: this process's padded eval batches (with 'mask').
    mesh: the mesh the batches are sharded over.
    predict_fn: also collect per-example top-5 (steps.jit_steps(...).predict)
      with the variables named `predict_with`.
    predict_with: a key of `variables`.

  Returns:
    The PassResult.

  Raises:
    errors.ConfigError: the iterator yielded no batch.
  """
  totals = dict.fromkeys(variables)
  rows, first_count, start = [], 0.0, None
  for batch in eval_iter:
    global_batch = sharding.shard_batch(batch, mesh)
    for name, tree in variables.items():
      sums = eval_fn(tree, global_batch)
      totals[name] = sums if totals[name] is None else jax.tree.map(
          jnp.add, totals[name], sums)
    if predict_fn is not None:
      top = predict_fn(variables[predict_with], global_batch)
      rows.append(multihost_utils.process_allgather(
          dict(index=global_batch['index'], label=global_batch['label'],
               mask=global_batch['mask'], **top), tiled=True))
    if start is None:
      # Speed is timed from the end of the first (compiling) batch.
      first_count = float(jax.device_get(
          next(iter(totals.values()))['count']))
      start = time.perf_counter()
  if start is None:
    raise errors.ConfigError('The eval split yielded no batches; check '
                             'config.eval_split (or --split) and '
                             'config.data_dir.')
  metrics = {name: metrics_from_sums(sums) for name, sums in totals.items()}
  elapsed = time.perf_counter() - start
  count = next(iter(metrics.values()))['num_examples']
  return PassResult(metrics=metrics, predictions=rows,
                    timed_examples=int(round(count - first_count)),
                    timed_seconds=elapsed)


def checkpoint_model_config(config: ml_collections.ConfigDict,
                            meta: Mapping[str, Any]) -> dict[str, Any]:
  """The checkpoint's model section, carrying the config's execution section.

  The config's `resolution` wins when set, and the checkpoint's padding is
  always kept (it is part of what the weights learned). How it runs comes
  from the config, never the checkpoint: the result carries
  `config.execution` under 'execution', which network.build reads.
  """
  model_config = config.model.to_dict() | dict(meta.get('model') or {})
  for field in RUNTIME_MODEL_FIELDS:
    model_config.pop(field, None)
  if 'execution' in config:
    model_config['execution'] = config.execution.to_dict()
  if config.model.resolution is not None:
    model_config['resolution'] = config.model.resolution
  if meta.get('padding'):
    model_config['padding'] = meta['padding']
  return model_config


def evaluate_checkpoint(config: ml_collections.ConfigDict, directory: str, *,
                        split: str | None = None, step: int | None = None,
                        predictions_path: str | None = None,
                        data: Any = None) -> dict[str, Any]:
  """Scores a train.py workdir or a converted checkpoint on one split.

  The network is the checkpoint's recorded model section (with the config's
  runtime fields `dtype`, `depthwise_impl`, `recompute` and
  `inference_chunk_bytes`, and its `resolution` when set), fed with the
  checkpoint's recorded normalisation. EMA weights are used when the
  checkpoint has them.

  Returns:
    dict(top1, top5, loss, num_examples, images_per_sec, weights, step, ...).
  """
  data = input_pipeline if data is None else data
  state, meta = checkpoints.restore_raw(directory, step)
  info = data.dataset_info(config)
  num_classes = int(meta.get('num_classes', info.num_classes))
  if num_classes != info.num_classes:
    raise errors.ConfigError(
        f'Checkpoint {directory!r} has a {num_classes}-class classifier but '
        f'config.dataset={config.dataset!r} has {info.num_classes} classes; '
        'evaluate it on the dataset it was trained or converted for.')
  net = network.build(checkpoint_model_config(config, meta), num_classes,
                      meta)
  variables = checkpoints.model_variables(state, use_ema=True)
  mismatch = checkpoints.first_mismatch(
      models.abstract_variables(net.model), variables)
  if mismatch:
    raise errors.ConfigError(f'Checkpoint {directory!r} does not fit '
                             f'{net.spec.name}: {mismatch}.')
  local_batch_size = sharding.local_batch_size(config.eval_batch_size,
                                               'eval_batch_size')
  mesh = sharding.create_mesh()
  jitted = steps.jit_steps(net.model, mesh)
  weights = 'ema' if state.get('ema_params') is not None else 'raw'
  variables = jax.device_put(variables, sharding.replicated(mesh))
  eval_iter = data.create_eval_iter(config, local_batch_size=local_batch_size,
                                    split=split, **net.pipeline_args)
  result = evaluate_pass(
      jitted.eval, {weights: variables}, eval_iter, mesh,
      predict_fn=jitted.predict if predictions_path else None,
      predict_with=weights)
  if predictions_path and jax.process_index() == 0:
    write_predictions(predictions_path, result.predictions)
  return dict(
      checkpoint=os.path.abspath(directory),
      step=int(np.asarray(state.get('step', 0))),
      split=split or config.eval_split,
      dataset=config.dataset,
      model=net.spec.name,
      resolution=net.spec.resolution,
      weights=weights,
      **result.metrics[weights],
      images_per_sec=result.images_per_sec)


def write_predictions(path: str, rows: list[dict[str, np.ndarray]]) -> None:
  """One JSON line per example, in split order: index, label, top-5, probs."""
  merged = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
  keep = merged['mask'] > 0
  merged = {k: v[keep] for k, v in merged.items()}
  with open(path, 'w') as f:
    for i in np.argsort(merged['index'], kind='stable'):
      f.write(json.dumps(dict(
          index=int(merged['index'][i]), label=int(merged['label'][i]),
          top5=[int(c) for c in merged['top5'][i]],
          probs=[round(float(p), 6) for p in merged['probs'][i]])) + '\n')
