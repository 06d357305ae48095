"""The figures of a search, a study (paper Figure 8) and a sweep.

matplotlib with the Agg backend (no display); each function takes the rows
report.aggregate returns and writes one PNG.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

Rows = Sequence[Mapping[str, Any]]
STRATEGY_ORDER = ('width', 'depth', 'resolution', 'compound')


def plot_search(rows: Rows, path: str, metric: str) -> None:
  """Each candidate's mean ± std, best at the top."""
  rows = sorted(rows, key=lambda row: row['mean'])
  figure, axes = plt.subplots(figsize=(6.4, 1.2 + 0.32 * len(rows)))
  positions = range(len(rows))
  axes.barh(positions, [100 * row['mean'] for row in rows],
            xerr=[100 * row['std'] for row in rows], color='tab:blue',
            capsize=3)
  axes.set_yticks(list(positions), [
      'α {:g}, β {:g}, γ {:g}'.format(*row['coefficients']) for row in rows])
  low = min(100 * (row['mean'] - row['std']) for row in rows)
  axes.set_xlim(max(0.0, low - 2), 100)
  axes.set_xlabel(f'{metric} (%), mean ± std over seeds')
  axes.set_title('Compound-coefficient search at φ = 1')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def plot_study(rows: Rows, path: str, metric: str) -> None:
  """Accuracy against MACs, one line per strategy, from the shared base."""
  figure, axes = plt.subplots(figsize=(6.4, 4.4))
  base = [row for row in rows if row['strategy'] == 'base']
  for strategy in STRATEGY_ORDER:
    line = sorted(base + [row for row in rows if row['strategy'] == strategy],
                  key=lambda row: row['macs'])
    if len(line) <= len(base):
      continue
    axes.errorbar([row['macs'] / 1e6 for row in line],
                  [100 * row['mean'] for row in line],
                  yerr=[100 * row['std'] for row in line], marker='o',
                  capsize=3, label=strategy)
  axes.set_xscale('log')
  axes.set_xlabel('multiply-adds per image (millions)')
  axes.set_ylabel(f'{metric} (%)')
  axes.set_title('Scaling one dimension vs compound (paper Fig. 8)')
  axes.legend()
  axes.grid(alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def plot_sweep(rows: Rows, path: str, metric: str) -> None:
  """Accuracy, parameters and MACs against phi."""
  rows = sorted(rows, key=lambda row: row['factor'])
  phis = [row['factor'] for row in rows]
  figure, panels = plt.subplots(1, 3, figsize=(10.5, 3.4))
  panels[0].errorbar(phis, [100 * row['mean'] for row in rows],
                     yerr=[100 * row['std'] for row in rows], marker='o',
                     capsize=3)
  panels[0].set_ylabel(f'{metric} (%)')
  panels[1].plot(phis, [row['params'] / 1e6 for row in rows], marker='o')
  panels[1].set_ylabel('parameters (millions)')
  panels[2].plot(phis, [row['macs'] / 1e6 for row in rows], marker='o')
  panels[2].set_ylabel('multiply-adds (millions)')
  panels[2].set_yscale('log')
  for panel in panels:
    panel.set_xlabel('φ')
    panel.grid(alpha=0.3)
  figure.suptitle('The compound-scaling rule')
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)
