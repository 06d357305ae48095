"""Train-step and inference throughput: ours against timm and Keras, one CPU.

Every measurement runs in its own fresh process (benchmarks/contenders.py, so
compile time and peak memory are that process's alone), and the runs take
turns: ours, each peer, ours, each peer, ... for --repeats rounds, so a slow
spell of a shared machine hits every contender alike. The tables give medians
over the rounds.

Contenders (EfficientNet-B0 by default, --variant for others; fp32):
  ours          efficientnet_jax: steps.jit_steps(...).train, the step
                train.py runs (forward + backward in BN train mode with
                dropout and drop-path, coupled L2, TF1-RMSProp, EMA of
                weights and BN statistics; the state is donated); inference
                is jit_steps(...).eval, the step eval.py runs.
  ours:F=V[+F=V] ours with config fields overridden, as in
                `ours:execution.inference_chunk_bytes=0` (several joined by '+'):
                an A/B of our own options, alternating with the rest; not a
                peer in the ratios.
  timm          timm efficientnet_<variant>, PyTorch eager, channels-last;
                RMSpropTF and ModelEmaV3.
  timm-compile  the same under torch.compile (the default inductor backend).
  keras         Keras's EfficientNet, TensorFlow backend,
                compile(jit_compile=True); RMSprop with its built-in EMA;
                train_on_batch and predict_on_batch.
  keras-graph   the same with jit_compile=False (a tf.function graph without
                XLA), which is faster than XLA on CPU for this network.
The peers' recipe is ours: this driver resolves configs/imagenet.py:<variant>
(arch.resolve, optim.peak_learning_rate) into dropout and drop-path rates,
the learning rate at each task's batch, RMSProp's decay, momentum and
epsilon, weight decay, EMA decay and label smoothing, and hands them to every
worker in its spec. The peers run only where importable: timm from
--peer-python (a separate virtualenv made from
benchmarks/requirements-peers.txt), Keras from this interpreter or
--keras-python. The driver itself needs our interpreter.

Figures per run: median step time over --steps timed steps after --warmup
untimed ones (img/s = batch / median step); the first step's wall time
counting from the worker's start (imports, model construction,
initialisation, tracing, compilation and the first execution), and the
process's peak resident memory (max RSS, which includes the framework
itself).

  .venv/bin/python benchmarks/throughput.py \\
      --peer-python=/work/peers-venv/bin/python [--repeats=3] [--json]
  .venv/bin/python benchmarks/throughput.py --scaling=b0,b3 --impls=ours

--scaling times our train step for each listed variant at its own resolution
and compares the growth of step time with the growth of multiply-adds.

Every run writes its results to benchmarks/results/NAME-<UTC time>.json and
NAME-latest.json (NAME: --results-name, default 'throughput', or 'scaling'
with --scaling): the command line, the machine, every measurement and the
summary, rewritten after every run (`complete` is false until the last);
`python -m benchmarks.render` turns the latest into the docs' tables. With
--json the last line printed is that JSON object.
"""

# The workers run under two interpreters: ours and the peers' virtualenv,
# which has neither absl nor jax. They live in contenders.py; this driver uses
# argparse like them and imports our package only inside functions.
import argparse
import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import contenders
from benchmarks import report
# pylint: enable=g-import-not-at-top,wrong-import-position

DEFAULT_TASKS = ('train:32x224', 'train:64x128', 'infer:32x224')
WORKER = os.path.join(REPO_ROOT, 'benchmarks', 'contenders.py')
OUR_PACKAGES = ['jax', 'jaxlib', 'flax', 'optax', 'numpy', 'ml_collections']
PEER_PACKAGES = ['torch', 'torchvision', 'timm', 'numpy']
KERAS_PACKAGES = ['tensorflow', 'keras', 'numpy']


def recipe(variant: str, batch: int) -> dict:
  """What the peers need of configs/imagenet.py:<variant> at `batch`.

  The learning rate is the schedule's post-warm-up peak at this global batch
  (optim.peak_learning_rate); the rest are the config's fields and the
  resolved arch spec's rates, resolution and coefficients.
  """
  # pylint: disable=g-import-not-at-top
  from configs import imagenet
  from efficientnet_jax import arch
  from efficientnet_jax import optim
  # pylint: enable=g-import-not-at-top
  config = imagenet.get_config(variant)
  spec = arch.resolve(config.model)
  return dict(
      config=f'configs/imagenet.py:{variant}',
      resolution=spec.resolution,
      width_coefficient=spec.width_coefficient,
      depth_coefficient=spec.depth_coefficient,
      dropout_rate=spec.dropout_rate,
      drop_path_rate=spec.drop_path_rate,
      learning_rate=optim.peak_learning_rate(config.learning_rate, batch),
      rmsprop_decay=config.rmsprop_decay,
      rmsprop_momentum=config.rmsprop_momentum,
      rmsprop_epsilon=config.rmsprop_epsilon,
      weight_decay=config.weight_decay,
      ema_decay=config.ema_decay,
      label_smoothing=config.label_smoothing)


def check_overrides(impl: str, variant: str) -> None:
  """A one-line exit for an override the config does not take, before any
  run starts."""
  try:
    config = contenders.our_config(variant, 'float32',
                                   contenders.config_overrides(impl))
    from efficientnet_jax import models  # pylint: disable=g-import-not-at-top
    models.from_config(config.model, num_classes=1000)  # Builds no arrays.
  except (AttributeError, KeyError, SyntaxError, TypeError,
          ValueError) as error:
    reason = str(error).strip('\'"').split(' Other fields present')[0]
    raise SystemExit(f'Contender {impl!r}: the config does not take it '
                     f'({reason})') from None


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
  try:
    result = subprocess.run([python, '-c', f'import {module}'],
                            capture_output=True, check=False)
  except OSError:
    return False
  return result.returncode == 0


def interpreters(args: argparse.Namespace) -> dict[str, str]:
  """The interpreter each requested contender runs under, if it can run."""
  found = {}
  for impl in args.impls:
    if contenders.is_ours(impl):
      check_overrides(impl, args.variant)
      found[impl] = sys.executable
    elif impl in ('timm', 'timm-compile'):
      python = args.peer_python or sys.executable
      if (args.variant in contenders.PEER_VARIANTS and
          importable(python, 'timm')):
        found[impl] = python
    elif impl in ('keras', 'keras-graph'):
      python = args.keras_python or sys.executable
      if (args.variant in contenders.PEER_VARIANTS and
          importable(python, 'keras')):
        found[impl] = python
    else:
      raise SystemExit(f'Unknown contender {impl!r}; use some of '
                       f'{contenders.IMPLS} or ours:FIELD=VALUE.')
    if impl not in found:
      print(f'# {impl}: not importable, skipped', file=sys.stderr)
  return found


def run_one(python: str, spec: dict, timeout: float) -> dict:
  """Runs one worker process and returns its result (or the error)."""
  env = dict(os.environ, CUDA_VISIBLE_DEVICES='', JAX_PLATFORMS='cpu')
  command = [python, WORKER, json.dumps(spec)]
  try:
    proc = subprocess.run(command, capture_output=True, text=True, env=env,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return dict(spec, error=f'timed out after {timeout:.0f} s')
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(contenders.RESULT_PREFIX):
      return json.loads(line[len(contenders.RESULT_PREFIX):])
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['?']
  return dict(spec, error=f'exit {proc.returncode}: {tail[0][:200]}')


def software(pythons: dict[str, str]) -> dict[str, dict]:
  """Package versions per interpreter the run used, keyed by its path."""
  wanted = {}
  for impl, python in pythons.items():
    names = (OUR_PACKAGES if contenders.is_ours(impl) else
             PEER_PACKAGES if impl.startswith('timm') else KERAS_PACKAGES)
    wanted.setdefault(python, set()).update(names)
  wanted.setdefault(sys.executable, set()).update(OUR_PACKAGES)
  return {python: report.interpreter_versions(python, sorted(names))
          for python, names in wanted.items()}


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variant', default='b0',
                      help='b0..b7 (peers exist for these).')
  parser.add_argument('--impls', default=','.join(contenders.IMPLS),
                      help='Comma-separated subset of '
                      f'{",".join(contenders.IMPLS)}, and '
                      'ours:FIELD=VALUE[+FIELD=VALUE] variants of ours.')
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
  parser.add_argument('--results-name', default='',
                      help='Results file stem in benchmarks/results/ '
                      "(default 'throughput', or 'scaling' with --scaling); "
                      'give an A/B run its own so it leaves the '
                      'rendered latest alone.')
  parser.add_argument('--json', action='store_true',
                      help='Print the results JSON object as the last line.')
  return parser.parse_args()


def schedule_runs(args: argparse.Namespace
                  ) -> tuple[list[dict], dict[str, str]]:
  """(the specs of one round, in order; the interpreter per contender)."""
  common = dict(steps=args.steps, warmup=args.warmup, dtype=args.dtype)
  if args.scaling:
    # Only ours: the claim is about how our cost grows.
    schedule = []
    for variant in args.scaling.split(','):
      variant_recipe = recipe(variant, args.scaling_batch)
      schedule.append(dict(common, impl='ours', task='train', variant=variant,
                           batch=args.scaling_batch,
                           resolution=variant_recipe['resolution'],
                           recipe=variant_recipe))
    return schedule, {'ours': sys.executable}
  tasks = [parse_task(text) for text in args.tasks.split(',')]
  pythons = interpreters(args)
  schedule = []
  for task, batch, resolution in tasks:
    task_recipe = recipe(args.variant, batch)
    schedule += [dict(common, impl=impl, task=task, variant=args.variant,
                      batch=batch, resolution=resolution, recipe=task_recipe)
                 for impl in pythons]
  return schedule, pythons


def print_progress(round_index: int, result: dict) -> None:
  print(f"# round {round_index}: {result['impl']} {result['variant']} "
        f"{result['task']} {result['batch']}x{result['resolution']}: " +
        (result['error'] if 'error' in result else
         f"{result['img_s']:.1f} img/s, first step "
         f"{result['first_step_s']:.1f} s, max RSS "
         f"{result['max_rss_mb']:.0f} MiB, load average "
         f"{result['load_average']:.1f}"), file=sys.stderr, flush=True)


def finish(output: dict, schedule: list[dict], args: argparse.Namespace,
           complete: bool) -> dict:
  """`output` with its summary (or scaling rows) and targets for the runs so
  far; `complete` says whether every scheduled run is in."""
  results = output['results']
  output = dict(output, complete=complete,
                finished_utc=report.utc_now().isoformat(timespec='seconds'),
                runs_planned=len(schedule) * args.repeats)
  if not results:
    return output
  if args.scaling:
    from efficientnet_jax import arch  # pylint: disable=g-import-not-at-top
    macs = {spec['variant']: arch.count_macs(arch.spec_for(spec['variant']))
            for spec in schedule}
    output['scaling'] = report.scaling_rows(results, macs)
    output['targets'] = report.targets(None, output['scaling'])
  else:
    output['summary'] = report.summarise(results)
    output['targets'] = report.targets(output['summary'], None)
  return output


def main() -> None:
  args = parse_args()
  args.impls = [i for i in args.impls.split(',') if i]
  output = dict(
      kind='scaling' if args.scaling else 'throughput',
      command=report.command_line(),
      started_utc=report.utc_now().isoformat(timespec='seconds'),
      git=report.git_revision(),
      machine=report.machine_info())  # The load average before any run.
  schedule, pythons = schedule_runs(args)
  output.update(
      interpreters=dict(pythons), software=software(pythons),
      settings=dict(variant=args.variant, dtype=args.dtype,
                    repeats=args.repeats, steps=args.steps,
                    warmup=args.warmup, impls=list(pythons),
                    tasks=args.tasks if not args.scaling else None,
                    scaling=args.scaling or None,
                    scaling_batch=args.scaling_batch if args.scaling
                    else None),
      results=[])
  name = args.results_name or output['kind']

  # The file is rewritten after every run (complete: false until the last),
  # so an interrupted run still leaves what it measured.
  for round_index in range(1, args.repeats + 1):
    for spec in schedule:
      load_before = os.getloadavg()[0]
      result = run_one(pythons[spec['impl']], spec, args.timeout)
      result = dict(result, round=round_index, load_average_before=load_before)
      output['results'].append(result)
      print_progress(round_index, result)
      path = report.write_results(
          finish(output, schedule, args, complete=False), name)

  output = finish(output, schedule, args, complete=True)
  path = report.write_results(output, name)
  print(f'Machine: {report.describe_machine(output["machine"])}; medians of '
        f'{args.repeats} rounds, {args.steps} timed steps each.\n')
  if args.scaling:
    print(report.scaling_table(output['scaling']))
  else:
    print(report.full_table(output['summary']))
  print(f'# results: {os.path.relpath(path)} and {name}-latest.json',
        file=sys.stderr)
  if args.json:
    with open(path) as f:
      print(json.dumps(json.load(f)))


if __name__ == '__main__':
  main()
