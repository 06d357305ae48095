"""Rewrites the docs' benchmark tables from the latest results JSON.

  python -m benchmarks.render [--results-dir=benchmarks/results] [FILE ...]

Each table lives between a marker pair, and only the text between them is
replaced:

  <!-- generated:NAME (python -m benchmarks.render) -->
  ...
  <!-- /generated:NAME -->

NAMEs, from throughput-latest.json: throughput-summary (one line per task:
ours, the fastest peer, the ratios), throughput-full (every contender),
throughput-rounds (each round's figures), throughput-setup (machine,
software, the recipe the peers ran); from scaling-latest.json: scaling; from
fused-latest.json (a --scaling run of b0 against v2-b0): fused; from
input_pipeline-latest.json: input-pipeline and host-bytes; from
first_step-latest.json: first-step; from both throughput and scaling:
targets. Every block ends with the results file it was rendered from. A file
with no marker is skipped, and so is a block whose results are missing; both
are reported on stderr. Pure standard library.
"""

import argparse
import json
import os
import re
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import report
# pylint: enable=g-import-not-at-top,wrong-import-position

DEFAULT_FILES = ('README.md', os.path.join('docs', 'performance.md'))
RESULT_NAMES = ('throughput', 'scaling', 'fused', 'input_pipeline',
                'first_step')
MARKER = re.compile(
    r'(?P<open><!-- generated:(?P<name>[\w-]+) \(python -m benchmarks\.render'
    r'\) -->\n)(?P<body>.*?)(?P<close><!-- /generated:(?P=name) -->)',
    re.DOTALL)


def load_latest(results_dir: str) -> dict[str, dict]:
  """{'throughput': ..., 'scaling': ..., 'input_pipeline': ...}, those found."""
  found = {}
  for name in RESULT_NAMES:
    path = os.path.join(results_dir, f'{name}-latest.json')
    if os.path.exists(path):
      with open(path) as f:
        found[name] = json.load(f)
  return found


def source_line(results: dict) -> str:
  """Which file, command, date and machine a table comes from."""
  date = results.get('started_utc', '?').replace('T', ' ')[:16]
  partial = ''
  if results.get('complete') is False:
    partial = (f" **A partial run: {len(results['results'])} of "
               f"{results['runs_planned']} runs.**")
  return (f"Rendered from `{results.get('results_file', '?')}`: "
          f"`{results.get('command', '?')}`, {date} UTC, "
          f"{report.describe_machine(results['machine'])}.{partial}")


def setup_block(results: dict) -> str:
  """Machine, interpreters and package versions, and the recipe per batch."""
  machine = results['machine']
  loads = ', '.join(f'{value:.1f}' for value in machine['load_average'])
  memory = (f", {machine['memory_gib']:.0f} GiB"
            if machine.get('memory_gib') else '')
  lines = [f"- Machine: {machine['cpu']}, {machine['cores']} cores{memory}; "
           f'load average {loads} (1, 5, 15 minutes) at the start.']
  for python, versions in results.get('software', {}).items():
    packages = ', '.join(f'{name} {version}'
                         for name, version in sorted(versions.items()))
    lines.append(f'- `{python}`: {packages}.')
  recipes = {}
  for run in results['results']:
    if 'recipe' in run:
      recipes.setdefault(run['batch'], run['recipe'])
  for batch, recipe in recipes.items():
    fields = ', '.join(f'{key} {value:g}' if isinstance(value, float) else
                       f'{key} {value}' for key, value in recipe.items()
                       if key != 'config')
    lines.append(f"- Recipe at batch {batch}, from `{recipe['config']}`: "
                 f'{fields}.')
  settings = results.get('settings', {})
  lines.append(f"- {settings.get('repeats')} alternating rounds; per run "
               f"the first step, {settings.get('warmup')} untimed and "
               f"{settings.get('steps')} timed; dtype {settings.get('dtype')}.")
  return '\n'.join(lines)


def status(met: bool) -> str:
  return 'met' if met else '**not met**'


def input_pipeline_block(results: dict) -> str:
  """The table, then AutoAugment's cost and rate against their targets."""
  ratios = results.get('cost_ratios', {})
  text = report.input_pipeline_table(results)
  if ratios:
    cost = ratios['autoaugment']
    rate = results['modes']['train_autoaugment']['images_per_cpu_s']
    cost_met = status(cost <= report.AUGMENT_COST_TARGET)
    rate_met = status(rate >= report.PREPROCESS_RATE_TARGET)
    text += (f'\n\nAutoAugment costs {cost:.2f}× the plain train '
             'preprocessing in CPU time per image (target ≤ '
             f'{report.AUGMENT_COST_TARGET}×: {cost_met}) and runs at '
             f'{rate:.0f} images per CPU-second (target ≥ '
             f'{report.PREPROCESS_RATE_TARGET:.0f}: {rate_met}); RandAugment '
             f"costs {ratios['randaugment']:.2f}×. Load average "
             f"{results['machine']['load_average'][0]:.1f} at the start and "
             f"{results['load_average_end']:.1f} at the end on "
             f"{results['machine']['usable_cores']} usable cores.")
  return text


def host_bytes_block(results: dict) -> str:
  """Image bytes per batch as handed to the devices, against float32."""
  names = dict(train_none='train, no augmentation',
               train_autoaugment='train, AutoAugment v0',
               train_randaugment='train, RandAugment (2, 10)', eval='eval')
  batch, resolution = results['settings']['batch_size'], results['resolution']
  lines = [f'| mode | host dtype (`auto`) | MiB per batch of {batch} at '
           f'{resolution} px | as float32 | B7 batch 4096 at 600 px (GB) | '
           'as float32 (GB) |', '|---|---|---:|---:|---:|---:|']
  for mode, name in names.items():
    figures = results['host_bytes'].get(mode)
    if figures:
      lines.append(
          f"| {name} | {figures['dtype']} | "
          f"{figures['bytes_per_batch'] / 2**20:.1f} | "
          f"{figures['float32_bytes_per_batch'] / 2**20:.1f} | "
          f"{figures['b7_batch_gb']:.1f} | "
          f"{figures['b7_batch_float32_gb']:.1f} |")
  return '\n'.join(lines)


def first_step_block(results: dict) -> str:
  """Cold and warm first step of train.py, against the warm target."""
  lines = ['| run | compilation cache | first step (logged) | launch to first '
           'step | whole run | load average (start, end) |',
           '|---|---|---:|---:|---:|---|']
  for name, run in results['runs'].items():
    cache = (f"empty, {run['cache_files_after']} files written"
             if not run['cache_files_before'] else
             f"{run['cache_files_before']} files")
    lines.append(f"| {name}{' (resumed)' if run['resumed'] else ''} | "
                 f"{cache} | {run['first_step_s']:.1f} s | "
                 f"{run['launch_to_first_step_s']:.1f} s | "
                 f"{run['wall_s']:.1f} s | {run['load_average_start']:.1f}, "
                 f"{run['load_average_end']:.1f} |")
  warm = results['runs']['warm']
  lines.append(
      f"\nThe warm restart reaches its first step "
      f"{warm['launch_to_first_step_s']:.1f} s after launch (target ≤ "
      f"{results['warm_target_s']:.0f} s: "
      f"{status(results['warm_target_met'])}), on "
      f"{results['machine']['usable_cores']} usable cores with a load average "
      f"of {warm['load_average_start']:.1f} at its start.")
  return '\n'.join(lines)


def blocks(latest: dict[str, dict]) -> dict[str, str]:
  """The Markdown of every block the loaded results can give, by NAME."""
  found = {}
  throughput = latest.get('throughput')
  scaling = latest.get('scaling')
  if throughput:
    source = source_line(throughput)
    summary = throughput['summary']
    found['throughput-summary'] = (report.summary_table(summary) + '\n\n' +
                                   source)
    found['throughput-full'] = report.full_table(summary) + '\n\n' + source
    found['throughput-rounds'] = (report.rounds_table(throughput['results'])
                                  + '\n\n' + source)
    found['throughput-setup'] = setup_block(throughput) + '\n\n' + source
  if scaling:
    found['scaling'] = (report.scaling_table(scaling['scaling']) + '\n\n' +
                        source_line(scaling))
  if latest.get('fused'):
    found['fused'] = (report.scaling_table(latest['fused']['scaling']) +
                      '\n\n' + source_line(latest['fused']))
  if throughput or scaling:
    rows = report.targets(throughput and throughput['summary'],
                          scaling and scaling['scaling'])
    sources = '\n'.join(source_line(r) for r in (throughput, scaling) if r)
    found['targets'] = report.targets_table(rows) + '\n\n' + sources
  if latest.get('input_pipeline'):
    found['input-pipeline'] = (input_pipeline_block(latest['input_pipeline'])
                               + '\n\n' + source_line(latest['input_pipeline']))
    if 'host_bytes' in latest['input_pipeline']:
      found['host-bytes'] = (host_bytes_block(latest['input_pipeline']) +
                             '\n\n' + source_line(latest['input_pipeline']))
  if latest.get('first_step'):
    found['first-step'] = (first_step_block(latest['first_step']) + '\n\n' +
                           source_line(latest['first_step']))
  return found


def replace_blocks(text: str, rendered: dict[str, str]
                   ) -> tuple[str, list[str], list[str]]:
  """Replaces the body of each marker pair whose NAME `rendered` has.

  Returns:
    (the new text, the NAMEs replaced, the NAMEs found with nothing to put
    there, left as they were).
  """
  replaced, missing = [], []

  def substitute(match):
    name = match.group('name')
    if name not in rendered:
      missing.append(name)
      return match.group(0)
    replaced.append(name)
    return (match.group('open') + rendered[name].rstrip('\n') + '\n' +
            match.group('close'))

  return MARKER.sub(substitute, text), replaced, missing


def render_file(path: str, rendered: dict[str, str]) -> bool:
  """Rewrites the marked blocks of `path`; False (and a note) if it has none."""
  with open(path) as f:
    text = f.read()
  new_text, replaced, missing = replace_blocks(text, rendered)
  for name in missing:
    print(f'{path}: no results for block {name!r}; left as it was.',
          file=sys.stderr)
  if not replaced and not missing:
    print(f'{path}: no generated-block markers; skipped.', file=sys.stderr)
    return False
  if new_text != text:
    with open(path, 'w') as f:
      f.write(new_text)
  print(f"{path}: rendered {', '.join(replaced) or 'nothing'}.",
        file=sys.stderr)
  return True


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('files', nargs='*',
                      default=[os.path.join(REPO_ROOT, f)
                               for f in DEFAULT_FILES],
                      help='Markdown files (default: README.md and '
                      'docs/performance.md).')
  parser.add_argument('--results-dir', default=report.RESULTS_DIR)
  args = parser.parse_args()
  rendered = blocks(load_latest(args.results_dir))
  for path in args.files:
    if not os.path.exists(path):
      print(f'{path}: no such file; skipped.', file=sys.stderr)
      continue
    render_file(path, rendered)


if __name__ == '__main__':
  main()
