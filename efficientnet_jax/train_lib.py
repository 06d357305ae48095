"""The training loop around steps.py: data, checkpoints, metrics, resume.

The loop is data parallel over one `jax.sharding.Mesh` with a 'data' axis
spanning every device of every process (sharding.py): the state is
replicated, batches are sharded on their leading axis, and `jax.jit`
partitions the step. Batch norm therefore sees the global batch (synchronised
BN) unless the model section sets `bn_group_size` (docs/reference.md §5.7).

`train_and_evaluate(config, workdir)` reads as its steps: plan the run from the
config and dataset, find what the workdir already holds, build the network,
restore or initialise the state, then the train loop, which evaluates, logs
and saves as it goes. It resumes from the newest checkpoint in the workdir,
stops cleanly on SIGTERM (saving first) and refuses a non-finite loss without
saving it. eval.py's checkpoint scoring lives in eval_lib.py.

With progressive learning (config.progressive, progressive.py) the loop runs
stage by stage: at each stage's first step it rebuilds the input pipeline at
the stage's image size and RandAugment magnitude, and compiles the train step
once for the stage's size, mixing and dropout; state, optimizer, EMA and
schedule carry on untouched. Evaluation stays at the network's resolution.
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
from typing import Any, Iterator, Mapping

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
from efficientnet_jax import errors
from efficientnet_jax import eval_lib
from efficientnet_jax import input_pipeline
from efficientnet_jax import models
from efficientnet_jax import network
from efficientnet_jax import optim
from efficientnet_jax import progressive
from efficientnet_jax import sharding
from efficientnet_jax import steps

Batch = Mapping[str, Any]
METRICS_FILE = 'metrics.jsonl'


def checkpoint_tree(state: steps.TrainState) -> dict[str, Any]:
  """The `state` item of the checkpoint format (see checkpoints.py)."""
  return dict(step=state.step, params=state.params,
              batch_stats=state.batch_stats, opt_state=state.opt_state,
              ema_params=state.ema_params,
              ema_batch_stats=state.ema_batch_stats)


def is_time(step: int, every: int, total: int) -> bool:
  """True every `every` steps (never when 0) and on the last step."""
  return step == total or (every > 0 and step % every == 0)


@dataclasses.dataclass(frozen=True)
class Plan:
  """The run's sizes and schedule, from the config and the dataset."""
  local_batch_size: int
  local_eval_batch_size: int
  num_classes: int
  steps_per_epoch: float
  total_steps: int
  eval_every: int
  learning_rate_fn: optim.LearningRateFn
  tx: optax.GradientTransformation


def plan_run(config: ml_collections.ConfigDict, data: Any) -> Plan:
  """Per-process batch sizes, step counts and the optimizer of a run.

  The batch sizes are checked first: reading the dataset's info may prepare
  it.
  """
  local_batch_size = sharding.local_batch_size(config.batch_size,
                                               'batch_size')
  local_eval_batch_size = sharding.local_batch_size(config.eval_batch_size,
                                                    'eval_batch_size')
  check_grad_accum_steps(config.grad_accum_steps, config.batch_size)
  info = data.dataset_info(config)
  steps_per_epoch = info.num_train_examples / config.batch_size  # TPU-MAIN.
  total_steps = config.num_train_steps
  if total_steps is None:
    # TPU-MAIN train_steps: int(epochs * images / batch).
    total_steps = int(config.num_epochs * steps_per_epoch)
  learning_rate_fn = optim.create_learning_rate_fn(config, steps_per_epoch,
                                                   config.batch_size)
  return Plan(
      local_batch_size=local_batch_size,
      local_eval_batch_size=local_eval_batch_size,
      num_classes=info.num_classes,
      steps_per_epoch=steps_per_epoch,
      total_steps=total_steps,
      eval_every=eval_interval(config.eval_every_epochs, steps_per_epoch),
      learning_rate_fn=learning_rate_fn,
      tx=optim.create_optimizer(config, learning_rate_fn))


def check_grad_accum_steps(grad_accum_steps: int, batch_size: int) -> None:
  """Each device's share of the batch must split into the micro-batches."""
  per_device = batch_size // jax.device_count()
  if grad_accum_steps < 1 or per_device % grad_accum_steps:
    raise errors.ConfigError(
        f'config.grad_accum_steps={grad_accum_steps} does not split the '
        f'{per_device} examples each of the {jax.device_count()} devices '
        f'takes of config.batch_size={batch_size}; use a divisor of '
        f'{per_device}.')


def eval_interval(eval_every_epochs: float, steps_per_epoch: float) -> int:
  """Steps between periodic evals; 0 (no periodic eval) when the epochs <= 0.

  The last step is always evaluated (is_time).
  """
  if eval_every_epochs <= 0:
    return 0
  return max(1, int(round(eval_every_epochs * steps_per_epoch)))


def load_pretrained(state: steps.TrainState,
                    directory: str) -> steps.TrainState:
  """Starts a state from a checkpoint's (EMA) weights for fine-tuning.

  Every tensor must fit except the classifier, which is kept freshly
  initialised when the number of classes differs.
  """
  variables, _ = checkpoints.load_variables(directory)
  fresh = dict(params=state.params, batch_stats=state.batch_stats)
  params = dict(variables['params'])
  classes = state.params['classifier']['kernel'].shape[-1]
  saved_classes = np.shape(params['classifier']['kernel'])[-1]
  if np.shape(params['classifier']['kernel']) != np.shape(
      state.params['classifier']['kernel']):
    params['classifier'] = jax.device_get(state.params['classifier'])
    head = (f'the classifier re-initialised for {classes} classes (the '
            f'checkpoint has {saved_classes})')
  else:
    head = f'its {classes}-class classifier included'
  logging.info('Fine-tuning from %s: every tensor loaded, %s.', directory,
               head)
  loaded = dict(params=params, batch_stats=variables['batch_stats'])
  mismatch = checkpoints.first_mismatch(fresh, loaded)
  if mismatch:
    raise errors.ConfigError(
        f'config.init_checkpoint={directory!r} does not fit the configured '
        f'model: {mismatch}. Set --config.model to the variant it was '
        'trained as.')
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
    raise errors.ConfigError(
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


def saved_meta(config: ml_collections.ConfigDict,
               mngr: ocp.CheckpointManager) -> tuple[int, Any]:
  """(step to start from, the meta that fixes the network's input format).

  The meta of the workdir's newest checkpoint when resuming, else that of
  config.init_checkpoint when fine-tuning, else None.
  """
  start_step = mngr.latest_step() or 0
  if start_step:
    return start_step, mngr.restore(start_step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))[checkpoints.META]
  if config.init_checkpoint:
    return 0, checkpoints.restore_raw(config.init_checkpoint)[1]
  return 0, None


def state_layout(model: models.EfficientNet, tx: optax.GradientTransformation,
                 init_rng: jax.Array,
                 mesh: jax.sharding.Mesh) -> tuple[steps.TrainState, Any]:
  """(abstract state, its shardings): the state replicated over the mesh."""
  abstract = jax.eval_shape(functools.partial(
      steps.create_train_state, model=model, tx=tx), init_rng)
  replicated = sharding.replicated(mesh)
  return abstract, jax.tree.map(lambda _: replicated, abstract)


def initial_state(config: ml_collections.ConfigDict, model: models.EfficientNet,
                  tx: optax.GradientTransformation, init_rng: jax.Array, *,
                  mngr: ocp.CheckpointManager, start_step: int,
                  layout: tuple[steps.TrainState, Any]) -> steps.TrainState:
  """The replicated state: restored, fine-tuned from a checkpoint, or fresh.

  `layout` is state_layout's (abstract state, shardings).
  """
  abstract, shardings = layout
  if start_step:
    target = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        checkpoint_tree(abstract), checkpoint_tree(shardings))
    restored = mngr.restore(start_step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))[checkpoints.STATE]
    logging.info('Resumed from %s at step %d.', mngr.directory, start_step)
    return abstract.replace(**restored)
  create = functools.partial(steps.create_train_state, model=model, tx=tx)
  # Initialisation runs once, so compile it for compile speed, not run speed.
  state = jax.jit(create, out_shardings=shardings).lower(init_rng).compile(
      compiler_options=steps.RUN_ONCE_COMPILER_OPTIONS)(init_rng)
  if config.init_checkpoint:
    state = jax.device_put(load_pretrained(state, config.init_checkpoint),
                           shardings)
  return state


def checkpoint_meta(config: ml_collections.ConfigDict,
                    net: network.Network) -> dict[str, Any]:
  """The `meta` item every checkpoint of this run carries."""
  return dict(model=config.model.to_dict(), num_classes=net.num_classes,
              padding=config.model.padding,
              mean_rgb=list(net.normalization[0]),
              std_rgb=list(net.normalization[1]),
              source=f'train.py {config.dataset}')


def write_run_files(config: ml_collections.ConfigDict, spec: arch.ArchSpec,
                    workdir: str) -> None:
  """config.json and arch_spec.json in the workdir (process 0)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  with open(os.path.join(workdir, 'arch_spec.json'), 'w') as f:
    json.dump(spec.to_dict(), f, indent=2)


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
  if jax.process_count() > 1:
    check_preemption_service()
    yield event
    return
  if threading.current_thread() is not threading.main_thread():
    yield event
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: event.set())
  try:
    yield event
  finally:
    signal.signal(signal.SIGTERM, previous)


def check_preemption_service() -> None:
  """Refuses a multi-process run that SIGTERM could not stop cleanly.

  Every process must save at the same step, which only jax.distributed's
  preemption service arranges (orbax's `reached_preemption` asks it). A job
  whose processes were joined another way (a TPU runtime on its own) has no
  such service, and a SIGTERM would kill it without a save.
  """
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  if distributed.global_state.preemption_sync_manager is None:
    raise errors.ConfigError(
        f'{jax.process_count()} processes but no jax.distributed client, so '
        'a SIGTERM could not save on every process; start train.py with '
        '--distributed (or set JAX_COORDINATOR_ADDRESS) on every host.')


def write_metrics(writer: metric_writers.MetricWriter, workdir: str,
                  step: int, scalars: Mapping[str, float]) -> None:
  """TensorBoard/log scalars plus one JSON line (process 0 writes the file)."""
  writer.write_scalars(step, scalars)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, METRICS_FILE), 'a') as f:
      f.write(json.dumps(dict(step=step, **{k: float(v) for k, v in
                                             scalars.items()})) + '\n')


# What the train step reports and may diverge in, as the error names it.
WATCHED_QUANTITIES = (('loss', 'training loss'),
                      ('grad_norm', "gradients' global norm"),
                      ('param_norm', "parameters' global norm"),
                      ('batch_stats_finite', 'batch-norm statistics'))


def summarise_train_metrics(history: list[tuple[int, Any]]) -> dict[str, float]:
  """Means over the interval; raises on the first non-finite quantity.

  A run can diverge while its loss stays finite (the batch-norm statistics
  or the parameters overflow first), so every watched quantity is checked.
  """
  logged_steps = [step for step, _ in history]
  values = jax.device_get([metrics for _, metrics in history])
  for step, metrics in zip(logged_steps, values):
    for name, what in WATCHED_QUANTITIES:
      value = metrics[name]
      if not np.isfinite(value) or (name == 'batch_stats_finite' and
                                    not value):
        shown = 'NaN/inf' if name == 'batch_stats_finite' else value
        raise FloatingPointError(
            f'Non-finite {what} ({shown}) at step {step + 1}.')
  summary = {f'train/{name}': float(np.mean([m[name] for m in values]))
             for name in values[0] if name != 'batch_stats_finite'}
  summary['train/learning_rate'] = float(values[-1]['learning_rate'])
  return summary


def evaluate_state(state: steps.TrainState, *, eval_fn: Any,
                   eval_iter: Iterator[Batch],
                   mesh: jax.sharding.Mesh) -> dict[str, float]:
  """Raw and EMA weights in one pass: 'eval/...' and 'eval_ema/...'."""
  tree = dict(params=state.params, batch_stats=state.batch_stats,
              ema_params=state.ema_params,
              ema_batch_stats=state.ema_batch_stats)
  variables = {
      'eval': checkpoints.model_variables(tree, use_ema=False),
      'eval_ema': checkpoints.model_variables(tree, use_ema=True)}
  result = eval_lib.evaluate_pass(eval_fn, variables, eval_iter, mesh)
  return {f'{prefix}/{name}': value
          for prefix, metrics in result.metrics.items()
          for name, value in metrics.items()}


def plan_stages(config: ml_collections.ConfigDict, total_steps: int,
                spec: arch.ArchSpec) -> tuple[progressive.Stage, ...]:
  """The run's stages; one, with the run's own settings, without staging."""
  return progressive.build_stages(
      config.progressive, total_steps=total_steps,
      image_size=config.train_image_size or spec.resolution,
      randaugment_magnitude=config.randaugment_magnitude,
      mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha,
      dropout_rate=spec.dropout_rate)


def stage_model(model: models.EfficientNet,
                stage: progressive.Stage) -> models.EfficientNet:
  """The network with the stage's head dropout (the same variables)."""
  if stage.dropout_rate == model.spec.dropout_rate:
    return model
  return model.clone(spec=dataclasses.replace(
      model.spec, dropout_rate=stage.dropout_rate))


def stage_config(config: ml_collections.ConfigDict,
                 stage: progressive.Stage) -> ml_collections.ConfigDict:
  """The config the stage's input pipeline reads (its RandAugment magnitude).

  A copy: the run's config is never changed.
  """
  if stage.randaugment_magnitude == config.randaugment_magnitude:
    return config
  fields = config.to_dict()
  fields['randaugment_magnitude'] = stage.randaugment_magnitude
  return ml_collections.ConfigDict(fields)


@dataclasses.dataclass(frozen=True)
class Loop:
  """What the train loop runs and where it writes; nothing of it changes."""
  config: ml_collections.ConfigDict
  plan: Plan
  workdir: str
  mesh: jax.sharding.Mesh
  jitted: steps.JittedSteps
  train_rng: jax.Array
  meta: dict[str, Any]
  eval_iter_fn: Any  # () -> a fresh eval iterator.
  stages: tuple[progressive.Stage, ...]
  # (stage, start_step) -> that stage's train iterator from start_step.
  train_iter_fn: Any
  # (stage, state) -> (state, the stage's jitted, not yet compiled, step).
  train_step_fn: Any


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
  workdir = os.path.abspath(workdir)
  plan = plan_run(config, data)
  mngr = checkpoints.manager(workdir, max_to_keep=config.keep_checkpoints,
                             enable_async=True)
  start_step, meta = saved_meta(config, mngr)
  net = network.build(config.model, plan.num_classes, meta,
                      execution=config.execution)
  if start_step:
    check_workdir_model(workdir, start_step, meta, net.spec, net.num_classes)

  mesh = sharding.create_mesh()
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  # The tf.data seeds derive from config.seed inside the input pipeline.
  layout = state_layout(net.model, plan.tx, init_rng, mesh)
  stages = plan_stages(config, plan.total_steps, net.spec)
  jit_stage = functools.partial(
      jit_stage_step, config=config, model=net.model, mesh=mesh,
      shardings=layout[1], learning_rate_fn=plan.learning_rate_fn)
  # Eval only: each stage jits its own train step (jit_stage_step).
  jitted = steps.jit_steps(net.model, mesh)

  def train_iter_fn(stage, first_step):
    return data.create_train_iter(
        stage_config(config, stage), local_batch_size=plan.local_batch_size,
        start_step=first_step,
        **dict(net.pipeline_args, resolution=stage.image_size))

  train_iter = train_iter_fn(progressive.stage_for_step(start_step, stages),
                             start_step)
  # The train step compiles at its first call, after the state exists, so
  # that the two compilations' memory does not overlap.
  state = initial_state(config, net.model, plan.tx, init_rng, mngr=mngr,
                        start_step=start_step, layout=layout)
  write_run_files(config, net.spec, workdir)
  logging.info('%s: %s parameters, %dpx, %d classes; %d steps of %d images '
               '(%.2f steps/epoch) on %d devices.', net.spec.name,
               f'{models.count_params(state.params):,}', net.spec.resolution,
               net.num_classes, plan.total_steps, config.batch_size,
               plan.steps_per_epoch, jax.device_count())
  loop = Loop(
      config=config, plan=plan, workdir=workdir, mesh=mesh, jitted=jitted,
      train_rng=train_rng, meta=checkpoint_meta(config, net),
      eval_iter_fn=functools.partial(
          data.create_eval_iter, config,
          local_batch_size=plan.local_eval_batch_size, **net.pipeline_args),
      stages=stages, train_iter_fn=train_iter_fn, train_step_fn=jit_stage)
  return train_loop(loop, state, train_iter, mngr=mngr, start_step=start_step)


def jit_stage_step(stage: progressive.Stage, state: steps.TrainState, *,
                   config: ml_collections.ConfigDict,
                   model: models.EfficientNet, mesh: jax.sharding.Mesh,
                   shardings: Any, learning_rate_fn: optim.LearningRateFn
                   ) -> tuple[steps.TrainState, Any]:
  """(state applying the stage's model, the stage's jitted train step).

  The stage's dropout lives in the model, which is the state's static
  apply_fn; the variables are the same for every stage.
  """
  model = stage_model(model, stage)
  state, shardings = with_apply_fn(state, model, shardings)
  return state, steps.jit_steps(
      model, mesh, state_shardings=shardings,
      learning_rate_fn=learning_rate_fn,
      label_smoothing=config.label_smoothing, ema_decay=config.ema_decay,
      grad_accum_steps=config.grad_accum_steps,
      mixup_alpha=stage.mixup_alpha, cutmix_alpha=stage.cutmix_alpha).train


def stage_batches(loop: Loop, train_iter: Iterator[Batch], start_step: int
                  ) -> Iterator[tuple[int, progressive.Stage, Batch]]:
  """(step, stage, batch) from start_step to the end, stage after stage.

  `train_iter` feeds the stage of start_step; each later stage gets a fresh
  pipeline, started at its first step (input_pipeline's start_step
  contract), so a resumed run reads what the straight run read.
  """
  for stage in loop.stages:
    first = max(start_step, stage.start_step)
    if first >= stage.end_step:
      continue
    if first != start_step:
      train_iter = loop.train_iter_fn(stage, first)
    for step, batch in zip(range(first, stage.end_step), train_iter):
      yield step, stage, batch


def with_apply_fn(state: steps.TrainState, model: models.EfficientNet,
                  shardings: Any) -> tuple[steps.TrainState, Any]:
  """(state applying `model`, the state's shardings for that tree)."""
  if state.apply_fn == model.apply:
    return state, shardings
  state = state.replace(apply_fn=model.apply)
  return state, jax.tree.unflatten(jax.tree.structure(state),
                                   jax.tree.leaves(shardings))


class TimedIterator:
  """Wraps an iterator and adds up the seconds spent waiting in `next`."""

  def __init__(self, iterator: Iterator[Batch]):
    self._iterator = iterator
    self.wait_seconds = 0.0

  def __iter__(self) -> TimedIterator:
    return self

  def __next__(self) -> Batch:
    start = time.perf_counter()
    try:
      return next(self._iterator)
    finally:
      self.wait_seconds += time.perf_counter() - start


def train_loop(loop: Loop, state: steps.TrainState, train_iter: Iterator[Batch],
               *, mngr: ocp.CheckpointManager,
               start_step: int) -> dict[str, Any]:
  """Steps from `start_step` to the end; logs, evaluates and saves on time.

  Speed is measured from the end of the first step, whose time (tracing and
  compiling the step) is logged on its own. On preemption the checkpoint is
  written and the eval due at that step is skipped: the grace period is for
  saving.
  """
  config, plan, workdir = loop.config, loop.plan, loop.workdir
  total_steps = plan.total_steps
  writer = metric_writers.create_default_writer(
      workdir, just_logging=jax.process_index() > 0)
  if not start_step:
    writer.write_hparams(flatten_config(config))
  report = periodic_actions.ReportProgress(num_train_steps=total_steps,
                                           writer=writer)
  hooks = [report]
  if config.profile_steps and jax.process_index() == 0:
    # One profile, a few steps after the start (clu's default repeats it
    # every hour).
    hooks.append(periodic_actions.Profile(
        logdir=workdir, num_profile_steps=config.profile_steps,
        every_secs=None))

  history = []
  results = dict(step=start_step, preempted=False)
  timed_iter = TimedIterator(stage_batches(loop, train_iter, start_step))
  run_start = time.perf_counter()
  interval = Interval(run_start, start_step, 0.0)
  stage, train_fn, compile_seconds = None, None, 0.0
  logging.info('Compiling the train step (the first step includes it).')
  with metric_writers.ensure_flushes(writer), mngr, sigterm_flag() as sigterm:
    for step, step_stage, batch in timed_iter:
      batch = sharding.shard_batch(batch, loop.mesh)
      if step_stage is not stage:
        stage = step_stage
        state, train_fn, seconds = compile_stage(loop, stage, state, batch)
        compile_seconds += seconds
        # Keep the compile out of the interval's speed.
        interval = dataclasses.replace(interval, start=interval.start +
                                       seconds)
        if len(loop.stages) > 1:
          write_metrics(writer, workdir, step, {
              'progressive/stage': stage.index + 1,
              'progressive/image_size': stage.image_size,
              'perf/compile_seconds': seconds})
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        state, metrics = train_fn(state, batch, loop.train_rng)
      history.append((step, metrics))
      done = step + 1
      if step == start_step:
        jax.block_until_ready(metrics)
        logging.info('First step done in %.1f s after a %.1f s compile.',
                     time.perf_counter() - interval.start, compile_seconds)
        interval = Interval(time.perf_counter(), done, timed_iter.wait_seconds)
      for hook in hooks:
        hook(done)
      preempted = sigterm.is_set() or mngr.reached_preemption(done)
      save = preempted or is_time(done, config.checkpoint_every_steps,
                                  total_steps)
      evaluate = is_time(done, plan.eval_every, total_steps) and not preempted
      if save or evaluate or is_time(done, config.log_every_steps,
                                     total_steps):
        summary = checked_summary(history, mngr, workdir)
        if done > interval.step:
          summary.update(interval.speed(done, config.batch_size,
                                        timed_iter.wait_seconds))
        write_metrics(writer, workdir, done, summary)
        log_progress(done, total_steps, summary)
        history = []
      if save:
        mngr.save(done, args=ocp.args.Composite(
            state=ocp.args.StandardSave(checkpoint_tree(state)),
            meta=ocp.args.JsonSave(loop.meta)))
      if evaluate:
        with report.timed('eval'):
          eval_results = evaluate_state(state, eval_fn=loop.jitted.eval,
                                        eval_iter=loop.eval_iter_fn(),
                                        mesh=loop.mesh)
        log_eval(done, eval_results)
        write_metrics(writer, workdir, done, eval_results)
        results.update(eval_results)
      results['step'] = done
      if save or evaluate:
        # Keep eval and checkpoint time out of the next interval's speed.
        interval = Interval(time.perf_counter(), done, timed_iter.wait_seconds)
      if preempted:
        results['preempted'] = True
        logging.warning('Preempted (SIGTERM) at step %d; saved a checkpoint '
                        'in %s. Rerun the same command to resume.', done,
                        workdir)
        break
    mngr.wait_until_finished()
  results['wall_seconds'] = time.perf_counter() - run_start
  results['compile_seconds'] = compile_seconds
  logging.info('Train-step compiles took %.1f s of %.1f s (%.1f%%) over %d '
               'stage(s).', compile_seconds, results['wall_seconds'],
               100 * compile_seconds / max(results['wall_seconds'], 1e-9),
               len(loop.stages))
  if jax.process_index() == 0:
    logging.info('TensorBoard logs: %s (tensorboard --logdir %s); metrics: '
                 '%s; checkpoint: %s (step %d).', workdir, workdir,
                 os.path.join(workdir, METRICS_FILE), workdir, results['step'])
  return results


def compile_stage(loop: Loop, stage: progressive.Stage,
                  state: steps.TrainState, batch: Batch
                  ) -> tuple[steps.TrainState, Any, float]:
  """(state, the stage's compiled train step, seconds spent compiling).

  One compile per stage: every batch of a stage has the stage's shape.
  """
  start = time.perf_counter()
  state, train = loop.train_step_fn(stage, state)
  compiled = train.lower(state, batch, loop.train_rng).compile()
  seconds = time.perf_counter() - start
  logging.info('%s%s; train step compiled in %.1f s.',
               stage.describe()[0].upper(), stage.describe()[1:], seconds)
  return state, compiled, seconds


@dataclasses.dataclass(frozen=True)
class Interval:
  """Where a speed measurement started: time, step and input wait so far."""
  start: float
  step: int
  wait_seconds: float

  def speed(self, step: int, batch_size: int,
            wait_seconds: float) -> dict[str, float]:
    """The perf/ scalars from this interval's start to `step`.

    images/s counts global images; per device and per host divide it by
    the devices and processes; data_wait_ms is this process's time per step
    blocked on the input pipeline.
    """
    seconds = time.perf_counter() - self.start
    num_steps = step - self.step
    images_per_sec = num_steps * batch_size / seconds
    return {'perf/steps_per_sec': num_steps / seconds,
            'perf/images_per_sec': images_per_sec,
            'perf/images_per_sec_per_device': (images_per_sec /
                                               jax.device_count()),
            'perf/images_per_sec_per_host': (images_per_sec /
                                             jax.process_count()),
            'perf/step_time_ms': 1000 * seconds / num_steps,
            'perf/data_wait_ms': (1000 * (wait_seconds - self.wait_seconds) /
                                  num_steps)}


def checked_summary(history: list[tuple[int, Any]],
                    mngr: ocp.CheckpointManager,
                    workdir: str) -> dict[str, float]:
  """summarise_train_metrics, naming the last good checkpoint on NaN/inf."""
  try:
    return summarise_train_metrics(history)
  except FloatingPointError as e:
    raise FloatingPointError(
        f'{e} Stopped without saving it; the last good checkpoint is '
        f'step {mngr.latest_step() or "none"} in {workdir}. Lower '
        '--config.learning_rate or check the input data.') from None


def log_progress(step: int, total_steps: int,
                 summary: Mapping[str, float]) -> None:
  speed = ''
  if 'perf/images_per_sec' in summary:
    speed = (f', {summary["perf/images_per_sec"]:.1f} images/s, '
             f'{summary["perf/data_wait_ms"]:.1f} ms/step waiting for input')
  logging.info('Step %d/%d: loss %.4f, accuracy %.4f, lr %.5f%s.', step,
               total_steps, summary['train/loss'], summary['train/accuracy'],
               summary['train/learning_rate'], speed)


def log_eval(step: int, results: Mapping[str, float]) -> None:
  for prefix in ('eval', 'eval_ema'):
    if not np.isfinite(results[f'{prefix}/loss']):
      logging.warning('Eval at step %d: non-finite %s loss (%s); the weights '
                      'have diverged.', step, prefix, results[f'{prefix}/loss'])
  logging.info('Eval at step %d: top-1 %.4f (EMA %.4f), top-5 %.4f '
               '(EMA %.4f) on %d examples.', step, results['eval/top1'],
               results['eval_ema/top1'], results['eval/top5'],
               results['eval_ema/top5'], results['eval/num_examples'])


def flatten_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'model.phi': ..., 'batch_size': ...} for hparams (None as 'None')."""
  flat = {}
  for key, value in flax.traverse_util.flatten_dict(
      config.to_dict(), sep='.').items():
    flat[key] = value if isinstance(value, (int, float, str, bool)) else str(
        value)
  return flat
