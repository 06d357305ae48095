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

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from efficientnet_jax import arch
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

  `timed_examples` are the real (mask 1, never padding) examples after the
  first batch, whose time includes compilation; `timed_seconds` is the time
  from the end of the first batch to the end of the pass, so `images_per_sec`
  is the steady speed over the whole rest of the pass. `pass_seconds` is the
  wall time of the whole pass, compilation included.
  """
  metrics: dict[str, dict[str, float]]
  predictions: list[dict[str, np.ndarray]]
  timed_examples: int
  timed_seconds: float
  pass_seconds: float

  @property
  def images_per_sec(self) -> float:
    """Real examples per second after the first batch; NaN with one batch."""
    if not self.timed_examples or self.timed_seconds <= 0:
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
  pass_start = time.perf_counter()
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
      # Speed is timed from the end of the first (compiling) batch, for
      # every set of variables. Counts are sums of the mask, so padding rows
      # never count as images.
      jax.block_until_ready(totals)
      first_count = float(jax.device_get(
          next(iter(totals.values()))['count']))
      start = time.perf_counter()
  if start is None:
    raise errors.ConfigError('The eval split yielded no batches; check '
                             'config.eval_split (or --split) and '
                             'config.data_dir.')
  # metrics_from_sums waits for the last batch before the clock is read.
  metrics = {name: metrics_from_sums(sums) for name, sums in totals.items()}
  end = time.perf_counter()
  count = next(iter(metrics.values()))['num_examples']
  return PassResult(metrics=metrics, predictions=rows,
                    timed_examples=int(round(count - first_count)),
                    timed_seconds=end - start, pass_seconds=end - pass_start)


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


def _normalisation_name(mean_rgb, std_rgb) -> str:
  known = {(arch.IMAGENET_MEAN, arch.IMAGENET_STD): 'ImageNet mean/std',
           (arch.LITE_MEAN, arch.LITE_STD): '(x - 127) / 128',
           (arch.ADVPROP_MEAN, arch.ADVPROP_STD): 'AdvProp [-1, 1]'}
  for (mean, std), name in known.items():
    if np.allclose(mean_rgb, mean) and np.allclose(std_rgb, std):
      return name
  return (f'mean {[round(float(v), 3) for v in mean_rgb]} std '
          f'{[round(float(v), 3) for v in std_rgb]}')


def _network_words(spec: arch.ArchSpec, mean_rgb, std_rgb,
                   padding: str) -> dict[str, str]:
  name = spec.name
  if spec.phi is not None:  # The rule's name does not say alpha and beta.
    name += (f' (width {spec.width_coefficient:.4g}, depth '
             f'{spec.depth_coefficient:.4g})')
  return dict(network=name, resolution=f'{spec.resolution}px',
              normalisation=_normalisation_name(mean_rgb, std_rgb),
              padding=f'{padding} padding')


def describe_scoring(config: ml_collections.ConfigDict,
                     meta: Mapping[str, Any], net: network.Network,
                     weights: str) -> dict[str, Any]:
  """What eval scores: the checkpoint's network, and where the config differs.

  Returns:
    dict(line=the one-line summary eval.py logs first, scored=the network,
    resolution, normalisation and padding scored, config_differences=
    {field: (config's, scored)}, source=meta's source).
  """
  mean_rgb, std_rgb = net.normalization
  padding = meta.get('padding') or config.model.padding
  scored = _network_words(net.spec, mean_rgb, std_rgb, padding)
  try:
    asked_spec = arch.resolve(config.model.to_dict())
    asked = _network_words(asked_spec, asked_spec.mean_rgb,
                           asked_spec.std_rgb, config.model.padding)
  except ValueError:
    asked = dict(network=str(config.model.variant))
  differences = {key: (asked[key], scored[key]) for key in asked
                 if asked[key] != scored[key]}
  if config.model.resolution is not None:
    # The resolution the checkpoint's own model section gives.
    try:
      own_resolution = arch.resolve(
          config.model.to_dict() | dict(meta.get('model') or {})).resolution
    except ValueError:
      own_resolution = None
    if own_resolution != net.spec.resolution:
      scored['resolution'] += (f' (config.model.resolution; the checkpoint\'s '
                               f'own is {own_resolution}px)')
  source = meta.get('source') or 'unrecorded'
  line = (f'Scoring {scored["network"]} at {scored["resolution"]} '
          f'({scored["normalisation"]} input, {scored["padding"]}, '
          f'{"EMA" if weights == "ema" else "raw"} weights; source: '
          f'{source})')
  if differences:
    line += (f'; config asks for '
             f'{", ".join(value[0] for value in differences.values())}; '
             f'checkpoint holds '
             f'{", ".join(value[1] for value in differences.values())}: '
             "scoring the checkpoint's network")
  return dict(line=line + '.', scored=scored,
              config_differences={key: list(value)
                                  for key, value in differences.items()},
              source=source)


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
    dict(top1, top5, loss, num_examples, images_per_sec (real examples after
    the compiling first batch), eval_seconds (the whole pass), weights, step,
    scoring (the line logged before scoring: network, resolution,
    normalisation, weights, source, and where the config differs), ...).
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
  scoring = describe_scoring(config, meta, net, weights)
  logging.info('%s', scoring['line'])
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
      images_per_sec=result.images_per_sec,
      eval_seconds=result.pass_seconds,
      scoring=scoring['line'],
      scored=scoring['scored'],
      config_differences=scoring['config_differences'],
      source=scoring['source'])


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
