"""Scores a checkpoint for eval.py: top-1/top-5, images/s, predictions.

Works on train.py workdirs and converted pretrained checkpoints alike: the
network, its padding and its input normalisation come from the checkpoint's
meta (see checkpoints.py), so an AdvProp or Lite checkpoint is fed the way it
was trained, and the EMA weights are used when the checkpoint has them.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from efficientnet_jax import checkpoints
from efficientnet_jax import host_memory
from efficientnet_jax import input_pipeline
from efficientnet_jax import models
from efficientnet_jax import steps
from efficientnet_jax import train_lib

P = jax.sharding.PartitionSpec
# Fields of a checkpoint's model section that only change how the network is
# computed, not what it is; eval takes them from the config, not the meta.
RUNTIME_MODEL_FIELDS = ('dtype', 'depthwise_impl', 'recompute',
                        'inference_chunk_bytes')


def predict_step(model: models.EfficientNet, variables: Mapping[str, Any],
                 batch: Batch) -> dict[str, jax.Array]:
  """Top-5 class ids and their softmax probabilities per example."""
  logits = model.apply(variables, batch['image'], train=False)
  probs, ids = jax.lax.top_k(jax.nn.softmax(logits),
                             min(5, logits.shape[-1]))
  return dict(top5=ids, probs=probs)


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
  host_memory.release_after_each_compile()
  state, meta = checkpoints.restore_raw(directory, step)
  model_config = config.model.to_dict() | dict(meta.get('model') or {})
  for field in RUNTIME_MODEL_FIELDS:
    model_config[field] = config.model[field]
  if config.model.resolution is not None:
    model_config['resolution'] = config.model.resolution
  if meta.get('padding'):
    model_config['padding'] = meta['padding']
  info = data.dataset_info(config)
  num_classes = int(meta.get('num_classes', info.num_classes))
  if num_classes != info.num_classes:
    raise train_lib.ConfigError(
        f'Checkpoint {directory!r} has a {num_classes}-class classifier but '
        f'config.dataset={config.dataset!r} has {info.num_classes} classes; '
        'evaluate it on the dataset it was trained or converted for.')
  setup = train_lib.make_setup(model_config, num_classes, meta)
  variables = checkpoints.model_variables(state, use_ema=True)
  mismatch = checkpoints.first_mismatch(
      models.abstract_variables(setup.model), variables)
  if mismatch:
    raise train_lib.ConfigError(f'Checkpoint {directory!r} does not fit '
                                f'{setup.spec.name}: {mismatch}.')
  local_batch_size = train_lib.check_batch_size(config.eval_batch_size,
                                                'eval_batch_size')
  replicated = jax.sharding.NamedSharding(setup.mesh, P())
  variables = jax.device_put(variables, replicated)
  options = steps.step_compiler_options()
  p_eval_step = jax.jit(functools.partial(steps.eval_step, setup.model),
                        out_shardings=replicated, compiler_options=options)
  p_predict_step = jax.jit(functools.partial(predict_step, setup.model),
                           compiler_options=options)

  totals, rows, num_batches, start = None, [], 0, None
  eval_iter = data.create_eval_iter(config, local_batch_size=local_batch_size,
                                    split=split, **setup.pipeline_args)
  for batch in eval_iter:
    global_batch = train_lib.shard_batch(batch, setup.mesh)
    sums = p_eval_step(variables, global_batch)
    if predictions_path:
      top = p_predict_step(variables, global_batch)
      rows.append(multihost_utils.process_allgather(
          dict(index=global_batch['index'], label=global_batch['label'],
               mask=global_batch['mask'], **top), tiled=True))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    num_batches += 1
    if num_batches == 1:
      # Speed is timed from the end of the first (compiling) batch.
      jax.block_until_ready(sums)
      start = time.perf_counter()
  if totals is None:
    raise train_lib.ConfigError(
        f'Split {split or config.eval_split!r} yielded no batches; check '
        '--split and config.data_dir.')
  totals = jax.device_get(totals)
  elapsed = time.perf_counter() - start
  timed_images = (num_batches - 1) * config.eval_batch_size
  count = float(totals['count'])
  results = dict(
      checkpoint=os.path.abspath(directory),
      step=int(np.asarray(state.get('step', 0))),
      split=split or config.eval_split,
      dataset=config.dataset,
      model=setup.spec.name,
      resolution=setup.spec.resolution,
      weights='ema' if state.get('ema_params') is not None else 'raw',
      top1=float(totals['top1']) / count,
      top5=float(totals['top5']) / count,
      loss=float(totals['loss']) / count,
      num_examples=int(round(count)),
      images_per_sec=(timed_images / elapsed if timed_images else math.nan))
  if predictions_path and jax.process_index() == 0:
    write_predictions(predictions_path, rows)
  return results


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
