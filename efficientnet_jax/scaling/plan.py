"""What a search, study or sweep trains: one `Run` per network and seed.

Pure Python (no jax): a plan is a list of runs, each a set of overrides of
the recipe's config (`model.phi`, `model.alpha`, ...) that `arch.resolve`
turns into the network, plus a seed. A run's directory name comes from its
label and seed only, so the same command always plans the same directories
and a restarted or sharded job finds the runs it already has.

Every network is expressed through the compound-scaling rule of the model
section (arch.compound_coefficients): width = beta^phi, depth = alpha^phi,
and an explicit `model.resolution` wherever the rule's own (224 gamma^phi)
differs from the one planned. A single-dimension run is the rule at phi = 1
with the other two coefficients at 1, so every run trains through the same
config fields that `--config.model.*` sets on the command line.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any, Mapping

import ml_collections

from efficientnet_jax import arch
from efficientnet_jax import errors
from efficientnet_jax import validate
from efficientnet_jax.scaling import grid

KINDS = ('search', 'study', 'sweep')
# Recipe fields the scaling config may set (None there: the recipe's value).
RECIPE_FIELDS = ('dataset', 'data_dir', 'train_split', 'eval_split',
                 'batch_size', 'num_epochs', 'num_train_steps',
                 'eval_every_epochs')
BEST_FILE = 'best.json'


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: a network (as config overrides) and a seed."""
  kind: str  # One of KINDS.
  label: str  # Names the network; with the seed, the run's directory.
  strategy: str  # 'search', 'base', grid.STRATEGIES or 'sweep'.
  seed: int
  overrides: tuple[tuple[str, Any], ...]  # ('model.phi', 1.0), ... sorted.
  coefficients: grid.Coefficients | None  # Search and compound runs.
  factor: float  # What the strategy scales: phi, width, depth, res / base.
  width: float
  depth: float
  blocks: int  # Blocks in all stages, after depth rounding.
  resolution: int
  macs: int

  @property
  def name(self) -> str:
    return f'{self.label}/seed{self.seed}'

  @property
  def model_flags(self) -> str:
    """The run's model as command-line overrides (seed excluded)."""
    return ' '.join(f'--config.{key}={value!r}' for key, value in
                    self.overrides if key != 'seed')


def load_recipe(path: str, base: str) -> ml_collections.ConfigDict:
  """`get_config(base)` of a recipe file (configs/demo.py, imagenet.py, ...)."""
  if not os.path.isfile(path):
    raise errors.ConfigError(f'config.recipe={path!r} is not a file; name a '
                             'recipe, e.g. configs/demo.py.')
  spec = importlib.util.spec_from_file_location('scaling_recipe', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    return module.get_config(base)
  except ValueError as error:
    raise errors.ConfigError(f'Base {base!r} with recipe {path}: '
                             f'{error}') from None


def recipe_config(config: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """The recipe with the scaling config's dataset and budget applied."""
  recipe = load_recipe(config['recipe'], config['base'])
  for name in RECIPE_FIELDS:
    if config[name] is not None:
      recipe[name] = config[name]
  if config['base_blocks'] is not None:
    recipe.model.blocks = tuple(config['base_blocks'])
  return recipe


def base_resolution(config: Mapping[str, Any],
                    recipe: ml_collections.ConfigDict) -> int:
  """The base network's resolution: the scaling config's, the recipe's, or
  the variant's; refused below validate.MIN_RESOLUTION."""
  resolution = config['base_resolution'] or recipe.model.resolution
  if resolution is None:
    resolution = arch.PRESETS[recipe.model.variant].resolution
  if resolution < validate.MIN_RESOLUTION:
    raise errors.ConfigError(
        f'Base resolution {resolution}px is below the network\'s minimum of '
        f'{validate.MIN_RESOLUTION}px (five stride-2 layers); raise '
        'config.base_resolution.')
  return int(resolution)


def check_base(recipe: ml_collections.ConfigDict) -> arch.ArchSpec:
  """The base network; the rule scales from width 1 and depth 1."""
  validate.check_block_strings(recipe.model)
  variant = recipe.model.variant
  preset = arch.PRESETS[variant]
  if (preset.width_coefficient, preset.depth_coefficient) != (1.0, 1.0):
    unscaled = [name for name, row in arch.PRESETS.items()
                if (row.width_coefficient, row.depth_coefficient) == (1, 1)]
    raise errors.ConfigError(
        f'Base {variant!r} is itself scaled (width '
        f'{preset.width_coefficient:g}, depth {preset.depth_coefficient:g}); '
        f'scale from an unscaled one: {", ".join(unscaled)}.')
  return arch.resolve(recipe.model)


def model_overrides(recipe_model: Mapping[str, Any], *, phi: float,
                    alpha: float, beta: float, gamma: float, resolution: int,
                    dropout_rate: float | None) -> dict[str, Any]:
  """The fewest `model.*` overrides that give this network.

  `model.resolution` (and `model.dropout_rate`) only where the rule with the
  recipe's own value would give another one.
  """
  current = dict(recipe_model)
  wanted = current | dict(phi=float(phi), alpha=float(alpha),
                          beta=float(beta), gamma=float(gamma))
  spec = arch.resolve(wanted)
  if spec.resolution != resolution:
    wanted['resolution'] = int(resolution)
  if dropout_rate is not None and spec.dropout_rate != dropout_rate:
    wanted['dropout_rate'] = float(dropout_rate)
  return {f'model.{key}': value for key, value in wanted.items()
          if current.get(key) != value}


def make_run(kind: str, label: str, strategy: str, seed: int,
             recipe: ml_collections.ConfigDict, overrides: Mapping[str, Any],
             num_classes: int, *, coefficients: grid.Coefficients | None,
             factor: float) -> Run:
  if recipe.model.blocks is not None:
    # A base of one's own: every run (and its printed command) carries it.
    overrides = dict(overrides) | {'model.blocks': tuple(recipe.model.blocks)}
  model = dict(recipe.model) | {key.split('.', 1)[1]: value for key, value in
                                overrides.items()}
  spec = validate.check_model_section(model, prefix='config.model')
  return Run(kind=kind, label=label, strategy=strategy, seed=seed,
             overrides=tuple(sorted(dict(overrides, seed=seed).items())),
             coefficients=coefficients, factor=factor,
             width=spec.width_coefficient, depth=spec.depth_coefficient,
             blocks=len(spec.blocks), resolution=spec.resolution,
             macs=arch.count_macs(spec, num_classes))


def seeds(config: Mapping[str, Any]) -> range:
  if config['num_seeds'] < 1:
    raise errors.ConfigError(f'config.num_seeds={config["num_seeds"]!r}: '
                             'use at least 1.')
  return range(config['num_seeds'])


def label_number(value: float) -> str:
  return f'{value:.4g}'


def search_plan(config: Mapping[str, Any], num_classes: int) -> list[Run]:
  """Every grid point at phi = 1, the base's dropout fixed, k seeds each."""
  recipe = recipe_config(config)
  base = check_base(recipe)
  resolution0 = base_resolution(config, recipe)
  search = config['search']
  runs = []
  for point in grid.coefficient_grid(search['step'], search['tolerance'],
                                     search['target']):
    resolution = grid.scaled_resolution(resolution0, point.gamma,
                                        config['resolution_multiple'])
    overrides = model_overrides(
        recipe.model, phi=1.0, alpha=point.alpha, beta=point.beta,
        gamma=point.gamma, resolution=resolution,
        dropout_rate=base.dropout_rate)
    label = (f'a{label_number(point.alpha)}_b{label_number(point.beta)}_'
             f'g{label_number(point.gamma)}')
    runs.extend(make_run('search', label, 'search', seed, recipe, overrides,
                         num_classes, coefficients=point, factor=1.0)
                for seed in seeds(config))
  return runs


def study_coefficients(config: Mapping[str, Any]) -> grid.Coefficients:
  """The study's compound coefficients: a finished search's best, or given."""
  study = config['study']
  if study['search_workdir'] is None:
    return grid.Coefficients(study['alpha'], study['beta'], study['gamma'])
  path = os.path.join(study['search_workdir'], BEST_FILE)
  if not os.path.isfile(path):
    raise errors.ConfigError(
        f'config.study.search_workdir: no {path}; run the search (and its '
        'report) first, or set config.study.search_workdir=None and give '
        'config.study.alpha/beta/gamma.')
  with open(path) as f:
    best = json.load(f)
  return grid.Coefficients(best['alpha'], best['beta'], best['gamma'])


def study_plan(config: Mapping[str, Any], num_classes: int,
               coefficients: grid.Coefficients) -> list[Run]:
  """The base, then each strategy solved to each MAC target (x base MACs)."""
  recipe = recipe_config(config)
  base = check_base(recipe)
  resolution0 = base_resolution(config, recipe)
  multiple = config['resolution_multiple']
  study = config['study']
  unknown = set(study['strategies']) - set(grid.STRATEGIES)
  if unknown or not study['strategies']:
    raise errors.ConfigError(
        f'config.study.strategies={tuple(study["strategies"])!r}: choose '
        f'from {", ".join(grid.STRATEGIES)}.')
  if not study['mac_targets'] or min(study['mac_targets']) <= 1:
    raise errors.ConfigError(
        f'config.study.mac_targets={tuple(study["mac_targets"])!r}: give '
        'multiples of the base MACs above 1, e.g. (2.0, 4.0).')

  def network(strategy: str, factor: float) -> dict[str, Any]:
    fields = dict(phi=1.0, alpha=1.0, beta=1.0, gamma=1.0,
                  resolution=resolution0)
    if strategy == 'width':
      fields['beta'] = factor
    elif strategy == 'depth':
      fields['alpha'] = factor
    elif strategy == 'resolution':
      fields['resolution'] = grid.scaled_resolution(resolution0, factor,
                                                    multiple)
      fields['gamma'] = fields['resolution'] / resolution0
    else:  # compound: factor is phi.
      fields = dict(phi=factor, alpha=coefficients.alpha,
                    beta=coefficients.beta, gamma=coefficients.gamma,
                    resolution=grid.scaled_resolution(
                        resolution0, coefficients.gamma**factor, multiple))
    return model_overrides(recipe.model, dropout_rate=base.dropout_rate,
                           **fields)

  def spec(strategy: str, factor: float) -> arch.ArchSpec:
    model = dict(recipe.model) | {key.split('.', 1)[1]: value for key, value
                                  in network(strategy, factor).items()}
    return arch.resolve(model)

  def macs(strategy: str, factor: float) -> int:
    return arch.count_macs(spec(strategy, factor), num_classes)

  def layers(strategy: str, factor: float) -> tuple[Any, ...]:
    built = spec(strategy, factor)
    return (built.stem_filters, built.head_filters, built.blocks,
            built.resolution)

  base_macs = macs('width', 1.0)
  runs = [make_run('study', 'base', 'base', seed, recipe,
                   network('width', 1.0), num_classes, coefficients=None,
                   factor=1.0) for seed in seeds(config)]
  for target in study['mac_targets']:
    for strategy in study['strategies']:
      low = 0.0 if strategy == 'compound' else 1.0
      factor = grid.bisect(lambda f, s=strategy: macs(s, f),
                           target * base_macs, low)
      if strategy == 'resolution':  # The rounded size over the base's.
        factor = grid.scaled_resolution(resolution0, factor,
                                        multiple) / resolution0
      else:
        factor = grid.tidy(lambda f, s=strategy: layers(s, f), factor)
      runs.extend(make_run(
          'study', f'{strategy}_{label_number(target)}x', strategy, seed,
          recipe, network(strategy, factor), num_classes,
          coefficients=coefficients if strategy == 'compound' else None,
          factor=factor) for seed in seeds(config))
  return runs


def sweep_plan(config: Mapping[str, Any], num_classes: int) -> list[Run]:
  """The rule at each phi: the recipe's dropout rule, k seeds each."""
  recipe = recipe_config(config)
  check_base(recipe)
  resolution0 = base_resolution(config, recipe)
  sweep = config['sweep']
  if not sweep['phis'] or min(sweep['phis']) < 0:
    raise errors.ConfigError(f'config.sweep.phis={tuple(sweep["phis"])!r}: '
                             'give phi values >= 0, e.g. (0, 1, 2).')
  runs = []
  for phi in sweep['phis']:
    resolution = grid.scaled_resolution(resolution0, sweep['gamma']**phi,
                                        config['resolution_multiple'])
    overrides = model_overrides(
        recipe.model, phi=float(phi), alpha=sweep['alpha'],
        beta=sweep['beta'], gamma=sweep['gamma'], resolution=resolution,
        dropout_rate=None)
    coefficients = grid.Coefficients(sweep['alpha'], sweep['beta'],
                                     sweep['gamma'])
    runs.extend(make_run('sweep', f'phi{label_number(phi)}', 'sweep', seed,
                         recipe, overrides, num_classes,
                         coefficients=coefficients, factor=float(phi))
                for seed in seeds(config))
  return runs
