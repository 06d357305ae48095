"""Figures from the benchmark runs: medians, ratios, Markdown tables, JSON.

Pure standard library, so that the driver, the renderer (benchmarks/render.py)
and the tests read the same results the same way. A results file is one JSON
object (see `write_results`); the tables here take its parts.
"""

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, 'benchmarks', 'results')
# The issue that set them: ours / fastest peer, ours / timm, seconds, growth.
SPEED_TARGET = 1.5
MEMORY_TARGET = 0.8
FIRST_STEP_TARGET_S = 60.0
# Input pipeline: AutoAugment's CPU time per image over the plain train
# preprocessing's, and AutoAugment's images per CPU-second.
AUGMENT_COST_TARGET = 1.5
PREPROCESS_RATE_TARGET = 150.0


def is_ours(impl: str) -> bool:
  return impl == 'ours' or impl.startswith('ours:')


def median_of(runs: list[dict], key: str) -> float | None:
  values = [run[key] for run in runs if run.get(key) is not None]
  return statistics.median(values) if values else None


def task_key(run: dict) -> tuple:
  return (run['task'], run['batch'], run['resolution'], run['variant'])


def task_name(row: dict) -> str:
  return f"{row['task']} {row['batch']}x{row['resolution']}"


def summarise(results: list[dict]) -> list[dict]:
  """Medians per (task, contender), and ours relative to the peers.

  Ours' row carries `fastest_peer` and `speed_vs_fastest_peer` (our img/s
  over the fastest peer's), `memory_vs_timm` (our peak RSS over timm
  eager's) and `leanest_peer` / `memory_vs_leanest_peer`.
  """
  keys = list(dict.fromkeys(task_key(r) + (r['impl'],) for r in results))
  rows = []
  for key in keys:
    runs = [r for r in results if task_key(r) + (r['impl'],) == key]
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
    if row['impl'] != 'ours' or not row['img_s']:
      continue
    peers = [r for r in rows if not is_ours(r['impl']) and r['img_s'] and
             task_key(r) == task_key(row)]
    if not peers:
      continue
    fastest = max(peers, key=lambda r: r['img_s'])
    leanest = min(peers, key=lambda r: r['max_rss_mb'])
    row['fastest_peer'] = fastest['impl']
    row['speed_vs_fastest_peer'] = row['img_s'] / fastest['img_s']
    row['leanest_peer'] = leanest['impl']
    row['memory_vs_leanest_peer'] = row['max_rss_mb'] / leanest['max_rss_mb']
    for peer in peers:
      if peer['impl'] == 'timm':
        row['memory_vs_timm'] = row['max_rss_mb'] / peer['max_rss_mb']
  return rows


def scaling_rows(results: list[dict], macs: dict[str, int]) -> list[dict]:
  """Step time and MACs of each variant relative to the first one listed.

  Args:
    results: the runs, one variant each.
    macs: multiply-adds of one forward pass per variant (arch.count_macs).
  """
  rows = []
  for variant in dict.fromkeys(r['variant'] for r in results):
    runs = [r for r in results if r['variant'] == variant and 'error' not in r]
    rows.append(dict(variant=variant, resolution=runs[0]['resolution'] if runs
                     else None, batch=results[0]['batch'],
                     step_s=median_of(runs, 'step_s'), macs=macs[variant]))
  base = rows[0]
  for row in rows:
    row['macs_ratio'] = row['macs'] / base['macs']
    row['time_ratio'] = (row['step_s'] / base['step_s']
                         if row['step_s'] and base['step_s'] else None)
  return rows


def fmt(value, spec: str) -> str:
  return '–' if value is None else format(value, spec)


def full_table(rows: list[dict]) -> str:
  """One line per (task, contender); each peer's carries ours / it."""
  lines = ['| variant | task | contender | runs | img/s | ms/step | '
           'first step (s) | max RSS (MiB) | ours / this (speed) | '
           'ours / this (memory) |',
           '|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
  ours = {task_key(r): r for r in rows if r['impl'] == 'ours'}
  for row in rows:
    mine = ours.get(task_key(row))
    speed = memory = None
    if mine and row['impl'] != 'ours' and mine['img_s'] and row['img_s']:
      speed = mine['img_s'] / row['img_s']
      memory = mine['max_rss_mb'] / row['max_rss_mb']
    name = f"`{row['impl']}`" + (f" ({row['error']})" if 'error' in row
                                  else '')
    lines.append(
        f"| {row['variant']} | {task_name(row)} | {name} | {row['runs']} | "
        f"{fmt(row['img_s'], '.1f')} | "
        f"{fmt(row['step_s'] and row['step_s'] * 1e3, '.0f')} | "
        f"{fmt(row['first_step_s'], '.1f')} | "
        f"{fmt(row['max_rss_mb'], '.0f')} | {fmt(speed, '.2f')} | "
        f"{fmt(memory, '.2f')} |")
  return '\n'.join(lines)


def summary_table(rows: list[dict]) -> str:
  """One line per task: ours, the fastest peer, the ratios."""
  lines = ['| task | ours (img/s) | fastest peer (img/s) | ours / fastest peer '
           '| our peak RSS (MiB) | memory vs timm |',
           '|---|---:|---|---:|---:|---:|']
  for row in rows:
    if row['impl'] != 'ours':
      continue
    peer = '–'
    if row.get('fastest_peer'):
      peer_row = next(r for r in rows if r['impl'] == row['fastest_peer'] and
                      task_key(r) == task_key(row))
      peer = f"{row['fastest_peer']} {peer_row['img_s']:.1f}"
    lines.append(
        f"| {row['variant']} {task_name(row)} | {fmt(row['img_s'], '.1f')} | "
        f"{peer} | {fmt(row.get('speed_vs_fastest_peer'), '.2f')}× | "
        f"{fmt(row['max_rss_mb'], '.0f')} | "
        f"{fmt(row.get('memory_vs_timm'), '.2f')}× |")
  return '\n'.join(lines)


def rounds_table(results: list[dict]) -> str:
  """img/s of every run, round by round, with the load average at its end."""
  rounds = sorted({r.get('round', 1) for r in results})
  lines = ['| task | contender | ' + ' | '.join(f'round {i}' for i in rounds)
           + ' | spread (max / min) |',
           '|---|---|' + '---:|' * (len(rounds) + 1)]
  keys = list(dict.fromkeys(task_key(r) + (r['impl'],) for r in results))
  for key in keys:
    cells, speeds = [], []
    for index in rounds:
      run = next((r for r in results if task_key(r) + (r['impl'],) == key
                  and r.get('round', 1) == index), None)
      if run is None or 'error' in run:
        cells.append('–')
        continue
      speeds.append(run['img_s'])
      cells.append(f"{run['img_s']:.1f} (load {run['load_average']:.1f})")
    spread = max(speeds) / min(speeds) if speeds else None
    lines.append(f"| {key[3]} {key[0]} {key[1]}x{key[2]} | `{key[4]}` | "
                 + ' | '.join(cells) + f" | {fmt(spread, '.2f')} |")
  return '\n'.join(lines)


def scaling_table(rows: list[dict]) -> str:
  lines = ['| variant | resolution | batch | GMACs / image | step (s) | '
           'MACs / first | step time / first |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for row in rows:
    lines.append(
        f"| {row['variant']} | {row['resolution']} | {row['batch']} | "
        f"{row['macs'] / 1e9:.3f} | {fmt(row['step_s'], '.3f')} | "
        f"×{row['macs_ratio']:.2f} | ×{fmt(row['time_ratio'], '.2f')} |")
  return '\n'.join(lines)


def targets(summary: list[dict] | None,
            scaling: list[dict] | None) -> list[dict]:
  """The issue's targets, each with the measured figure and whether it is met.

  Only the targets the given results measure are listed.
  """
  found = []

  def ours_row(task, batch, resolution):
    return next((r for r in summary or [] if r['impl'] == 'ours' and
                 (r['task'], r['batch'], r['resolution']) ==
                 (task, batch, resolution)), None)

  for task, batch, resolution in (('train', 32, 224), ('train', 64, 128),
                                  ('infer', 32, 224)):
    row = ours_row(task, batch, resolution)
    if row and row.get('speed_vs_fastest_peer') is not None:
      found.append(dict(
          target=f'{task} {batch}x{resolution}: ours / fastest peer '
          f'≥ {SPEED_TARGET}×',
          measured=f"{row['speed_vs_fastest_peer']:.2f}× "
          f"({row['fastest_peer']})",
          met=row['speed_vs_fastest_peer'] >= SPEED_TARGET))
  row = ours_row('train', 32, 224)
  if row and row.get('memory_vs_timm') is not None:
    found.append(dict(
        target=f'train 32x224: our peak RSS / timm\'s ≤ {MEMORY_TARGET}×',
        measured=f"{row['memory_vs_timm']:.2f}×",
        met=row['memory_vs_timm'] <= MEMORY_TARGET))
  first = [r['first_step_s'] for r in summary or []
           if r['impl'] == 'ours' and r['first_step_s'] is not None]
  if first:
    found.append(dict(
        target=f'our first step ≤ {FIRST_STEP_TARGET_S:.0f} s (slowest task)',
        measured=f'{max(first):.1f} s', met=max(first) <= FIRST_STEP_TARGET_S))
  if scaling and len(scaling) > 1 and scaling[-1]['time_ratio'] is not None:
    last = scaling[-1]
    found.append(dict(
        target=f"{scaling[0]['variant']}→{last['variant']} step-time growth "
        f"< MAC growth (×{last['macs_ratio']:.2f})",
        measured=f"×{last['time_ratio']:.2f}",
        met=last['time_ratio'] < last['macs_ratio']))
  return found


def targets_table(rows: list[dict]) -> str:
  lines = ['| target | measured | status |', '|---|---:|---|']
  for row in rows:
    status = 'met' if row['met'] else '**not met**'
    lines.append(f"| {row['target']} | {row['measured']} | {status} |")
  return '\n'.join(lines)


def input_pipeline_table(results: dict) -> str:
  names = dict(train_none='train, no augmentation',
               train_autoaugment='train, AutoAugment v0',
               train_randaugment='train, RandAugment (2, 10)', eval='eval')
  lines = ['| mode | images/s | images/s per core (wall) | '
           'images per CPU-second |', '|---|---:|---:|---:|']
  for mode, name in names.items():
    if mode in results['modes']:
      figures = results['modes'][mode]
      lines.append(f"| {name} | {figures['images_per_s']:.0f} | "
                   f"{figures['images_per_s_per_core']:.0f} | "
                   f"{figures['images_per_cpu_s']:.0f} |")
  return '\n'.join(lines)


def package_versions(names: list[str]) -> dict[str, str]:
  """Installed versions of `names` here (the absent ones left out)."""
  versions = {}
  for name in names:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def interpreter_versions(python: str, names: list[str]) -> dict[str, str]:
  """package_versions as another interpreter sees them."""
  code = ('import json, importlib.metadata as m\n'
          f'names = {names!r}\nout = {{}}\n'
          'for n in names:\n'
          '  try: out[n] = m.version(n)\n'
          '  except m.PackageNotFoundError: pass\n'
          'import platform; out["python"] = platform.python_version()\n'
          'print(json.dumps(out))')
  try:
    proc = subprocess.run([python, '-c', code], capture_output=True,
                          text=True, check=True, timeout=60)
    return json.loads(proc.stdout)
  except (OSError, subprocess.SubprocessError, ValueError):
    return {}


def git_revision() -> str | None:
  """HEAD's commit, with '+dirty' when the tracked files differ from it."""
  try:
    head = subprocess.run(['git', '-C', REPO_ROOT, 'rev-parse', 'HEAD'],
                          capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip()
    dirty = subprocess.run(['git', '-C', REPO_ROOT, 'status', '--porcelain',
                            '--untracked-files=no'], capture_output=True,
                           text=True, check=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return head + ('+dirty' if dirty else '')


def machine_info() -> dict:
  """CPU model, cores, memory, the load average now, this interpreter."""
  cpu = 'unknown CPU'
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  memory_gib = None
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemTotal:'):
          memory_gib = int(line.split()[1]) / 2**20
          break
  except OSError:
    pass
  return dict(cpu=cpu, cores=os.cpu_count(),
              usable_cores=len(os.sched_getaffinity(0)),
              memory_gib=memory_gib, load_average=list(os.getloadavg()),
              platform=platform.platform(),
              python=platform.python_version())


def describe_machine(machine: dict) -> str:
  """'AMD EPYC 9B14, 2 cores, 24 GiB, load 1.2' from machine_info()."""
  memory = (f", {machine['memory_gib']:.0f} GiB"
            if machine.get('memory_gib') else '')
  return (f"{machine['cpu']}, {machine['cores']} cores{memory}, load average "
          f"{machine['load_average'][0]:.1f} at the start")


def utc_now() -> datetime.datetime:
  return datetime.datetime.now(datetime.timezone.utc)


def write_results(report: dict, name: str,
                  results_dir: str = RESULTS_DIR) -> str:
  """Writes `report` to NAME-<UTC time>.json and copies it to NAME-latest.json.

  The report records its own file name (`results_file`, relative to the
  repository), so that what is rendered from the latest copy cites the run.

  Returns:
    The timestamped file's path.
  """
  os.makedirs(results_dir, exist_ok=True)
  stamp = report.get('started_utc') or utc_now().isoformat()
  stamp = stamp.replace('-', '').replace(':', '')[:15] + 'Z'
  path = os.path.join(results_dir, f'{name}-{stamp}.json')
  report = dict(report, results_file=os.path.relpath(path, REPO_ROOT))
  with open(path, 'w') as f:
    json.dump(report, f, indent=1)
    f.write('\n')
  shutil.copyfile(path, os.path.join(results_dir, f'{name}-latest.json'))
  return path


def command_line(module: str | None = None) -> str:
  """This process's command line, shell-quoted, as `python FILE ...` or, for
  a module run with -m, `python -m MODULE ...`."""
  if module:
    program = ['-m', module]
  else:
    program = [os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)]
  return 'python ' + ' '.join(shlex.quote(a) for a in program + sys.argv[1:])
