"""A plan's finished runs as a table: per-run JSONL, per-network Markdown.

`collect` reads whatever runs of a plan have finished (from any process or
shard: only the files in the run directories count), `aggregate` takes the
mean and sample standard deviation over each network's seeds, and `write`
puts results.jsonl, results.md and (for a search) best.json in the workdir.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any, Mapping, Sequence

from efficientnet_jax import arch
from efficientnet_jax.scaling import plan as plan_lib
from efficientnet_jax.scaling import runs as runs_lib

RESULTS_JSONL = 'results.jsonl'
RESULTS_MARKDOWN = 'results.md'


def collect(prepared: Sequence[runs_lib.Prepared],
            metric: str) -> list[dict[str, Any]]:
  """One record per finished run, in plan order."""
  records = []
  for item in prepared:
    metrics = runs_lib.final_metrics(item.directory, item.total_steps, metric)
    if metrics is None:
      continue
    run = item.run
    records.append(dict(
        name=run.name, kind=run.kind, label=run.label, strategy=run.strategy,
        seed=run.seed, factor=run.factor,
        coefficients=(None if run.coefficients is None else
                      [run.coefficients.alpha, run.coefficients.beta,
                       run.coefficients.gamma]),
        width=run.width, depth=run.depth, blocks=run.blocks,
        resolution=run.resolution,
        macs=run.macs, steps=item.total_steps, overrides=dict(run.overrides),
        metrics={key: value for key, value in metrics.items()
                 if key.startswith(('eval/', 'eval_ema/'))}))
  return records


def aggregate(records: Sequence[Mapping[str, Any]], metric: str,
              planned_seeds: int) -> list[dict[str, Any]]:
  """One row per network: mean and std of `metric` over its finished seeds."""
  rows: dict[str, dict[str, Any]] = {}
  for record in records:
    row = rows.setdefault(record['label'], dict(
        {key: record[key] for key in ('kind', 'label', 'strategy', 'factor',
                                      'coefficients', 'width', 'depth',
                                      'blocks', 'resolution', 'macs', 'steps')},
        values=[]))
    row['values'].append(record['metrics'][metric])
  for row in rows.values():
    values = row.pop('values')
    row.update(mean=statistics.fmean(values),
               std=statistics.stdev(values) if len(values) > 1 else 0.0,
               seeds=len(values), planned_seeds=planned_seeds)
  return list(rows.values())


def best(rows: Sequence[Mapping[str, Any]], *,
         complete: bool = True) -> Mapping[str, Any] | None:
  """The row of highest mean (among those with every planned seed)."""
  candidates = [row for row in rows
                if row['seeds'] == row['planned_seeds'] or not complete]
  return max(candidates, key=lambda row: row['mean'], default=None)


def ready_line(row: Mapping[str, Any],
               recipe_model: Mapping[str, Any]) -> str:
  """The `--config.model.*` flags of a row's network (the rule's fields)."""
  alpha, beta, gamma = row['coefficients']
  overrides = plan_lib.model_overrides(
      recipe_model, phi=1.0, alpha=alpha, beta=beta, gamma=gamma,
      resolution=row['resolution'],
      dropout_rate=arch.resolve(recipe_model).dropout_rate)
  # phi, alpha, beta, gamma always, so the line reads as the rule even where
  # a value equals the recipe's.
  fields = dict(phi=1.0, alpha=alpha, beta=beta, gamma=gamma) | {
      key.split('.', 1)[1]: value for key, value in overrides.items()}
  return ' '.join(f'--config.model.{key}={value}'
                  for key, value in fields.items())


def format_percent(row: Mapping[str, Any]) -> str:
  text = f'{100 * row["mean"]:.2f}'
  if row['planned_seeds'] > 1:
    text += f' ± {100 * row["std"]:.2f}'
  if row['seeds'] < row['planned_seeds']:
    text += f' ({row["seeds"]} of {row["planned_seeds"]} seeds)'
  return text


def markdown(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
  """The table: one row per network, by strategy then MACs."""
  lines = [f'| network | strategy | alpha, beta, gamma / phi | width | depth '
           f'| blocks | resolution | MMACs | M params | {metric} (%) |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for row in sorted(rows, key=lambda r: (r['strategy'], r['macs'],
                                         r['label'])):
    if row['coefficients'] is not None and row['strategy'] == 'search':
      scaling = ', '.join(f'{c:g}' for c in row['coefficients'])
    elif row['strategy'] in ('compound', 'sweep'):
      scaling = f'phi {row["factor"]:.3g}'
    else:
      scaling = f'x{row["factor"]:.3g}'
    params = f'{row["params"] / 1e6:.2f}' if 'params' in row else '-'
    lines.append(
        f'| {row["label"]} | {row["strategy"]} | {scaling} | '
        f'{row["width"]:.3g} | {row["depth"]:.3g} | {row["blocks"]} | '
        f'{row["resolution"]} | '
        f'{row["macs"] / 1e6:.1f} | {params} | {format_percent(row)} |')
  return '\n'.join(lines) + '\n'


def write(workdir: str, records: Sequence[Mapping[str, Any]],
          rows: Sequence[Mapping[str, Any]], metric: str, *,
          extra: str = '') -> None:
  """results.jsonl (per run), results.md (per network), best.json (search)."""
  with open(os.path.join(workdir, RESULTS_JSONL), 'w') as f:
    for record in records:
      f.write(json.dumps(record) + '\n')
  with open(os.path.join(workdir, RESULTS_MARKDOWN), 'w') as f:
    f.write(markdown(rows, metric) + extra)
  top = best(rows)
  if top is not None and top['strategy'] == 'search':
    alpha, beta, gamma = top['coefficients']
    with open(os.path.join(workdir, plan_lib.BEST_FILE), 'w') as f:
      json.dump(dict(alpha=alpha, beta=beta, gamma=gamma, mean=top['mean'],
                     std=top['std'], label=top['label'], metric=metric), f,
                indent=2)
