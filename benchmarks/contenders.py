"""The workers of benchmarks/throughput.py: build one contender, time one task.

Each worker runs in a fresh process started by the driver, as

  PYTHON benchmarks/contenders.py '<JSON spec>'

and prints one line, RESULT_PREFIX followed by the spec with its figures. The
spec carries the contender (`impl`), the task ('train' or 'infer'), the
variant, batch and resolution, the step counts, and `recipe`: the numbers the
driver resolved from configs/imagenet.py (dropout and drop-path rates, the
learning rate at this batch, RMSProp's decay, momentum and epsilon, weight
decay, EMA decay, label smoothing). The peers read them from there; ours
builds its step from the config itself, as train.py does.

This file runs under two interpreters: ours, and the peers' virtualenv, which
has torch and timm but neither jax, absl nor ml_collections. Hence no imports
beyond the standard library at the top; each worker imports its framework.
"""

import ast
import functools
import json
import os
import resource
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ('ours', 'timm', 'timm-compile', 'keras', 'keras-graph')
PEERS = IMPLS[1:]
RESULT_PREFIX = 'THROUGHPUT_RESULT '
# The variants timm and keras.applications both define.
PEER_VARIANTS = tuple(f'b{i}' for i in range(8))
# ImageNet-1k training images, only to give our learning-rate schedule a
# realistic steps-per-epoch (TPU-MAIN num_train_images).
TRAIN_IMAGES = 1_281_167


def is_ours(impl: str) -> bool:
  return impl == 'ours' or impl.startswith('ours:')


def max_rss_mb() -> float:
  """Peak resident memory of this process so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def time_steps(step, *, steps: int, warmup: int) -> list[float]:
  """Seconds per call of `step` (which must return only when done)."""
  for _ in range(warmup):
    step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return times


def config_overrides(impl: str) -> dict:
  """{'execution.inference_chunk_bytes': 0} from 'ours:execution.inference_chunk_
  bytes=0'; several overrides are joined by '+'. Values are Python literals."""
  _, _, text = impl.partition(':')
  overrides = {}
  for item in filter(None, text.split('+')):
    field, sep, value = item.partition('=')
    if not sep:
      raise SystemExit(f'Bad override {item!r} in contender {impl!r}; write '
                       "ours:FIELD=VALUE, e.g. ours:execution.recompute='none'.")
    try:
      overrides[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise SystemExit(f'Bad value {value!r} in contender {impl!r}; write a '
                       "Python literal, e.g. ours:execution.recompute='none'."
                       ) from None
  return overrides


def our_config(variant: str, dtype: str, overrides: dict):
  """The ImageNet config our runs use, with `overrides` set; locked, so a
  misspelt field is an error instead of a new one."""
  sys.path.insert(0, REPO_ROOT)
  from configs import imagenet  # pylint: disable=g-import-not-at-top
  config = imagenet.get_config(variant)
  config.execution.dtype = dtype
  config.lock()
  config.update_from_flattened_dict(overrides)
  return config


def ours_step(spec: dict):
  """Our compiled train or eval step, built as train.py and eval.py build it.

  Train: `steps.jit_steps(...).train`, the step train.py runs (forward and
  backward in BN train mode with dropout and drop-path, coupled L2,
  TF1-RMSProp, EMA of weights and BN statistics; the state donated), on a
  state created under jit with RUN_ONCE_COMPILER_OPTIONS as train_lib does.
  Inference: `steps.jit_steps(...).eval`, the masked-sums step eval.py runs
  per batch (the forward in BN inference mode plus top-5 and loss sums),
  rather than predict, which eval.py adds only with --predictions.
  """
  sys.path.insert(0, REPO_ROOT)  # Run as a script: make the package importable.
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  from efficientnet_jax import host_memory
  from efficientnet_jax import models
  from efficientnet_jax import optim
  from efficientnet_jax import sharding
  from efficientnet_jax import steps
  # pylint: enable=g-import-not-at-top

  # As train.py and eval.py do (cli.setup_devices, train_lib, eval_lib),
  # before jax creates its CPU client.
  host_memory.reuse_execution_memory()
  host_memory.release_after_each_compile()

  batch, resolution = spec['batch'], spec['resolution']
  config = our_config(spec['variant'], spec['dtype'],
                      config_overrides(spec['impl']))
  model = models.from_config(config.model, num_classes=1000)
  mesh = sharding.create_mesh()
  rng = np.random.default_rng(0)
  # [0, 255] RGB as the pipeline hands it over: float32, as for the recipe's
  # unaugmented training (input_pipeline.host_image_dtype); the steps
  # normalise it.
  data = sharding.shard_batch(dict(
      image=rng.uniform(0, 255, (batch, resolution, resolution, 3)
                        ).astype(np.float32),
      label=rng.integers(0, 1000, batch, dtype=np.int32),
      mask=np.ones(batch, np.float32)), mesh)
  keys = jax.random.split(jax.random.key(config.seed), 2)

  if spec['task'] == 'infer':
    variables = jax.device_put(models.init_variables(model, keys[0]),
                               sharding.replicated(mesh))
    evaluate = steps.jit_steps(model, mesh).eval
    return lambda: jax.block_until_ready(evaluate(variables, data))

  learning_rate_fn = optim.create_learning_rate_fn(
      config, TRAIN_IMAGES / batch, batch)
  tx = optim.create_optimizer(config, learning_rate_fn)
  train_step = steps.jit_steps(
      model, mesh, learning_rate_fn=learning_rate_fn,
      label_smoothing=config.label_smoothing,
      ema_decay=config.ema_decay).train
  # As train_lib does: the state is created under jit, compiled for compile
  # speed (eager creation would alias the EMA shadows to the parameters, and
  # the state is donated); the step compiles at its first call.
  create = functools.partial(steps.create_train_state, model=model, tx=tx)
  holder = [jax.jit(create, out_shardings=sharding.replicated(mesh)).lower(
      keys[0]).compile(compiler_options=steps.RUN_ONCE_COMPILER_OPTIONS)(
          keys[0])]

  def step():
    holder[0], metrics = train_step(holder[0], data, keys[1])
    jax.block_until_ready((holder[0], metrics))
  return step


def timm_step(spec: dict, compiled: bool):
  """timm's EfficientNet in PyTorch, channels-last, eager or torch.compile.

  RMSpropTF (TF1's RMSProp, coupled L2) and ModelEmaV3, with the recipe's
  numbers; the learning rate is held at its post-warm-up peak.
  """
  # pylint: disable=g-import-not-at-top
  import timm
  import timm.optim
  import timm.utils
  import torch
  # pylint: enable=g-import-not-at-top

  recipe, batch, resolution = spec['recipe'], spec['batch'], spec['resolution']
  torch.manual_seed(0)
  model = timm.create_model(f"efficientnet_{spec['variant']}",
                            pretrained=False, num_classes=1000,
                            drop_rate=recipe['dropout_rate'],
                            drop_path_rate=recipe['drop_path_rate'])
  model = model.to(memory_format=torch.channels_last)
  images = torch.randn(batch, 3, resolution, resolution).contiguous(
      memory_format=torch.channels_last)
  labels = torch.randint(0, 1000, (batch,))
  forward = torch.compile(model) if compiled else model

  if spec['task'] == 'infer':
    model.eval()

    def infer():
      with torch.inference_mode():
        forward(images)
    return infer

  model.train()
  optimizer = timm.optim.RMSpropTF(
      model.parameters(), lr=recipe['learning_rate'],
      alpha=recipe['rmsprop_decay'], eps=recipe['rmsprop_epsilon'],
      momentum=recipe['rmsprop_momentum'],
      weight_decay=recipe['weight_decay'])
  ema = timm.utils.ModelEmaV3(model, decay=recipe['ema_decay'])
  loss_fn = torch.nn.CrossEntropyLoss(
      label_smoothing=recipe['label_smoothing'])
  count = [0]

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(forward(images), labels)
    loss.backward()
    optimizer.step()
    count[0] += 1
    ema.update(model, step=count[0])
  return step


def keras_step(spec: dict, jit_compile: bool):
  """Keras's EfficientNet on TensorFlow, with or without XLA.

  The network is keras.applications' EfficientNet builder (the function
  behind EfficientNetB0..B7) called with the recipe's width and depth
  coefficients, dropout and drop-connect rates; RMSprop with its built-in EMA.
  Keras applies weight decay decoupled (v -= lr * wd * v), the same work as
  the coupled L2 term; the learning rate is held at its post-warm-up peak.
  """
  os.environ['KERAS_BACKEND'] = 'tensorflow'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # pylint: disable=g-import-not-at-top
  import keras
  from keras.src.applications import efficientnet as keras_efficientnet
  import numpy as np
  import tensorflow as tf
  # pylint: enable=g-import-not-at-top

  recipe, batch, resolution = spec['recipe'], spec['batch'], spec['resolution']
  keras.utils.set_random_seed(0)
  model = keras_efficientnet.EfficientNet(
      recipe['width_coefficient'], recipe['depth_coefficient'],
      recipe['resolution'], dropout_rate=recipe['dropout_rate'],
      drop_connect_rate=recipe['drop_path_rate'],
      name=f"efficientnet{spec['variant']}", weights=None,
      input_shape=(resolution, resolution, 3), classes=1000,
      classifier_activation=None)
  rng = np.random.default_rng(0)
  # Keras EfficientNets normalise [0, 255] inputs themselves.
  images = tf.constant(rng.uniform(0, 255, (batch, resolution, resolution, 3)),
                       tf.float32)
  labels = tf.one_hot(rng.integers(0, 1000, batch), 1000)
  optimizer = keras.optimizers.RMSprop(
      learning_rate=recipe['learning_rate'], rho=recipe['rmsprop_decay'],
      momentum=recipe['rmsprop_momentum'], epsilon=recipe['rmsprop_epsilon'],
      weight_decay=recipe['weight_decay'], use_ema=True,
      ema_momentum=recipe['ema_decay'])
  model.compile(optimizer=optimizer,
                loss=keras.losses.CategoricalCrossentropy(
                    from_logits=True,
                    label_smoothing=recipe['label_smoothing']),
                jit_compile=jit_compile)
  if spec['task'] == 'infer':
    return lambda: model.predict_on_batch(images)
  return lambda: model.train_on_batch(images, labels)


def run_worker(spec: dict) -> dict:
  """Builds the contender `spec` names, times it, returns the figures.

  first_step_s counts from here, before the framework is imported: model
  construction, initialisation, tracing, compilation and the first execution.
  """
  start = time.perf_counter()
  impl = spec['impl']
  if is_ours(impl):
    step = ours_step(spec)
  elif impl in ('timm', 'timm-compile'):
    step = timm_step(spec, compiled=impl == 'timm-compile')
  elif impl in ('keras', 'keras-graph'):
    step = keras_step(spec, jit_compile=impl == 'keras')
  else:
    raise ValueError(f'Unknown contender {impl!r}; use one of {IMPLS} or '
                     'ours:FIELD=VALUE.')
  step()
  first_step_s = time.perf_counter() - start
  times = time_steps(step, steps=spec['steps'], warmup=spec['warmup'])
  median = statistics.median(times)
  # The 1-minute load average: above the core count, other processes were
  # competing for the cores during this run.
  return dict(spec, first_step_s=first_step_s, step_s=median,
              step_times_s=times, img_s=spec['batch'] / median,
              max_rss_mb=max_rss_mb(), load_average=os.getloadavg()[0])


def main() -> None:
  result = run_worker(json.loads(sys.argv[1]))
  print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == '__main__':
  main()
