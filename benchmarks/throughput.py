"""Train-step and inference throughput: ours against timm and Keras, one machine.

Every measurement runs in its own fresh process (so compile time and peak
memory are that process's alone), and the runs take turns: ours, each peer,
ours, each peer, ... for --repeats rounds, so a slow spell of a shared machine
hits every contender alike. The table gives medians over the rounds.

Contenders (EfficientNet-B0 by default, --variant for others; fp32):
  ours          efficientnet_jax: steps.train_step under jax.jit (the step
                train.py runs: forward + backward in BN train mode with dropout
                and drop-path, coupled L2, TF1-RMSProp, EMA of weights and BN
                statistics; the state is donated); inference is jit(apply).
  ours:F=V[+F=V] ours with config fields overridden, as in
                `ours:model.inference_chunk_bytes=0` (several joined by '+'):
                an A/B of our own options, alternating with the rest; not a
                peer in the ratios.
  timm          timm efficientnet_<variant>, PyTorch eager, channels-last;
                RMSpropTF (alpha 0.9, eps 1e-3, momentum 0.9, L2 1e-5) and
                ModelEmaV3; drop_rate and drop_path_rate as ours.
  timm-compile  the same under torch.compile (the default inductor backend).
  keras         keras.applications.EfficientNet<V>, TensorFlow backend,
                compile(jit_compile=True); RMSprop(rho 0.9, momentum 0.9,
                epsilon 1e-3) with its built-in EMA; train_on_batch and
                predict_on_batch.
  keras-graph   the same with jit_compile=False (a tf.function graph without
                XLA), which is faster than XLA on CPU for this network.
The peers run only where importable: timm from --peer-python (a separate
virtualenv made from benchmarks/requirements-peers.txt), Keras from this
interpreter or --keras-python.

Figures per run: median step time over --steps timed steps after --warmup
untimed ones (img/s = batch / median step); the first step's wall time
counting from model construction (initialisation, tracing, compilation and the
first execution), and the process's peak resident memory (max RSS, which
includes the framework itself).

  .venv/bin/python benchmarks/throughput.py \\
      --peer-python=/work/peers-venv/bin/python [--repeats=3] [--json]
  .venv/bin/python benchmarks/throughput.py --scaling=b0,b3 --impls=ours

--scaling times our train step for each listed variant at its own resolution
and compares the growth of step time with the growth of multiply-adds.
With --json the last line printed is one JSON object with every figure.
"""

# This file runs under two interpreters: ours and the peers' virtualenv, which
# has neither absl nor jax. Hence argparse, and imports inside the workers.
import argparse
import ast
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLS = ('ours', 'timm', 'timm-compile', 'keras', 'keras-graph')
DEFAULT_TASKS = ('train:32x224', 'train:64x128', 'infer:32x224')
RESULT_PREFIX = 'THROUGHPUT_RESULT '
# Keras application class per variant (keras.applications naming).
KERAS_NAMES = {f'b{i}': f'EfficientNetB{i}' for i in range(8)}
# ImageNet-1k training images, only to give the learning-rate schedule a
# realistic steps-per-epoch (TPU-MAIN num_train_images).
TRAIN_IMAGES = 1_281_167


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


# ---------------------------------------------------------------------------
# Workers: each builds one contender, times one task and prints one result.
# ---------------------------------------------------------------------------


def config_overrides(impl: str) -> dict:
  """{'model.inference_chunk_bytes': 0} from 'ours:model.inference_chunk_
  bytes=0'; several overrides are joined by '+'. Values are Python literals."""
  _, _, text = impl.partition(':')
  overrides = {}
  for item in filter(None, text.split('+')):
    field, sep, value = item.partition('=')
    if not sep:
      raise SystemExit(f'Bad override {item!r} in contender {impl!r}; write '
                       "ours:FIELD=VALUE, e.g. ours:model.recompute='none'.")
    overrides[field] = ast.literal_eval(value)
  return overrides


def our_config(variant: str, dtype: str, overrides: dict):
  """The ImageNet config our runs use, with `overrides` set; locked, so a
  misspelt field is an error instead of a new one."""
  sys.path.insert(0, REPO_ROOT)
  from configs import imagenet  # pylint: disable=g-import-not-at-top
  config = imagenet.get_config(variant)
  config.model.dtype = dtype
  config.lock()
  config.update_from_flattened_dict(overrides)
  return config


def check_overrides(impl: str, variant: str) -> None:
  """A one-line exit for an override the config does not take, before any
  run starts."""
  try:
    config = our_config(variant, 'float32', config_overrides(impl))
    from efficientnet_jax import models  # pylint: disable=g-import-not-at-top
    models.from_config(config.model, num_classes=1000)  # Builds no arrays.
  except (AttributeError, KeyError, SyntaxError, TypeError,
          ValueError) as error:
    reason = str(error).strip('\'"').split(' Other fields present')[0]
    raise SystemExit(f'Contender {impl!r}: the config does not take it '
                     f'({reason})') from None


def is_ours(impl: str) -> bool:
  return impl == 'ours' or impl.startswith('ours:')


def ours_step(task: str, variant: str, batch: int, resolution: int,
              dtype: str, overrides: dict):
  """Our compiled train or inference step, as train.py/eval.py build it,
  with the config fields in `overrides` set."""
  sys.path.insert(0, REPO_ROOT)  # Run as a script: make the package importable.
  import jax  # pylint: disable=g-import-not-at-top
  from efficientnet_jax import host_memory  # pylint: disable=g-import-not-at-top
  from efficientnet_jax import models  # pylint: disable=g-import-not-at-top

  # As train.py and eval.py do (cli.setup_devices, train_lib).
  host_memory.reuse_execution_memory()
  host_memory.release_after_each_compile()

  config = our_config(variant, dtype, overrides)
  model = models.from_config(config.model, num_classes=1000)
  keys = jax.random.split(jax.random.key(0), 4)
  images = jax.random.normal(keys[0], (batch, resolution, resolution, 3))
  labels = jax.random.randint(keys[1], (batch,), 0, 1000)

  from efficientnet_jax import steps  # pylint: disable=g-import-not-at-top
  if task == 'infer':
    variables = models.init_variables(model, keys[2])
    # As eval.py compiles its steps.
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False),
                    compiler_options=steps.step_compiler_options())
    return lambda: apply(variables, images).block_until_ready()

  import functools  # pylint: disable=g-import-not-at-top
  from efficientnet_jax import optim  # pylint: disable=g-import-not-at-top

  learning_rate_fn = optim.create_learning_rate_fn(
      config, TRAIN_IMAGES / batch, batch)
  tx = optim.create_optimizer(config, learning_rate_fn)
  create = functools.partial(steps.create_train_state, model=model,
                             tx=tx)
  train_step = jax.jit(
      functools.partial(steps.train_step,
                        learning_rate_fn=learning_rate_fn,
                        label_smoothing=config.label_smoothing,
                        ema_decay=config.ema_decay),
      donate_argnums=0, compiler_options=steps.step_compiler_options())
  data = dict(image=images, label=labels)
  # As train_lib does: the state is created under jit, compiled for compile
  # speed (eager creation would alias the EMA shadows to the parameters, and
  # the state is donated); the step compiles at its first call.
  holder = [jax.jit(create).lower(keys[2]).compile(
      compiler_options=steps.RUN_ONCE_COMPILER_OPTIONS)(keys[2])]

  def step():
    holder[0], metrics = train_step(holder[0], data, keys[3])
    jax.block_until_ready((holder[0], metrics))
  return step


def timm_step(task: str, variant: str, batch: int, resolution: int,
              compiled: bool):
  """timm's EfficientNet in PyTorch, channels-last, eager or torch.compile."""
  import timm  # pylint: disable=g-import-not-at-top
  import timm.optim  # pylint: disable=g-import-not-at-top
  import timm.utils  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  drop_rate = {'b0': 0.2, 'b1': 0.2, 'b2': 0.3, 'b3': 0.3, 'b4': 0.4,
               'b5': 0.4, 'b6': 0.5, 'b7': 0.5}[variant]  # TPU-BUILD.
  model = timm.create_model(f'efficientnet_{variant}', pretrained=False,
                            num_classes=1000, drop_rate=drop_rate,
                            drop_path_rate=0.2)
  model = model.to(memory_format=torch.channels_last)
  images = torch.randn(batch, 3, resolution, resolution).contiguous(
      memory_format=torch.channels_last)
  labels = torch.randint(0, 1000, (batch,))
  forward = torch.compile(model) if compiled else model

  if task == 'infer':
    model.eval()

    def infer():
      with torch.inference_mode():
        forward(images)
    return infer

  model.train()
  optimizer = timm.optim.RMSpropTF(model.parameters(), lr=0.016 * batch / 256,
                                   alpha=0.9, eps=1e-3, momentum=0.9,
                                   weight_decay=1e-5)
  ema = timm.utils.ModelEmaV3(model, decay=0.9999)
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
  count = [0]

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(forward(images), labels)
    loss.backward()
    optimizer.step()
    count[0] += 1
    ema.update(model, step=count[0])
  return step


def keras_step(task: str, variant: str, batch: int, resolution: int,
               jit_compile: bool):
  """keras.applications EfficientNet on TensorFlow, with or without XLA."""
  os.environ['KERAS_BACKEND'] = 'tensorflow'
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(0)
  model = getattr(keras.applications, KERAS_NAMES[variant])(
      weights=None, input_shape=(resolution, resolution, 3), classes=1000,
      classifier_activation=None)
  rng = np.random.default_rng(0)
  # Keras EfficientNets normalise [0, 255] inputs themselves.
  images = tf.constant(rng.uniform(0, 255, (batch, resolution, resolution, 3)),
                       tf.float32)
  labels = tf.one_hot(rng.integers(0, 1000, batch), 1000)
  optimizer = keras.optimizers.RMSprop(
      learning_rate=0.016 * batch / 256, rho=0.9, momentum=0.9, epsilon=1e-3,
      use_ema=True, ema_momentum=0.9999)
  model.compile(optimizer=optimizer,
                loss=keras.losses.CategoricalCrossentropy(
                    from_logits=True, label_smoothing=0.1),
                jit_compile=jit_compile)
  if task == 'infer':
    return lambda: model.predict_on_batch(images)
  return lambda: model.train_on_batch(images, labels)


def run_worker(spec: dict) -> dict:
  """Builds the contender `spec` names, times it, returns the figures."""
  start = time.perf_counter()
  impl, task = spec['impl'], spec['task']
  shape = (task, spec['variant'], spec['batch'], spec['resolution'])
  if is_ours(impl):
    step = ours_step(*shape, dtype=spec['dtype'],
                     overrides=config_overrides(impl))
  elif impl in ('timm', 'timm-compile'):
    step = timm_step(*shape, compiled=impl == 'timm-compile')
  elif impl in ('keras', 'keras-graph'):
    step = keras_step(*shape, jit_compile=impl == 'keras')
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


# ---------------------------------------------------------------------------
# Driver: which contenders exist, the alternating schedule, the table.
# ---------------------------------------------------------------------------


def parse_task(text: str) -> tuple[str, int, int]:
  """'train:32x224' -> ('train', 32, 224)."""
  try:
    task, shape = text.split(':')
    batch, resolution = (int(v) for v in shape.split('x'))
  except ValueError:
    raise SystemExit(f'Bad task {text!r}; write TASK:BATCHxRESOLUTION, e.g. '
                     'train:32x224 or infer:32x224.') from None
  if task not in ('train', 'infer'):
    raise SystemExit(f"Bad task {text!r}; the task is 'train' or 'infer'.")
  return task, batch, resolution


def importable(python: str, module: str) -> bool:
  """Whether `python -c 'import module'` succeeds."""
  result = subprocess.run([python, '-c', f'import {module}'],
                          capture_output=True, check=False)
  return result.returncode == 0


def interpreters(args: argparse.Namespace) -> dict[str, str]:
  """The interpreter each requested contender runs under, if it can run."""
  found = {}
  for impl in args.impls:
    if is_ours(impl):
      check_overrides(impl, args.variant)
      found[impl] = sys.executable
    elif impl in ('timm', 'timm-compile'):
      python = args.peer_python or sys.executable
      if importable(python, 'timm'):
        found[impl] = python
    elif impl in ('keras', 'keras-graph'):
      python = args.keras_python or sys.executable
      if args.variant in KERAS_NAMES and importable(python, 'keras'):
        found[impl] = python
    else:
      raise SystemExit(f'Unknown contender {impl!r}; use some of {IMPLS} '
                       'or ours:FIELD=VALUE.')
    if impl not in found:
      print(f'# {impl}: not importable, skipped', file=sys.stderr)
  return found


def run_one(python: str, spec: dict, timeout: float) -> dict:
  """Runs one worker process and returns its result (or the error)."""
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='', JAX_PLATFORMS='cpu')
  command = [python, os.path.abspath(__file__), '--worker', json.dumps(spec)]
  try:
    proc = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return dict(spec, error=f'timed out after {timeout:.0f} s')
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['?']
  return dict(spec, error=f'exit {proc.returncode}: {tail[0][:200]}')


def median_of(runs: list[dict], key: str) -> float | None:
  values = [run[key] for run in runs if key in run]
  return statistics.median(values) if values else None


def summarise(results: list[dict]) -> list[dict]:
  """Medians per (task, contender), and ours relative to the fastest peer."""
  rows = []
  keys = []
  for run in results:
    key = (run['task'], run['batch'], run['resolution'], run['variant'],
           run['impl'])
    if key not in keys:
      keys.append(key)
  for key in keys:
    runs = [r for r in results if (r['task'], r['batch'], r['resolution'],
                                   r['variant'], r['impl']) == key]
    ok = [r for r in runs if 'error' not in r]
    row = dict(task=key[0], batch=key[1], resolution=key[2], variant=key[3],
               impl=key[4], runs=len(ok),
               img_s=median_of(ok, 'img_s'), step_s=median_of(ok, 'step_s'),
               first_step_s=median_of(ok, 'first_step_s'),
               max_rss_mb=median_of(ok, 'max_rss_mb'))
    errors = [r['error'] for r in runs if 'error' in r]
    if errors:
      row['error'] = errors[0]
    rows.append(row)
  for row in rows:
    if row['impl'] != 'ours':
      continue
    peers = [r for r in rows if not is_ours(r['impl']) and r['img_s'] and
             (r['task'], r['batch'], r['resolution'], r['variant']) ==
             (row['task'], row['batch'], row['resolution'], row['variant'])]
    if peers and row['img_s']:
      fastest = max(peers, key=lambda r: r['img_s'])
      leanest = min(peers, key=lambda r: r['max_rss_mb'])
      row['fastest_peer'] = fastest['impl']
      row['speed_vs_fastest_peer'] = row['img_s'] / fastest['img_s']
      row['leanest_peer'] = leanest['impl']
      row['memory_vs_leanest_peer'] = row['max_rss_mb'] / leanest['max_rss_mb']
  return rows


def fmt(value, spec: str) -> str:
  return '–' if value is None else format(value, spec)


def markdown_table(rows: list[dict]) -> str:
  """One line per (task, contender); ours carries the ratios to the peers."""
  lines = ['| variant | task | batch x res | contender | img/s | ms/step | '
           'first step (s) | max RSS (MiB) | ours / this (speed) | '
           'ours / this (memory) |',
           '|---|---|---|---|---:|---:|---:|---:|---:|---:|']
  ours = {(r['task'], r['batch'], r['resolution'], r['variant']): r
          for r in rows if r['impl'] == 'ours'}
  for row in rows:
    mine = ours.get((row['task'], row['batch'], row['resolution'],
                     row['variant']))
    speed = memory = None
    if mine and row['impl'] != 'ours' and mine['img_s'] and row['img_s']:
      speed = mine['img_s'] / row['img_s']
      memory = mine['max_rss_mb'] / row['max_rss_mb']
    name = row['impl'] + (f" ({row['error']})" if 'error' in row else '')
    lines.append(
        f"| {row['variant']} | {row['task']} | "
        f"{row['batch']} x {row['resolution']} | {name} | "
        f"{fmt(row['img_s'], '.1f')} | "
        f"{fmt(row['step_s'] and row['step_s'] * 1e3, '.0f')} | "
        f"{fmt(row['first_step_s'], '.1f')} | "
        f"{fmt(row['max_rss_mb'], '.0f')} | {fmt(speed, '.2f')} | "
        f"{fmt(memory, '.2f')} |")
  return '\n'.join(lines)


def scaling_rows(results: list[dict]) -> list[dict]:
  """Step time and MACs of each variant relative to the first one listed."""
  sys.path.insert(0, REPO_ROOT)
  from efficientnet_jax import arch  # pylint: disable=g-import-not-at-top
  rows = []
  for variant in dict.fromkeys(r['variant'] for r in results):
    runs = [r for r in results if r['variant'] == variant and 'error' not in r]
    spec = arch.spec_for(variant)
    rows.append(dict(variant=variant, resolution=spec.resolution,
                     step_s=median_of(runs, 'step_s'),
                     macs=arch.count_macs(spec)))
  base = rows[0]
  for row in rows:
    row['macs_ratio'] = row['macs'] / base['macs']
    row['time_ratio'] = (row['step_s'] / base['step_s']
                         if row['step_s'] and base['step_s'] else None)
  return rows


def machine_description() -> str:
  """CPU model and core count, as /proc/cpuinfo tells."""
  model = 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          model = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  return f'{model}, {os.cpu_count()} cores'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  parser.add_argument('--variant', default='b0',
                      help='b0..b7 (peers exist for these).')
  parser.add_argument('--impls', default=','.join(IMPLS),
                      help=f'Comma-separated subset of {",".join(IMPLS)}, '
                      'and ours:FIELD=VALUE[+FIELD=VALUE] variants of ours.')
  parser.add_argument('--tasks', default=','.join(DEFAULT_TASKS),
                      help='Comma-separated TASK:BATCHxRESOLUTION, TASK '
                      'train or infer.')
  parser.add_argument('--repeats', type=int, default=3,
                      help='Rounds; each runs every contender once per task.')
  parser.add_argument('--steps', type=int, default=10,
                      help='Timed steps per run.')
  parser.add_argument('--warmup', type=int, default=3,
                      help='Untimed steps after the first one (our heap '
                      'settles over the first 2-3 executions).')
  parser.add_argument('--dtype', default='float32',
                      help="Our compute dtype: 'float32' or 'bfloat16'.")
  parser.add_argument('--peer-python',
                      help='Interpreter with torch and timm (default: this).')
  parser.add_argument('--keras-python',
                      help='Interpreter with keras and tensorflow (default: '
                      'this).')
  parser.add_argument('--scaling', default='',
                      help='Comma-separated variants (e.g. b0,b3): time our '
                      'train step at each one\'s own resolution instead.')
  parser.add_argument('--scaling-batch', type=int, default=32)
  parser.add_argument('--timeout', type=float, default=3600,
                      help='Seconds allowed to one run.')
  parser.add_argument('--json', action='store_true',
                      help='Print one JSON object as the last line.')
  args = parser.parse_args()

  if args.worker:
    result = run_worker(json.loads(args.worker))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return

  args.impls = [i for i in args.impls.split(',') if i]
  common = dict(steps=args.steps, warmup=args.warmup, dtype=args.dtype)
  if args.scaling:
    # Only ours: the claim is about how our cost grows.
    sys.path.insert(0, REPO_ROOT)
    from efficientnet_jax import arch  # pylint: disable=g-import-not-at-top
    schedule = [dict(common, impl='ours', task='train', variant=v,
                     batch=args.scaling_batch,
                     resolution=arch.spec_for(v).resolution)
                for v in args.scaling.split(',')]
    pythons = {'ours': sys.executable}
  else:
    pythons = interpreters(args)
    schedule = []
    for text in args.tasks.split(','):
      task, batch, resolution = parse_task(text)
      schedule += [dict(common, impl=impl, task=task, variant=args.variant,
                        batch=batch, resolution=resolution)
                   for impl in pythons]

  results = []
  for round_index in range(args.repeats):
    for spec in schedule:
      result = run_one(pythons[spec['impl']], spec, args.timeout)
      results.append(result)
      print(f"# round {round_index + 1}: {spec['impl']} {spec['variant']} "
            f"{spec['task']} {spec['batch']}x{spec['resolution']}: " +
            (result['error'] if 'error' in result else
             f"{result['img_s']:.1f} img/s, first step "
             f"{result['first_step_s']:.1f} s, max RSS "
             f"{result['max_rss_mb']:.0f} MiB, load average "
             f"{result['load_average']:.1f}"), file=sys.stderr, flush=True)

  report = dict(machine=machine_description(), results=results)
  print(f'Machine: {report["machine"]}; medians of {args.repeats} rounds, '
        f'{args.steps} timed steps each.\n')
  if args.scaling:
    report['scaling'] = scaling_rows(results)
    print('| variant | resolution | MACs (G) | step (s) | MACs / first | '
          'step time / first |\n|---|---:|---:|---:|---:|---:|')
    for row in report['scaling']:
      print(f"| {row['variant']} | {row['resolution']} | "
            f"{row['macs'] / 1e9:.3f} | {fmt(row['step_s'], '.3f')} | "
            f"{row['macs_ratio']:.2f} | {fmt(row['time_ratio'], '.2f')} |")
  else:
    report['summary'] = summarise(results)
    print(markdown_table(report['summary']))
  if args.json:
    print(json.dumps(report))


if __name__ == '__main__':
  main()
