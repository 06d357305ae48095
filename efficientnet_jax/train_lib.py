"""The training loop around steps.py: data, mesh, checkpoints, metrics, resume.

The loop is data parallel over one `jax.sharding.Mesh` with a 'data' axis
spanning every device of every process: the state is replicated, batches are
sharded on their leading axis, and `jax.jit` partitions the step. Batch norm
therefore sees the global batch (synchronised BN) unless the model section sets
`bn_group_size` (docs/reference.md §5.7).

`train_and_evaluate(config, workdir)` resumes from the newest checkpoint in the
workdir, stops cleanly on SIGTERM (saving first) and refuses a non-finite loss
without saving it. eval.py's checkpoint scoring lives in eval_lib.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from efficientnet_jax import arch
from efficientnet_jax import checkpoints
from efficientnet_jax import host_memory
from efficientnet_jax import input_pipeline
from efficientnet_jax import models
from efficientnet_jax import optim
from efficientnet_jax import steps

P = jax.sharding.PartitionSpec
Batch = Mapping[str, Any]
METRICS_FILE = 'metrics.jsonl'


class ConfigError(ValueError):
  """A config or workdir that cannot work; the message says how to fix it."""


def checkpoint_tree(state: steps.TrainState) -> dict[str, Any]:
  """The `state` item of the checkpoint format (see checkpoints.py)."""
  return dict(step=state.step, params=state.params,
              batch_stats=state.batch_stats, opt_state=state.opt_state,
              ema_params=state.ema_params,
              ema_batch_stats=state.ema_batch_stats)


def create_mesh(devices: Any = None) -> jax.sharding.Mesh:
  """A one-axis ('data') mesh over every device of every process."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), ('data',))


def shard_batch(batch: Batch, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Host (per-process) numpy arrays -> global arrays sharded on 'data'."""
  sharding = jax.sharding.NamedSharding(mesh, P('data'))

  def to_global(x):
    x = np.asarray(x)
    if x.dtype == np.int64:  # The eval 'index'; jax defaults to 32 bits.
      x = x.astype(np.int32)
    return jax.make_array_from_process_local_data(sharding, x)

  return {key: to_global(x) for key, x in batch.items()}


def is_time(step: int, every: int, total: int) -> bool:
  """True every `every` steps (never when 0) and on the last step."""
  return step == total or (every > 0 and step % every == 0)


def normalisation(spec: arch.ArchSpec, meta: Mapping[str, Any] | None
                  ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean_rgb, std_rgb): a checkpoint's own (AdvProp, Lite) or the spec's."""
  if meta and meta.get('mean_rgb') is not None:
    return tuple(meta['mean_rgb']), tuple(meta['std_rgb'])
  return tuple(spec.mean_rgb), tuple(spec.std_rgb)


def check_batch_size(batch_size: int, name: str) -> int:
  """The per-process batch; refuses sizes the devices cannot split evenly."""
  devices = jax.device_count()
  if batch_size <= 0 or batch_size % devices:
    raise ConfigError(
        f'config.{name}={batch_size} is not divisible by the {devices} '
        f'devices; set --config.{name} to a multiple of {devices}.')
  return batch_size // jax.process_count()


def load_pretrained(state: steps.TrainState,
                    directory: str) -> steps.TrainState:
  """Starts a state from a checkpoint's (EMA) weights for fine-tuning.

  Every tensor must fit except the classifier, which is kept freshly
  initialised when the number of classes differs.
  """
  variables, _ = checkpoints.load_variables(directory)
  fresh = dict(params=state.params, batch_stats=state.batch_stats)
  params = dict(variables['params'])
  if np.shape(params['classifier']['kernel']) != np.shape(
      state.params['classifier']['kernel']):
    logging.info('Fine-tuning: new %d-class classifier (checkpoint has %d).',
                 state.params['classifier']['kernel'].shape[-1],
                 np.shape(params['classifier']['kernel'])[-1])
    params['classifier'] = jax.device_get(state.params['classifier'])
  loaded = dict(params=params, batch_stats=variables['batch_stats'])
  mismatch = checkpoints.first_mismatch(fresh, loaded)
  if mismatch:
    raise ConfigError(f'config.init_checkpoint={directory!r} does not fit the '
                      f'configured model: {mismatch}. Set --config.model to '
                      'the variant it was trained as.')
  loaded = jax.tree.map(jnp.asarray, loaded)
  return state.replace(params=loaded['params'],
                       batch_stats=loaded['batch_stats'],
                       ema_params=loaded['params'],
                       ema_batch_stats=loaded['batch_stats'],
                       opt_state=state.tx.init(loaded['params']))


def check_workdir_model(workdir: str, step: int, meta: Mapping[str, Any],
                        spec: arch.ArchSpec, num_classes: int) -> None:
  """Refuses to resume a checkpoint of another network (nothing is touched)."""
  saved_spec = arch.resolve(meta['model'])
  if (network_signature(saved_spec) != network_signature(spec) or
      meta['num_classes'] != num_classes):
    raise ConfigError(
        f'Workdir {workdir!r} holds a checkpoint (step {step}) of '
        f'{saved_spec.name} at {saved_spec.resolution}px with '
        f'{meta["num_classes"]} classes, but the config asks for {spec.name} '
        f'at {spec.resolution}px with {num_classes} classes; pass a new '
        '--workdir, or the config that run was started with.')


def network_signature(spec: arch.ArchSpec) -> tuple[Any, ...]:
  """What fixes the variables' shapes and the input size (not regularisers)."""
  blocks = tuple(dataclasses.replace(b, drop_path_rate=0.0)
                 for b in spec.blocks)
  return (spec.family, spec.stem_filters, spec.head_filters, blocks,
          spec.resolution)


@contextlib.contextmanager
def sigterm_flag() -> Iterator[threading.Event]:
  """An Event set by SIGTERM (preemption) while inside the context.

  Single-process runs only, and restores the previous handler on exit. With
  several processes every one of them must stop at the same step (saving is
  collective), which jax.distributed's preemption service arranges and orbax's
  `reached_preemption` reports; a Python handler would replace its own. Off
  the main thread signals cannot be caught at all.
  """
  event = threading.Event()
  if (jax.process_count() > 1 or
      threading.current_thread() is not threading.main_thread()):
    yield event
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: event.set())
  try:
    yield event
  finally:
    signal.signal(signal.SIGTERM, previous)


def write_metrics(writer: metric_writers.MetricWriter, workdir: str,
                  step: int, scalars: Mapping[str, float]) -> None:
  """TensorBoard/log scalars plus one JSON line (process 0 writes the file)."""
  writer.write_scalars(step, scalars)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, METRICS_FILE), 'a') as f:
      f.write(json.dumps(dict(step=step, **{k: float(v) for k, v in
                                             scalars.items()})) + '\n')


def summarise_train_metrics(history: list[tuple[int, Any]]) -> dict[str, float]:
  """Means over the interval; raises on the first non-finite loss."""
  logged_steps = [step for step, _ in history]
  values = jax.device_get([metrics for _, metrics in history])
  for step, metrics in zip(logged_steps, values):
    if not np.isfinite(metrics['loss']):
      raise FloatingPointError(
          f'Non-finite training loss ({metrics["loss"]}) at step {step + 1}.')
  summary = {f'train/{name}': float(np.mean([m[name] for m in values]))
             for name in values[0]}
  summary['train/learning_rate'] = float(values[-1]['learning_rate'])
  return summary


def evaluate_variables(eval_fn: Callable[..., dict[str, jax.Array]],
                       variables: Any, eval_iter: Iterator[Batch],
                       mesh: jax.sharding.Mesh) -> dict[str, float]:
  """top1, top5 (fractions), loss (mean) and num_examples over one pass."""
  totals = None
  for batch in eval_iter:
    sums = eval_fn(variables, shard_batch(
        {k: batch[k] for k in ('image', 'label', 'mask')}, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ConfigError('The eval split yielded no batches; check '
                      'config.eval_split and config.data_dir.')
  totals = jax.device_get(totals)
  count = float(totals['count'])
  return dict(top1=float(totals['top1']) / count,
              top5=float(totals['top5']) / count,
              loss=float(totals['loss']) / count,
              num_examples=int(round(count)))


@dataclasses.dataclass(frozen=True)
class Setup:
  """What both train and eval derive from a config and a dataset."""
  mesh: jax.sharding.Mesh
  spec: arch.ArchSpec
  model: models.EfficientNet
  num_classes: int
  pipeline_args: dict[str, Any]  # resolution, resize, normalisation.


def make_setup(model_config: Mapping[str, Any], num_classes: int,
               meta: Mapping[str, Any] | None) -> Setup:
  try:
    spec = arch.resolve(model_config)
    model = models.from_config(model_config, num_classes)
  except ValueError as error:  # An unknown variant, policy, padding...
    raise ConfigError(f'config.model: {error}') from None
  mean_rgb, std_rgb = normalisation(spec, meta)
  return Setup(
      mesh=create_mesh(), spec=spec, model=model,
      num_classes=num_classes,
      pipeline_args=dict(resolution=spec.resolution,
                         resize_method=spec.resize_method,
                         mean_rgb=mean_rgb, std_rgb=std_rgb))


def state_layout(setup: Setup, tx: optax.GradientTransformation,
                 init_rng: jax.Array) -> tuple[steps.TrainState, Any]:
  """(abstract state, its shardings): the state replicated over the mesh."""
  replicated = jax.sharding.NamedSharding(setup.mesh, P())
  abstract = jax.eval_shape(functools.partial(
      steps.create_train_state, model=setup.model, tx=tx), init_rng)
  return abstract, jax.tree.map(lambda _: replicated, abstract)


def initial_state(config: ml_collections.ConfigDict, setup: Setup,
                  tx: optax.GradientTransformation, init_rng: jax.Array, *,
                  mngr: ocp.CheckpointManager, start_step: int,
                  layout: tuple[steps.TrainState, Any]) -> steps.TrainState:
  """The replicated state: restored, fine-tuned from a checkpoint, or fresh.

  `layout` is state_layout's (abstract state, shardings).
  """
  create = functools.partial(steps.create_train_state, model=setup.model,
                             tx=tx)
  abstract, shardings = layout
  if start_step:
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        checkpoint_tree(abstract), checkpoint_tree(shardings))
    restored = mngr.restore(start_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))[checkpoints.STATE]
    logging.info('Resumed from %s at step %d.', mngr.directory, start_step)
    return abstract.replace(**restored)
  # Initialisation runs once, so compile it for compile speed (a third less
  # time for B0 on CPU), not for run speed.
  state = jax.jit(create, out_shardings=shardings).lower(init_rng).compile(
      compiler_options=steps.RUN_ONCE_COMPILER_OPTIONS)(init_rng)
  if config.init_checkpoint:
    state = jax.device_put(load_pretrained(state, config.init_checkpoint),
                           shardings)
  return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       data: Any = None) -> dict[str, Any]:
  """Trains (or resumes) per `config` in `workdir`, evaluating as it goes.

  Args:
    config: a recipe from configs/ (see configs/imagenet.py for the fields).
    workdir: checkpoints, TensorBoard events, metrics.jsonl, config.json.
    data: the input pipeline module (tests pass a synthetic one).

  Returns:
    dict(step=..., preempted=bool, and the last eval metrics).
  """
  data = input_pipeline if data is None else data
  host_memory.release_after_each_compile()
  workdir = os.path.abspath(workdir)
  local_batch_size = check_batch_size(config.batch_size, 'batch_size')
  local_eval_batch_size = check_batch_size(config.eval_batch_size,
                                           'eval_batch_size')
  info = data.dataset_info(config)
  mngr = checkpoints.manager(workdir, max_to_keep=config.keep_checkpoints,
                             enable_async=True)
  start_step = mngr.latest_step() or 0
  resumed_meta = None
  if start_step:
    resumed_meta = mngr.restore(start_step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))[checkpoints.META]
  init_meta = None
  if config.init_checkpoint and not start_step:
    _, init_meta = checkpoints.restore_raw(config.init_checkpoint)
  setup = make_setup(config.model, info.num_classes, resumed_meta or init_meta)
  if resumed_meta:
    check_workdir_model(workdir, start_step, resumed_meta, setup.spec,
                        info.num_classes)

  steps_per_epoch = info.num_train_examples / config.batch_size  # TPU-MAIN.
  total_steps = config.num_train_steps
  if total_steps is None:
    # TPU-MAIN train_steps: int(epochs * images / batch).
    total_steps = int(config.num_epochs * steps_per_epoch)
  eval_every = max(1, int(round(config.eval_every_epochs * steps_per_epoch)))
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch,
                                                   config.batch_size)
  tx = optim.create_optimizer(config, learning_rate_fn)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  # The tf.data seeds derive from config.seed inside the input pipeline.

  replicated = jax.sharding.NamedSharding(setup.mesh, P())
  abstract_state, state_shardings = state_layout(setup, tx, init_rng)
  data_sharding = jax.sharding.NamedSharding(setup.mesh, P('data'))
  p_train_step = jax.jit(
      functools.partial(steps.train_step, learning_rate_fn=learning_rate_fn,
                        label_smoothing=config.label_smoothing,
                        ema_decay=config.ema_decay),
      in_shardings=(state_shardings, data_sharding, replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=0, compiler_options=steps.step_compiler_options())
  train_iter = data.create_train_iter(
      config, local_batch_size=local_batch_size, start_step=start_step,
      **setup.pipeline_args)
  # The train step compiles at its first call, after the state exists:
  # compiling it in a thread meanwhile saved ~2 s of B0's 35 s to first step
  # but overlapped two compilations' memory (peak RSS +0.7 GB, more than
  # the step itself needs).
  state = initial_state(config, setup, tx, init_rng, mngr=mngr,
                        start_step=start_step,
                        layout=(abstract_state, state_shardings))
  meta = dict(model=config.model.to_dict(), num_classes=info.num_classes,
              padding=config.model.padding,
              mean_rgb=list(setup.pipeline_args['mean_rgb']),
              std_rgb=list(setup.pipeline_args['std_rgb']),
              source=f'train.py {config.dataset}')

  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))
    with open(os.path.join(workdir, 'arch_spec.json'), 'w') as f:
      json.dump(setup.spec.to_dict(), f, indent=2)
  logging.info('%s: %s parameters, %dpx, %d classes; %d steps of %d images '
               '(%.2f steps/epoch) on %d devices.', setup.spec.name,
               f'{models.count_params(state.params):,}', setup.spec.resolution,
               info.num_classes, total_steps, config.batch_size,
               steps_per_epoch, jax.device_count())

  p_eval_step = jax.jit(functools.partial(steps.eval_step, setup.model),
                        out_shardings=replicated,
                        compiler_options=steps.step_compiler_options())

  def evaluate_both(step):
    results = {}
    for prefix, use_ema in (('eval', False), ('eval_ema', True)):
      variables = checkpoints.model_variables(
          dict(params=state.params, batch_stats=state.batch_stats,
               ema_params=state.ema_params,
               ema_batch_stats=state.ema_batch_stats), use_ema=use_ema)
      eval_iter = data.create_eval_iter(
          config, local_batch_size=local_eval_batch_size,
          **setup.pipeline_args)
      metrics = evaluate_variables(p_eval_step, variables, eval_iter,
                                   setup.mesh)
      results.update({f'{prefix}/{k}': v for k, v in metrics.items()})
    logging.info('Eval at step %d: top-1 %.4f (EMA %.4f), top-5 %.4f '
                 '(EMA %.4f) on %d examples.', step, results['eval/top1'],
                 results['eval_ema/top1'], results['eval/top5'],
                 results['eval_ema/top5'], results['eval/num_examples'])
    return results

  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  if not start_step:
    writer.write_hparams(flatten_config(config))
  report = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                           writer=writer)
  hooks = [report]
  if config.profile_steps and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(
        logdir=workdir, num_profile_steps=config.profile_steps))

  history = []
  results = dict(step=start_step, preempted=False)
  interval_start, interval_step = time.perf_counter(), start_step
  with metric_writers.ensure_flushes(writer), mngr, sigterm_flag() as sigterm:
    for step, batch in zip(range(start_step, total_steps), train_iter):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = p_train_step(state, shard_batch(batch, setup.mesh),
                                      train_rng)
      history.append((step, metrics))
      done = step + 1
      for hook in hooks:
        hook(done)
      preempted = sigterm.is_set() or mngr.reached_preemption(done)
      save = preempted or is_time(done, config.checkpoint_every_steps,
                                  total_steps)
      evaluate = is_time(done, eval_every, total_steps)
      if save or evaluate or is_time(done, config.log_every_steps,
                                     total_steps):
        try:
          summary = summarise_train_metrics(history)
        except FloatingPointError as e:
          raise FloatingPointError(
              f'{e} Stopped without saving it; the last good checkpoint is '
              f'step {mngr.latest_step() or "none"} in {workdir}. Lower '
              '--config.learning_rate or check the input data.') from None
        elapsed = time.perf_counter() - interval_start
        done_steps = done - interval_step
        summary.update({
            'perf/steps_per_sec': done_steps / elapsed,
            'perf/images_per_sec': done_steps * config.batch_size / elapsed,
            'perf/step_time_ms': 1000 * elapsed / done_steps})
        write_metrics(writer, workdir, done, summary)
        logging.info('Step %d/%d: loss %.4f, accuracy %.4f, lr %.5f, '
                     '%.1f images/s.', done, total_steps,
                     summary['train/loss'], summary['train/accuracy'],
                     summary['train/learning_rate'],
                     summary['perf/images_per_sec'])
        history = []
      if evaluate:
        with report.timed('eval'):
          eval_results = evaluate_both(done)
        write_metrics(writer, workdir, done, eval_results)
        results.update(eval_results)
      if save:
        mngr.save(done, args=ocp.args.Composite(
            state=ocp.args.StandardSave(checkpoint_tree(state)),
            meta=ocp.args.JsonSave(meta)))
      results['step'] = done
      if save or evaluate:
        # Keep eval and checkpoint time out of the next interval's speed.
        interval_start, interval_step = time.perf_counter(), done
      if preempted:
        results['preempted'] = True
        logging.warning('Preempted (SIGTERM) at step %d; saved a checkpoint '
                        'in %s. Rerun the same command to resume.', done,
                        workdir)
        break
    mngr.wait_until_finished()
  if jax.process_index() == 0:
    logging.info('TensorBoard logs: %s (tensorboard --logdir %s); metrics: '
                 '%s; checkpoint: %s (step %d).', workdir, workdir,
                 os.path.join(workdir, METRICS_FILE), workdir, results['step'])
  return results


def flatten_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'model.phi': ..., 'batch_size': ...} for hparams (None as 'None')."""
  flat = {}
  for key, value in flax.traverse_util.flatten_dict(
      config.to_dict(), sep='.').items():
    flat[key] = value if isinstance(value, (int, float, str, bool)) else str(
        value)
  return flat
