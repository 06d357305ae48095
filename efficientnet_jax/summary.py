"""Prints every preset's size and cost beside the paper's figures.

  python -m efficientnet_jax.summary            # markdown table
  python -m efficientnet_jax.summary --json     # the same rows as JSON
  python -m efficientnet_jax.summary --plot=scaling.png

Parameters are counted from the real Flax module with `jax.eval_shape` (no
weights are allocated); multiply-adds come from `arch.count_macs`.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from absl import flags

from efficientnet_jax import arch
from efficientnet_jax import cli
from efficientnet_jax import errors
from efficientnet_jax import models

# Paper Table 2 (#Params, FLOPs = multiply-adds) and, for Lite, TPU-LITE's
# README (Params, MAdds). docs/reference.md §3 and §4.1. V2: google/automl
# efficientnetv2 README (Params, FLOPs), XL the paper's Table 7; EdgeTPU:
# timm's param_count and infer_gmacs for tf_efficientnet_e{s,m,l}, whose
# port strides the 3x3 expansion where TPU-MODEL strides the 1x1 projection
# (so ours/paper is ~1.2-1.3 there). docs/reference.md §10.
PUBLISHED = {
    'v2-b0': (7.1e6, 0.72e9), 'v2-b1': (8.1e6, 1.2e9),
    'v2-b2': (10.1e6, 1.7e9), 'v2-b3': (14.4e6, 3.0e9),
    'v2-s': (21.5e6, 8.4e9), 'v2-m': (54.1e6, 24.7e9),
    'v2-l': (119.5e6, 56.3e9), 'v2-xl': (208e6, 94e9),
    'edgetpu-s': (5.44e6, 1.81e9), 'edgetpu-m': (6.90e6, 3.04e9),
    'edgetpu-l': (10.59e6, 8.0e9),
    'b0': (5.3e6, 0.39e9), 'b1': (7.8e6, 0.70e9), 'b2': (9.2e6, 1.0e9),
    'b3': (12e6, 1.8e9), 'b4': (19e6, 4.2e9), 'b5': (30e6, 9.9e9),
    'b6': (43e6, 19e9), 'b7': (66e6, 37e9),
    'lite0': (4.7e6, 407e6), 'lite1': (5.4e6, 631e6), 'lite2': (6.1e6, 899e6),
    'lite3': (8.2e6, 1.44e9), 'lite4': (13.0e6, 2.64e9),
}


def count_trainable(spec: arch.ArchSpec, num_classes: int = 1000) -> int:
  """Trainable parameters of the network, by shape evaluation."""
  model = models.EfficientNet(spec, num_classes=num_classes)
  return models.count_params(models.abstract_variables(model)['params'])


def preset_row(variant: str) -> dict[str, Any]:
  """One table row: our counts, the published ones and the implied phi."""
  preset = arch.PRESETS[variant]
  spec = arch.spec_for(variant)
  params = count_trainable(spec)
  macs = arch.count_macs(spec)
  paper_params, paper_macs = PUBLISHED.get(variant, (None, None))
  phi = arch.implied_phi(preset)
  return dict(
      variant=variant,
      family=preset.family,
      width=preset.width_coefficient,
      depth=preset.depth_coefficient,
      resolution=preset.resolution,
      dropout=preset.dropout_rate,
      params=params,
      gmacs=macs / 1e9,
      paper_params=paper_params,
      paper_gmacs=None if paper_macs is None else paper_macs / 1e9,
      gmacs_vs_paper=None if paper_macs is None else macs / paper_macs,
      phi_width=phi['width'],
      phi_depth=phi['depth'],
      phi_resolution=phi['resolution'])


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A markdown table of preset rows."""
  def maybe(value, fmt):
    return '–' if value is None else format(value, fmt)
  lines = [
      '| variant | w | d | res | dropout | params | GMACs | paper params | '
      'paper GMACs | ours/paper | phi (w, d, res) |',
      '|---|---|---|---|---|---|---|---|---|---|---|']
  for row in rows:
    lines.append(
        f"| {row['variant']} | {row['width']} | {row['depth']} | "
        f"{row['resolution']} | {row['dropout']} | {row['params']:,} | "
        f"{row['gmacs']:.3f} | {maybe(row['paper_params'], ',.0f')} | "
        f"{maybe(row['paper_gmacs'], '.2f')} | "
        f"{maybe(row['gmacs_vs_paper'], '.3f')} | "
        f"{row['phi_width']:.2f}, {row['phi_depth']:.2f}, "
        f"{row['phi_resolution']:.2f} |")
  return '\n'.join(lines)


def plot_scaling(rows: Sequence[dict[str, Any]], path: str) -> None:
  """Params and MACs of the rule (a curve over phi) and of the presets."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  phis = [i / 2 for i in range(17)]
  rule = [arch.spec_for(f'phi={phi}') for phi in phis]
  rule_params = [count_trainable(spec) / 1e6 for spec in rule]
  rule_gmacs = [arch.count_macs(spec) / 1e9 for spec in rule]
  presets = [row for row in rows if row['family'] == 'efficientnet']
  preset_phi = [(row['phi_width'] + row['phi_depth'] + row['phi_resolution']) /
                3 for row in presets]

  figure, axes = plt.subplots(1, 3, figsize=(16, 4.2))
  for axis, values, key, label in (
      (axes[0], rule_params, 'params', 'parameters (M)'),
      (axes[1], rule_gmacs, 'gmacs', 'multiply-adds (G)')):
    axis.plot(phis, values, '-', color='tab:blue',
              label='rule: depth 1.2^φ, width 1.1^φ, res 224·1.15^φ')
    scale = 1e6 if key == 'params' else 1
    axis.plot(preset_phi, [row[key] / scale for row in presets], 'o',
              color='tab:red', label='published presets (mean implied φ)')
    for phi, row in zip(preset_phi, presets):
      axis.annotate(row['variant'].upper(), (phi, row[key] / scale),
                    textcoords='offset points', xytext=(4, -10), fontsize=8)
    axis.set_yscale('log')
    axis.set_xlabel('compound coefficient φ')
    axis.set_ylabel(label)
    axis.grid(True, which='both', alpha=0.3)
  axes[1].plot(phis, [rule_gmacs[0] * 2**phi for phi in phis], ':',
               color='gray', label='B0 · 2^φ (the paper\'s target)')
  colors = {'efficientnet': 'tab:red', 'lite': 'tab:orange',
            'edgetpu': 'tab:green', 'v2': 'tab:purple'}
  for family, color in colors.items():
    members = [row for row in rows if row['family'] == family]
    if not members:
      continue
    axes[2].plot([row['gmacs'] for row in members],
                 [row['params'] / 1e6 for row in members], 'o-', color=color,
                 label=f'{family}: ours')
    published = [row for row in members if row['paper_gmacs'] is not None]
    axes[2].plot([row['paper_gmacs'] for row in published],
                 [row['paper_params'] / 1e6 for row in published], 'x',
                 color=color, markersize=6,
                 label=f'{family}: published' if published else None)
    for row in members:
      axes[2].annotate(row['variant'], (row['gmacs'], row['params'] / 1e6),
                       textcoords='offset points', xytext=(4, -10),
                       fontsize=7)
  axes[2].set_xscale('log')
  axes[2].set_yscale('log')
  axes[2].set_xlabel('multiply-adds (G) at the preset resolution')
  axes[2].set_ylabel('parameters (M)')
  axes[2].grid(True, which='both', alpha=0.3)
  for axis in axes:
    axis.legend(fontsize=8)
  figure.suptitle('EfficientNet: compound scaling rule vs published presets, '
                  'and every family')
  figure.tight_layout()
  figure.savefig(path, dpi=110)


def define_flags() -> None:
  """Defines the command line's flags in absl's global registry.

  Called by the entry point only, so that importing this module (as the
  tests and notebooks do) registers no process-wide flags.
  """
  flags.DEFINE_bool('json', False, 'Print the rows as one JSON list.')
  flags.DEFINE_string('plot', None,
                      'Also write a PNG of params and MACs against phi.')
  flags.DEFINE_list('variants', list(arch.PRESETS), 'Variants to list.')


def main(argv: Sequence[str]) -> None:
  del argv
  options = flags.FLAGS
  unknown = [v for v in options.variants if v not in arch.PRESETS]
  if unknown:
    raise errors.ConfigError(f'--variants: unknown {", ".join(unknown)}; use '
                             f'{", ".join(arch.PRESETS)}.')
  rows = [preset_row(variant) for variant in options.variants]
  if options.plot:
    plot_scaling(rows, options.plot)
  if options.json:
    print(json.dumps(rows, indent=None))
    return
  print(format_table(rows))
  print()
  print('phi: the compound coefficient each published coefficient implies '
        '(log(c)/log(alpha|beta|gamma)); the presets are a hand-made table, '
        'not one phi. ours/paper: our multiply-add count over the paper\'s '
        'rounded figure (B4/B5 sit ~5% above it; EdgeTPU ~1.3x timm\'s, '
        'which strides the fused expansion, not the projection, as the '
        'official code does).')
  if options.plot:
    print(f'wrote {options.plot}')


if __name__ == '__main__':
  define_flags()
  cli.run(main)
