"""The scaling tool: its grid, its networks, shards, resume and the report.

The grid and plan tests are pure Python. Two tests train: tiny networks
(tests/tiny.py) for a few steps on the in-memory digits of
tests/fake_pipeline.py, through the same runs.train the commands use.
"""

import json
import math
import os
import shlex
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from configs import imagenet
from configs import scaling
from efficientnet_jax import arch
from efficientnet_jax import errors
from efficientnet_jax import train_lib
from efficientnet_jax import validate
from efficientnet_jax.scaling import __main__ as scaling_main
from efficientnet_jax.scaling import grid
from efficientnet_jax.scaling import plan as plan_lib
from efficientnet_jax.scaling import report as report_lib
from efficientnet_jax.scaling import runs as runs_lib
from tests import fake_pipeline
from tests import tiny


def test_paper_coefficients_lie_on_the_default_grid():
  config = scaling.get_config()
  points = grid.coefficient_grid(config.search.step, config.search.tolerance,
                                 config.search.target)
  paper = grid.Coefficients(1.2, 1.1, 1.15)
  assert paper in points
  assert paper.flops_factor == pytest.approx(1.2 * 1.21 * 1.3225)  # 1.92.
  assert all(min(p.alpha, p.beta, p.gamma) >= 1 for p in points)
  assert all(abs(p.flops_factor / 2 - 1) <= 0.05 + 1e-9 for p in points)
  assert len(set(points)) == len(points) == 111


def test_grid_by_hand():
  # Step 0.5, 15 %: alpha in {1, 1.5, 2}, beta and gamma in {1, 1.5};
  # factors 2 (2,1,1), 2.25 (1,1.5,1), 2.25 (1,1,1.5) pass; 1.5 and 3.375 not.
  assert grid.coefficient_grid(0.5, 0.15) == [
      grid.Coefficients(1.0, 1.0, 1.5), grid.Coefficients(1.0, 1.5, 1.0),
      grid.Coefficients(2.0, 1.0, 1.0)]
  # Any target: 2^phi at phi = 2, step 1: only (4, 1, 1), (1, 2, 1), (1, 1, 2).
  assert grid.coefficient_grid(1.0, 0.0, 4.0) == [
      grid.Coefficients(1.0, 1.0, 2.0), grid.Coefficients(1.0, 2.0, 1.0),
      grid.Coefficients(4.0, 1.0, 1.0)]


@pytest.mark.parametrize('step, tolerance, target, match', [
    (0.3, 0.0, 2.0, r'No \(alpha'),  # Nothing satisfies it.
    (0.0, 0.05, 2.0, 'step > 0'),
    (0.05, -1.0, 2.0, 'tolerance >= 0'),
    (0.05, 0.05, 0.5, 'target >= 1'),
])
def test_bad_grid_is_one_line_error(step, tolerance, target, match):
  with pytest.raises(errors.ConfigError, match=match):
    grid.coefficient_grid(step, tolerance, target)


def demo_config(**fields):
  config = scaling.get_config('b0')
  for key, value in fields.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def test_search_candidates_are_the_arch_networks():
  config = demo_config(**{'search.step': 0.2, 'search.tolerance': 0.1,
                          'num_seeds': 2})
  runs = plan_lib.search_plan(config, num_classes=10)
  assert len(runs) == 2 * len(grid.coefficient_grid(0.2, 0.1))
  assert len({run.name for run in runs}) == len(runs)
  for run in runs:
    c = run.coefficients
    spec = arch.resolve(runs_lib.run_config(config, run).model)
    assert (spec.width_coefficient, spec.depth_coefficient) == (c.beta,
                                                                c.alpha)
    # The demo recipe's 32 px, times gamma, to a multiple of 4.
    assert spec.resolution == round(32 * c.gamma / 4) * 4 == run.resolution
    assert spec.stem_filters == arch.round_filters(32, c.beta)
    assert len(spec.blocks) == sum(
        arch.round_repeats(arch.decode_block_string(s).repeats, c.alpha)
        for s in arch.B0_BLOCKS)
    assert spec.dropout_rate == 0.2  # The base's, for every candidate.
    assert run.macs == arch.count_macs(spec, 10)


def test_study_solves_each_dimension_to_the_target():
  config = demo_config(**{'study.mac_targets': (2.0, 4.0)})
  runs = plan_lib.study_plan(config, 10, grid.Coefficients(1.2, 1.1, 1.15))
  base = next(run for run in runs if run.strategy == 'base')
  assert base.macs == arch.count_macs(arch.spec_for('b0', resolution=32), 10)
  by_label = {run.label: run for run in runs}
  for target in (2, 4):
    width = by_label[f'width_{target}x']
    depth = by_label[f'depth_{target}x']
    resolution = by_label[f'resolution_{target}x']
    assert (width.depth, width.resolution) == (1.0, 32)
    assert (depth.width, depth.resolution) == (1.0, 32)
    assert (resolution.width, resolution.depth) == (1.0, 1.0)
    # Its factor is the size it trains at over the base's (a multiple of 4).
    assert resolution.factor == resolution.resolution / 32
    assert resolution.resolution % 4 == 0 and resolution.resolution > 32
    # Width moves in steps of 8 channels: within 10 % of the target.
    assert width.macs / base.macs == pytest.approx(target, rel=0.1)
    # No other value of the coefficient comes closer to the target.
    for run, field in ((width, 'beta'), (depth, 'alpha')):
      for nudge in (0.97, 1.03):
        model = dict(runs_lib.run_config(config, run).model)
        model[field] *= nudge
        other = arch.count_macs(arch.resolve(model), 10)
        assert (abs(run.macs - target * base.macs) <=
                abs(other - target * base.macs))
  compound = by_label['compound_4x']
  spec = arch.resolve(runs_lib.run_config(config, compound).model)
  assert spec.width_coefficient == pytest.approx(1.1**compound.factor)
  assert spec.depth_coefficient == pytest.approx(1.2**compound.factor)


def test_imagenet_sweep_is_the_tools_plan():
  overrides = imagenet.sweep()
  assert overrides == [{'model.phi': phi} for phi in (0.0, 1.0, 2.0, 3.0)]
  for phi, override in zip((0, 1, 2, 3), overrides):
    config = imagenet.get_config('b0')
    config.model.phi = override['model.phi']
    assert arch.resolve(config.model).resolution == (
        arch.compound_coefficients(phi)[2])


@pytest.mark.parametrize('fields, match', [
    ({'base_resolution': 16}, 'below the network'),
    ({'study.strategies': ('width', 'height')}, 'choose from'),
    ({'study.mac_targets': (0.5,)}, 'above 1'),
    ({'num_seeds': 0}, 'at least 1'),
])
def test_bad_study_input_is_one_line_error(fields, match):
  with pytest.raises(errors.ConfigError, match=match):
    plan_lib.study_plan(demo_config(**fields), 10,
                        grid.Coefficients(1.2, 1.1, 1.15))


@pytest.mark.parametrize('base, match', [('b99', 'Unknown EfficientNet'),
                                         ('b3', 'itself scaled')])
def test_bad_base_is_one_line_error(base, match):
  config = scaling.get_config(base)
  with pytest.raises(errors.ConfigError, match=match):
    plan_lib.search_plan(config, 10)


def test_bad_command_and_shard():
  with pytest.raises(errors.ConfigError, match='Give a command'):
    scaling_main.parse_command(['prog'])
  with pytest.raises(errors.ConfigError, match='report needs'):
    scaling_main.parse_command(['prog', 'report'])
  for text in ('2/2', '1', 'a/b', '0/0'):
    with pytest.raises(errors.ConfigError, match='--shard'):
      grid.parse_shard(text)


def test_printed_command_is_a_train_py_command():
  config = demo_config(**{'search.step': 0.5, 'search.tolerance': 0.15,
                          'num_train_steps': 7})
  run = plan_lib.search_plan(config, 10)[0]  # a1_b1_g1.5.
  item = runs_lib.Prepared(run, runs_lib.run_config(config, run), 'W/x', 7)
  assert runs_lib.command(config, item) == (
      'python train.py --config=configs/demo.py:b0 --workdir=W/x '
      '--config.num_train_steps=7 --config.eval_every_epochs=0.0 '
      '--config.model.alpha=1.0 '
      '--config.model.beta=1.0 --config.model.gamma=1.5 '
      '--config.model.phi=1.0 --config.model.resolution=48 --config.seed=0')


def tiny_prepared(workdir, widths, steps=2):
  """Plan-made runs of tiny networks (one block per stage) and their
  configs, as runs.prepare builds them from a scaling config."""
  recipe = tiny.tiny_config()
  recipe.num_train_steps = steps
  recipe.log_every_steps = 1
  recipe.checkpoint_every_steps = 2
  recipe.eval_every_epochs = 0.0
  recipe.eval_batch_size = 99  # The fake split's 297 in three batches.
  prepared = []
  for width in widths:
    overrides = {'model.beta': width}
    run = plan_lib.make_run('search', f'w{width}', 'search', 0, recipe,
                            overrides, 10, coefficients=grid.Coefficients(
                                0.01, width, 1.0), factor=1.0)
    config = runs_lib.apply_overrides(recipe, dict(run.overrides))
    prepared.append(runs_lib.Prepared(run, config,
                                      runs_lib.run_directory(workdir, run),
                                      steps))
  return prepared


def steps_logged(directory):
  with open(os.path.join(directory, runs_lib.METRICS_FILE)) as f:
    return [json.loads(line)['step'] for line in f
            if 'train/loss' in json.loads(line)]


def test_shards_split_resume_and_merge(tmp_path):
  prepared = tiny_prepared(str(tmp_path), (0.25, 0.3, 0.35), steps=4)
  shards = [grid.shard(prepared, index, 2) for index in range(2)]
  names = [[item.run.name for item in share] for share in shards]
  assert not set(names[0]) & set(names[1])
  assert sorted(names[0] + names[1]) == sorted(
      item.run.name for item in prepared)
  # Shard 1 trains a run; the report reads whatever has finished.
  done = shards[1][0]
  assert runs_lib.train(done, fake_pipeline)
  assert [r['name'] for r in report_lib.collect(prepared, 'eval/top1')] == [
      done.run.name]
  # Shard 0's run is killed after step 2 of 4 (what it leaves: the step-2
  # checkpoint and metrics, no eval at step 4), then started again.
  killed = shards[0][0]
  runs_lib.claim(killed)
  cut_short = killed.config.copy_and_resolve_references()
  cut_short.num_train_steps = 2
  train_lib.train_and_evaluate(cut_short, killed.directory, data=fake_pipeline)
  assert runs_lib.final_metrics(killed.directory, 4, 'eval/top1') is None
  assert scaling_main.train_all([killed], prepared, demo_config(),
                                fake_pipeline)
  assert steps_logged(killed.directory) == [1, 2, 3, 4]  # Resumed at 2.
  # Started again: both finished runs are recognised and not retrained.
  records = report_lib.collect(prepared, 'eval/top1')
  stamps = [os.stat(os.path.join(item.directory, runs_lib.METRICS_FILE))
            for item in (killed, done)]
  assert scaling_main.train_all([killed, done], prepared, demo_config(),
                                fake_pipeline)
  assert stamps == [os.stat(os.path.join(item.directory,
                                         runs_lib.METRICS_FILE))
                    for item in (killed, done)]
  assert report_lib.collect(prepared, 'eval/top1') == records
  assert {r['name'] for r in records} == {killed.run.name, done.run.name}
  rows = report_lib.aggregate(records, 'eval/top1', planned_seeds=1)
  report_lib.write(str(tmp_path), records, rows, 'eval/top1')
  with open(tmp_path / report_lib.RESULTS_JSONL) as f:
    assert len(f.readlines()) == 2
  best = report_lib.best(rows)
  assert best['mean'] == max(r['metrics']['eval/top1'] for r in records)
  assert 0 <= best['mean'] <= 1 and best['std'] == 0.0


def test_directory_planned_otherwise_is_refused(tmp_path):
  (item,) = tiny_prepared(str(tmp_path), (0.25,), steps=2)
  runs_lib.claim(item)
  runs_lib.claim(item)  # The same plan again: accepted.
  longer = runs_lib.Prepared(item.run, item.config, item.directory, 4)
  with pytest.raises(errors.ConfigError, match='needs a new --workdir'):
    runs_lib.claim(longer)


def parse_train_flags(argv):
  """train.py's --config flag (locked, as there) parsed from `argv`
  (config_flags finds the overrides in sys.argv)."""
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'recipe',
                                  flag_values=flag_values, lock_config=True)
  argv = ['train.py', *argv]
  saved, sys.argv = sys.argv, argv
  try:
    flag_values(argv)
  finally:
    sys.argv = saved
  return flag_values.config


def test_best_line_and_printed_command_parse_as_train_py_flags():
  row = dict(coefficients=[1.2, 1.1, 1.15], resolution=36)
  line = report_lib.ready_line(
      row, plan_lib.recipe_config(demo_config()).model)
  assert line == ('--config.model.phi=1.0 --config.model.alpha=1.2 '
                  '--config.model.beta=1.1 --config.model.gamma=1.15 '
                  '--config.model.resolution=36')
  config = parse_train_flags(['--config=configs/demo.py:b0', *line.split()])
  validate.check_config(config)
  spec = arch.resolve(config.model)
  assert (spec.width_coefficient, spec.depth_coefficient,
          spec.resolution) == (1.1, 1.2, 36)
  # Without the rule's phi, coefficients other than the defaults are refused.
  with pytest.raises(ValueError, match='apply only with model.phi'):
    arch.resolve(parse_train_flags(['--config=configs/demo.py:b0',
                                    '--config.model.alpha=1.4']).model)
  scaling_config = demo_config(**{'search.step': 0.5,
                                  'search.tolerance': 0.15})
  for run in plan_lib.search_plan(scaling_config, 10):
    item = runs_lib.Prepared(run, runs_lib.run_config(scaling_config, run),
                             'W', 561)
    argv = runs_lib.command(scaling_config, item).split()[2:]
    parsed = parse_train_flags([a for a in argv
                                if not a.startswith('--workdir')])
    assert parsed.to_dict() == item.config.to_dict()


def test_tidy_names_a_network_by_its_shortest_decimal():
  # Repeats round up: 1.0000001 and 1.1 both make one block two.
  assert grid.tidy(lambda d: math.ceil(d * 1), 1.0000001) == 1.1
  assert grid.tidy(lambda d: math.ceil(d * 4), 1.2500001) == 1.3
  # Of two candidates that build it, the closer: 1.7 and 1.8 both round
  # a two-block stage up to 4 blocks, as 1.76 does.
  assert grid.tidy(lambda d: math.ceil(d * 2), 1.76) == 1.8
  assert grid.tidy(lambda d: math.ceil(d * 2), 1.74) == 1.7
  # Nothing shorter builds it: the factor itself.
  assert grid.tidy(lambda d: d, 1.2345678) == 1.2345678


def test_study_depth_on_one_block_stages_reads_as_blocks():
  # B0's seven stages with one block each (the demo's base): any depth
  # coefficient above 1 doubles every stage, which bisection meets at
  # 1 + 2^-60; the table names it 1.1 and counts the blocks.
  one_block = tuple('r1' + s[2:] for s in arch.B0_BLOCKS)
  config = demo_config(**{'base_blocks': one_block,
                          'study.mac_targets': (2.0,),
                          'study.strategies': ('depth',)})
  base, depth = plan_lib.study_plan(config, 10,
                                    grid.Coefficients(1.2, 1.1, 1.15))
  assert (base.blocks, depth.blocks) == (7, 14)
  assert depth.factor == depth.depth == 1.1
  spec = arch.resolve(runs_lib.run_config(config, depth).model)
  assert depth.macs == arch.count_macs(spec, 10)


def test_own_block_strings_as_base():
  # Three stages of B0's table, V2's one-digit stride form in the middle.
  blocks = ('r1_k3_s11_e1_i32_o16_se0.25', 'r2_k3_s2_e6_i16_o24_se0.25',
            'r2_k5_s22_e6_i24_o40_se0.25')
  config = demo_config(**{'search.step': 0.5, 'search.tolerance': 0.15,
                          'base_blocks': blocks})
  runs = plan_lib.search_plan(config, 10)
  assert runs
  for run in runs:
    item = runs_lib.Prepared(run, runs_lib.run_config(config, run), 'W', 7)
    spec = arch.resolve(item.config.model)
    assert len(spec.blocks) == sum(
        arch.round_repeats(arch.decode_block_string(s).repeats,
                           run.coefficients.alpha) for s in blocks)
    assert spec.blocks[-1].out_filters == arch.round_filters(
        40, run.coefficients.beta)
    argv = shlex.split(runs_lib.command(config, item))[2:]
    parsed = parse_train_flags([a for a in argv
                                if not a.startswith('--workdir')])
    assert parsed.to_dict() == item.config.to_dict()
  bad = demo_config(base_blocks=('r1_k3_s11_e1_i32',))
  with pytest.raises(errors.ConfigError,
                     match=r"config.model.blocks: 'r1_k3_s11_e1_i32' is not"):
    plan_lib.search_plan(bad, 10)


def record(label, strategy, seed, top1, macs, factor=1.0,
           coefficients=(1.2, 1.1, 1.15)):
  return dict(name=f'{label}/seed{seed}', kind='x', label=label,
              strategy=strategy, seed=seed, factor=factor,
              coefficients=list(coefficients), width=1.0, depth=1.0, blocks=16,
              resolution=32, macs=macs, steps=10, overrides={},
              metrics={'eval/top1': top1})


def test_table_mean_std_and_plots(tmp_path):
  from efficientnet_jax.scaling import plots  # pylint: disable=g-import-not-at-top
  records = [record('a', 'search', 0, 0.90, 2e7),
             record('a', 'search', 1, 0.94, 2e7),
             record('b', 'search', 0, 0.97, 2e7)]
  rows = report_lib.aggregate(records, 'eval/top1', planned_seeds=2)
  by_label = {row['label']: row for row in rows}
  assert by_label['a']['mean'] == pytest.approx(0.92)
  assert by_label['a']['std'] == pytest.approx(0.02 * 2**0.5)  # Sample std.
  # b has one of two seeds: it ranks in progress, not as the result.
  assert report_lib.best(rows)['label'] == 'a'
  assert report_lib.best(rows, complete=False)['label'] == 'b'
  table = report_lib.markdown(rows, 'eval/top1')
  assert '| 92.00 ± 2.83 |' in table and '(1 of 2 seeds)' in table
  plots.plot_search(rows, str(tmp_path / 'search.png'), 'eval/top1')
  study = report_lib.aggregate(
      [record('base', 'base', 0, 0.8, 1e7)] +
      [record(f'{s}_2x', s, 0, 0.85, 2e7, 1.5) for s in grid.STRATEGIES],
      'eval/top1', 1)
  plots.plot_study(study, str(tmp_path / 'study.png'), 'eval/top1')
  sweep = report_lib.aggregate(
      [record(f'phi{p}', 'sweep', 0, 0.8 + p / 100, 1e7 * 2**p, p)
       for p in range(3)], 'eval/top1', 1)
  for row in sweep:
    row['params'] = 4e6
  plots.plot_sweep(sweep, str(tmp_path / 'sweep.png'), 'eval/top1')
  for name in ('search', 'study', 'sweep'):
    assert (tmp_path / f'{name}.png').stat().st_size > 10_000
