"""Tests for efficientnet_jax.reproduce, offline: B0 checkpoints written here
in the official TF and timm layouts from our own variables, and a mock
1000-class dataset with only a validation split, scored at 32 px."""

import json
import os
from unittest import mock

import jax
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy

from efficientnet_jax import arch
from efficientnet_jax import eval_lib
from efficientnet_jax import models
from efficientnet_jax import reproduce
from efficientnet_jax.convert import placement
from efficientnet_jax.convert import tf_official
from efficientnet_jax.convert import timm
from tests import mock_tfds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def b0_variables():
  """Small, finite B0 variables: kernels ~N(0, 0.05), BN the identity."""
  spec = arch.spec_for('b0')
  shapes = models.abstract_variables(models.EfficientNet(spec,
                                                         num_classes=1000))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'var'" in name or "'scale'" in name:
      return np.ones(leaf.shape, np.float32)
    if "'mean'" in name or "'bias'" in name:
      return np.zeros(leaf.shape, np.float32)
    return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return spec, jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  mock_tfds.prepare(data_dir)
  downloads = tmp_path_factory.mktemp('downloads')
  spec, variables = b0_variables()
  # As the AutoAugment tarball unpacks under the bucket folder's name.
  tf_official.export(spec, variables, str(
      downloads / 'ckptsaug' / 'efficientnet-b0' / 'model.ckpt'))
  safetensors_numpy.save_file(
      placement.export(timm.entries(spec), variables),
      str(downloads / 'tf_efficientnet_b0.ns_jft_in1k.safetensors'))
  # The baseline, AA and AdvProp tarballs all unpack to this name: skipped.
  tf_official.export(spec, variables, str(
      downloads / 'efficientnet-b0' / 'model.ckpt'))
  return data_dir, str(downloads)


def run(setup, output):
  data_dir, downloads = setup
  return reproduce.reproduce(
      downloads, str(output), data_dir=data_dir,
      dataset=mock_tfds.NAME, eval_batch_size=4,
      resolution=32)


def test_names_say_which_published_row():
  cases = {
      'efficientnetb3.h5': ('keras-b3', 'aa', 81.6),
      'tf_efficientnet_b0.ap_in1k.safetensors': ('timm-b0-advprop', 'advprop',
                                                 77.6),
      'tf_efficientnet_l2.ns_jft_in1k_475.safetensors': ('timm-l2-475-ns',
                                                         'ns', 88.2),
      'tf_efficientnet_lite2.in1k.safetensors': ('timm-lite2', 'lite', 77.6),
  }
  for filename, (name, training, top1) in cases.items():
    row = reproduce._file_row(filename)
    assert (row.name, row.training, row.published_top1) == (name, training,
                                                            top1)
  assert reproduce._file_row('efficientnetb0_notop.h5') is None
  assert reproduce._file_row('efficientnet_b0.ra_in1k.safetensors') is None
  assert reproduce._official_row('noisy_student_efficientnet-l2_475',
                                 None).resolution == 475
  assert reproduce._official_row('efficientnet-b0', 'advprop').advprop
  assert reproduce._official_row('efficientnet-b0', None) is None
  assert reproduce._official_row('efficientnet-b7-randaug', None).tarball == (
      'randaug/efficientnet-b7-randaug.tar.gz')


def test_families_join_the_table_once_arch_knows_them():
  names = {row.name for row in reproduce.official_rows()}
  assert {'edgetpu-s', 'v2-s', 'v2-xl-21k-ft1k'} <= names
  without = {k: v for k, v in arch.PRESETS.items()
             if not k.startswith(('v2-', 'edgetpu-'))}
  with mock.patch.dict(arch.PRESETS, without, clear=True):
    assert not any(row.variant.startswith(('v2-', 'edgetpu-'))
                   for row in reproduce.official_rows())
  rows = {row.name: row for row in reproduce.official_rows()}
  assert rows['edgetpu-s'].published_top1 == 77.23
  assert rows['edgetpu-s'].tarball == 'efficientnet-edgetpu-S.tar.gz'
  assert rows['v2-s'].published_top1 == 83.9
  assert rows['v2-s-21k-ft1k'].tarball == 'v2/efficientnetv2-s-21k-ft1k.tgz'
  assert reproduce._official_row('efficientnet-edgetpu-S', None).name == (
      'edgetpu-s')
  assert reproduce._official_row('efficientnetv2-s-21k-ft1k', None).name == (
      'v2-s-21k-ft1k')
  assert reproduce._file_row(
      'tf_efficientnetv2_s.in21k_ft_in1k.safetensors').name == (
          'timm-v2-s-21k-ft1k')
  assert reproduce._file_row('tf_efficientnet_es.in1k.safetensors').name == (
      'timm-edgetpu-s')
  assert reproduce._file_row('efficientnetv2-s.h5').published_top1 == 83.9


def test_unprepared_dataset_stops_before_any_conversion(setup, tmp_path):
  _, downloads = setup
  with mock.patch('efficientnet_jax.convert.convert') as convert, \
      pytest.raises(FileNotFoundError,
                    match=r'imagenet2012 is not prepared .*tfds build'):
    reproduce.reproduce(downloads, str(tmp_path), data_dir=str(tmp_path))
  convert.assert_not_called()
  table = (tmp_path / 'table.md').read_text()
  assert '| b0-aa | AutoAugment | 224 | 77.1 | not yet: needs ImageNet ' \
      'validation |' in table


def test_converts_scores_and_tabulates_then_resumes(setup, tmp_path):
  entries = {entry['name']: entry for entry in run(setup, tmp_path)}

  for name, published in (('b0-aa', 77.1), ('timm-b0-ns', 78.8)):
    entry = entries[name]
    assert entry['state'] == ('measured at --resolution=32, not as '
                              'published')
    assert entry['published_top1'] == published
    assert entry['difference'] == pytest.approx(entry['top1'] - published)
    assert entry['result']['num_examples'] == mock_tfds.NUM_EXAMPLES
    assert os.path.isdir(tmp_path / 'converted' / name)
  assert entries['timm-b0-ns']['source'] == 'timm'
  assert entries['b0-baseline']['state'] == reproduce.NOT_YET
  assert entries['b0-baseline']['checkpoint'] is None
  with open(tmp_path / 'table.json') as f:
    assert [entry['name'] for entry in json.load(f)] == list(entries)
  table = (tmp_path / 'table.md').read_text()
  assert f'| b0-aa | AutoAugment | 32 | 77.1 | {entries["b0-aa"]["top1"]:.2f}' \
      in table
  assert f'| b1-aa | AutoAugment | 240 | 79.1 | {reproduce.NOT_YET} |  | ' \
      in table

  # An interrupted run: one row's result missing. The rerun converts nothing
  # and scores only that row.
  os.remove(tmp_path / 'results' / 'timm-b0-ns.json')
  scored = []
  first_result = entries['timm-b0-ns']['result']

  def record(config, directory, **kwargs):
    del config, kwargs
    scored.append(os.path.basename(directory))
    return {key: value for key, value in first_result.items()
            if key not in ('row', 'published_top1', 'weights_file')}

  with mock.patch.object(eval_lib, 'evaluate_checkpoint', record), \
      mock.patch('efficientnet_jax.convert.convert',
                 side_effect=AssertionError('converted again')):
    again = {entry['name']: entry for entry in run(setup, tmp_path)}
  assert scored == ['timm-b0-ns']
  assert again['b0-aa']['top1'] == entries['b0-aa']['top1']
  assert again['timm-b0-ns']['top1'] == entries['timm-b0-ns']['top1']


def test_docs_table_is_the_generated_one(tmp_path):
  empty = tmp_path / 'downloads'
  empty.mkdir()
  entries = reproduce.reproduce(str(empty), str(tmp_path / 'out'),
                                data_dir=None)
  assert all(entry['state'] == reproduce.NOT_YET for entry in entries)
  with open(os.path.join(REPO, 'docs', 'pretrained.md')) as f:
    readme = f.read()
  begin = readme.index(reproduce.README_BEGIN) + len(reproduce.README_BEGIN)
  end = readme.index(reproduce.README_END)
  assert readme[begin:end].strip() == reproduce.render_markdown(
      entries).strip()
