"""benchmarks/render.py: tables from a results JSON, written between markers."""

import json

from benchmarks import render
from benchmarks import report

MACHINE = dict(cpu='Test CPU', cores=2, usable_cores=2, memory_gib=24.0,
               load_average=[1.5, 1.0, 0.5], platform='Linux',
               python='3.11.0')


def run(impl, task, round_index, img_s, rss):
  return dict(impl=impl, task=task, variant='b0', batch=32, resolution=224,
              steps=2, warmup=1, dtype='float32', round=round_index,
              img_s=img_s, step_s=32 / img_s, first_step_s=40.0,
              max_rss_mb=rss, load_average=2.0,
              recipe=dict(config='configs/imagenet.py:b0',
                          learning_rate=0.002))


def write_throughput(results_dir):
  results = [run('ours', 'train', 1, 24.0, 2600.0),
             run('timm', 'train', 1, 15.0, 3600.0),
             run('ours', 'train', 2, 22.0, 2600.0),
             run('timm', 'train', 2, 16.0, 3600.0)]
  data = dict(kind='throughput', command='python benchmarks/throughput.py',
              started_utc='2026-12-02T06:00:00+00:00', machine=MACHINE,
              software={}, settings=dict(repeats=2, steps=2, warmup=1,
                                         dtype='float32'),
              results=results, summary=report.summarise(results),
              results_file=('benchmarks/results/'
                            'throughput-20261202T060000Z.json'))
  (results_dir / 'throughput-latest.json').write_text(json.dumps(data))


def test_render_replaces_only_the_marked_blocks(tmp_path):
  write_throughput(tmp_path)
  rendered = render.blocks(render.load_latest(str(tmp_path)))
  before = '# Title\n\nProse before.\n\n'
  after = '\n\nProse after, untouched.\n'
  marker = '<!-- generated:throughput-summary (python -m benchmarks.render) -->'
  text = (before + marker + '\nstale table\n'
          '<!-- /generated:throughput-summary -->' + after)

  new_text, replaced, missing = render.replace_blocks(text, rendered)

  assert replaced == ['throughput-summary'] and not missing
  assert new_text.startswith(before) and new_text.endswith(after)
  assert 'stale table' not in new_text
  # Medians: ours 23.0 img/s, timm 15.5; 23 / 15.5 = 1.48; 2600 / 3600 = 0.72.
  assert '| b0 train 32x224 | 23.0 | timm 15.5 | 1.48× | 2600 | 0.72× |' in (
      new_text)
  assert 'throughput-20261202T060000Z.json' in new_text


def test_render_file_skips_a_file_without_markers(tmp_path, capsys):
  write_throughput(tmp_path)
  path = tmp_path / 'README.md'
  path.write_text('# No markers here\n')
  rendered = render.blocks(render.load_latest(str(tmp_path)))

  assert not render.render_file(str(path), rendered)
  assert path.read_text() == '# No markers here\n'
  assert 'no generated-block markers' in capsys.readouterr().err


def test_block_without_results_is_left_as_it_was(tmp_path):
  write_throughput(tmp_path)
  rendered = render.blocks(render.load_latest(str(tmp_path)))
  text = ('<!-- generated:scaling (python -m benchmarks.render) -->\nold\n'
          '<!-- /generated:scaling -->\n')

  new_text, replaced, missing = render.replace_blocks(text, rendered)

  assert new_text == text and not replaced and missing == ['scaling']


def test_first_step_block_gives_both_runs_and_the_warm_target(tmp_path):
  def train_run(first_step_s, launch_s, cache_before, cache_after, resumed):
    return dict(first_step_s=first_step_s, launch_to_first_step_s=launch_s,
                wall_s=launch_s + 20, cache_files_before=cache_before,
                cache_files_after=cache_after, resumed=resumed,
                load_average_start=3.0, load_average_end=4.0)

  data = dict(kind='first_step', command='python -m benchmarks.first_step',
              started_utc='2026-12-02T06:00:00+00:00', machine=MACHINE,
              runs=dict(cold=train_run(95.0, 120.0, 0, 6, False),
                        warm=train_run(4.0, 14.5, 6, 6, True)),
              warm_target_s=10.0, warm_target_met=False,
              results_file='benchmarks/results/first_step-x.json')
  (tmp_path / 'first_step-latest.json').write_text(json.dumps(data))
  block = render.blocks(render.load_latest(str(tmp_path)))['first-step']
  assert '| cold | empty, 6 files written | 95.0 s | 120.0 s |' in block
  assert '| warm (resumed) | 6 files | 4.0 s | 14.5 s |' in block
  assert '14.5 s after launch (target ≤ 10 s: **not met**)' in block
  assert 'first_step-x.json' in block
