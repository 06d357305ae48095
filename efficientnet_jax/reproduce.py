r"""One command reproduces the published ImageNet top-1 table.

  python -m efficientnet_jax.reproduce --checkpoints=ckpt --data_dir=/data/tfds \
      --output=repro

`--checkpoints` holds downloaded published weights, each recognised by its
name as docs/pretrained.md names it:
- official TF checkpoints (directories with `model.ckpt*` files, as the
  tarballs unpack), under the table's row name (`ckpt/b0-baseline/`,
  `ckpt/b0-aa/efficientnet-b0/`, ...), or under the tarball's own name where
  that says which training it is (`noisy_student_efficientnet-b0`,
  `efficientnet-b5-randaug`, `efficientnet-lite0`, `efficientnet-edgetpu-S`,
  `efficientnetv2-s`), or the bucket folder above it (`ckpts/`, `ckptsaug/`,
  `advprop/`: the baseline, AutoAugment and AdvProp tarballs all unpack to
  `efficientnet-bN`);
- keras.applications files: `efficientnetb0.h5` (also .keras, .weights.h5);
- timm files named by the timm model and tag:
  `tf_efficientnet_b0.ns_jft_in1k.safetensors`.

Each one is converted into OUTPUT/converted/NAME (skipped when already there),
scored on the validation split at the resolution and with the preprocessing
the publication used (the `configs/imagenet.py:VARIANT` recipe, the
checkpoint's recorded network and normalisation), and its result written to
OUTPUT/results/NAME.json as soon as it is done, so a rerun skips finished
rows. OUTPUT/table.md and OUTPUT/table.json are rewritten after every row:
published top-1, ours and the difference, and for every other row of the
published table what it still needs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import traceback
from typing import Any, Iterator, Sequence

from absl import app
from absl import flags
from absl import logging

from efficientnet_jax import arch

# Published ImageNet top-1 (%), the one place these numbers live; keyed by
# training, then variant (the rows' `published` key).
# - baseline, aa, ra, advprop, ns (B0-B8, L2): TPU-README (docs/reference.md §8).
# - lite (FP32): TPU-LITE (docs/reference.md §8), at the builder resolutions.
# - edgetpu (float): TPU-EDGE (docs/reference.md §8; tensorflow/tpu
#   models/official/efficientnet/edgetpu/README.md).
# - v2 (ImageNet-1k) and v2-21k-ft1k: google/automl efficientnetv2/README.md
#   (lines 30-63; ../shared/REFERENCE-V2.md §1.5).
# keras.applications' table (keras-io templates/api/applications/index.md:
# B0 77.1 ... B7 84.3) quotes the AutoAugment row for its V1 weights and the
# ImageNet-1k V2 row for its V2 weights.
PUBLISHED_TOP1: dict[str, dict[str, float]] = {
    'baseline': dict(b0=76.7, b1=78.7, b2=79.8, b3=81.1, b4=82.5, b5=83.1),
    'aa': dict(b0=77.1, b1=79.1, b2=80.1, b3=81.6, b4=82.9, b5=83.6, b6=84.0,
               b7=84.3),
    'ra': dict(b5=83.7, b7=84.7),
    'advprop': dict(b0=77.6, b1=79.6, b2=80.5, b3=81.9, b4=83.3, b5=84.3,
                    b6=84.8, b7=85.2, b8=85.5),
    'ns': dict(b0=78.8, b1=81.5, b2=82.4, b3=84.1, b4=85.3, b5=86.1, b6=86.4,
               b7=86.9, l2=88.4, **{'l2-475': 88.2}),
    'lite': dict(lite0=75.1, lite1=76.7, lite2=77.6, lite3=79.8, lite4=81.5),
    'edgetpu': {'edgetpu-s': 77.23, 'edgetpu-m': 78.69, 'edgetpu-l': 80.62},
    'v2': {'v2-b0': 78.7, 'v2-b1': 79.8, 'v2-b2': 80.5, 'v2-b3': 82.1,
           'v2-s': 83.9, 'v2-m': 85.2, 'v2-l': 85.7},
    'v2-21k-ft1k': {'v2-s': 84.9, 'v2-m': 86.2, 'v2-l': 86.9, 'v2-xl': 87.2},
}
TRAINING_NAMES = {
    'baseline': 'baseline', 'aa': 'AutoAugment', 'ra': 'RandAugment',
    'advprop': 'AdvProp + AA', 'ns': 'NoisyStudent + RA', 'lite': 'Lite',
    'edgetpu': 'EdgeTPU', 'v2': 'V2 ImageNet-1k',
    'v2-21k-ft1k': 'V2 ImageNet-21k → 1k',
}
# Evaluation resolutions that differ from the variant's preset, by published
# key (TPU-README: the L2-475 checkpoint is evaluated at 475).
RESOLUTIONS = {'l2-475': 475}
# The official checkpoints' bucket (TPU-README) and each training's tarball,
# relative to it; {v} is the variant ('b0', 'l2_475', 'lite0', 'S', 's').
BUCKET = 'https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet'
TARBALLS = {
    'baseline': 'ckpts/efficientnet-{v}.tar.gz',
    'aa': 'ckptsaug/efficientnet-{v}.tar.gz',
    'ra': 'randaug/efficientnet-{v}-randaug.tar.gz',
    'advprop': 'advprop/efficientnet-{v}.tar.gz',
    'ns': 'noisystudent/noisy_student_efficientnet-{v}.tar.gz',
    'lite': 'lite/efficientnet-{v}.tar.gz',
    'edgetpu': 'efficientnet-edgetpu-{v}.tar.gz',
    'v2': 'v2/efficientnetv2-{v}.tgz',
    'v2-21k-ft1k': 'v2/efficientnetv2-{v}-21k-ft1k.tgz',
}
# The bucket folders whose tarballs all unpack to efficientnet-bN.
TF_FOLDERS = {'ckpts': 'baseline', 'ckptsaug': 'aa', 'advprop': 'advprop'}
# timm tags of the tf_* ports (TIMM timm/models/efficientnet.py default_cfgs).
TIMM_TAGS = {'in1k': 'baseline', 'aa_in1k': 'aa', 'ra_in1k': 'ra',
             'ap_in1k': 'advprop', 'ns_jft_in1k': 'ns',
             'ns_jft_in1k_475': 'ns', 'in21k_ft_in1k': 'v2-21k-ft1k'}
# A row's name is its variant key and this suffix ('b0-aa', 'lite0'); keras
# and timm rows put 'keras-' or 'timm-' before it.
NAME_SUFFIXES = {'baseline': '-baseline', 'aa': '-aa', 'ra': '-ra',
                 'advprop': '-advprop', 'ns': '-ns', 'lite': '', 'edgetpu': '',
                 'v2': '', 'v2-21k-ft1k': '-21k-ft1k'}
NOT_YET = 'not yet: needs the checkpoint and ImageNet validation'
# docs/pretrained.md's copy of table.md sits between these lines.
README_BEGIN = '<!-- generated:reproduce-table (python -m efficientnet_jax.reproduce) -->'
README_END = '<!-- /generated:reproduce-table -->'


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of the table: a published checkpoint and where it comes from."""
  name: str  # The row's (and its converted directory's) name: 'b0-aa'.
  variant: str  # A key of arch.PRESETS.
  training: str  # A key of PUBLISHED_TOP1.
  published_key: str  # The variant's key in PUBLISHED_TOP1[training].
  source: str  # 'tf', 'keras' or 'timm'.

  @property
  def published_top1(self) -> float:
    return PUBLISHED_TOP1[self.training][self.published_key]

  @property
  def resolution(self) -> int | None:
    """The evaluation resolution to record, when not the variant's own."""
    return RESOLUTIONS.get(self.published_key)

  @property
  def advprop(self) -> bool:
    return self.training == 'advprop'

  @property
  def tarball(self) -> str | None:
    if self.source != 'tf':
      return None
    tag = self.published_key.replace('l2-475', 'l2_475')
    if self.training == 'edgetpu':
      tag = tag.removeprefix('edgetpu-').upper()
    tag = tag.removeprefix('v2-')
    return TARBALLS[self.training].format(v=tag)


def _variant(key: str) -> str:
  """The arch.PRESETS variant of a published key ('l2-475' is l2)."""
  return 'l2' if key == 'l2-475' else key


def official_rows() -> list[Row]:
  """Every published TF checkpoint whose variant arch.PRESETS knows.

  A family's rows appear as soon as its variants are in arch.PRESETS (V2 and
  EdgeTPU, issue 17); their published numbers are already above.
  """
  rows = []
  for training, numbers in PUBLISHED_TOP1.items():
    for key in numbers:
      if _variant(key) in arch.PRESETS:
        rows.append(Row(key + NAME_SUFFIXES[training], _variant(key),
                        training, key, 'tf'))
  return rows


def _official_row(name: str, parent: str | None) -> Row | None:
  """The official row a checkpoint directory's name (or its parent's) says."""
  by_name = {row.name: row for row in official_rows()}
  if name in by_name:
    return by_name[name]

  def row(training, key):
    return by_name.get(key + NAME_SUFFIXES[training])

  patterns = (
      (r'noisy_student_efficientnet-(b\d|l2)(_475)?', 'ns',
       lambda m: m[1] + ('-475' if m[2] else '')),
      (r'efficientnet-(b\d)-randaug', 'ra', lambda m: m[1]),
      (r'efficientnet-(lite\d)', 'lite', lambda m: m[1]),
      (r'efficientnet-edgetpu-([sml])', 'edgetpu',
       lambda m: f'edgetpu-{m[1]}'),
      (r'efficientnetv2-(b\d|s|m|l|xl)-21k-ft1k', 'v2-21k-ft1k',
       lambda m: f'v2-{m[1]}'),
      (r'efficientnetv2-(b\d|s|m|l|xl)', 'v2', lambda m: f'v2-{m[1]}'),
  )
  lower = name.lower()
  for pattern, training, key in patterns:
    match = re.fullmatch(pattern, lower)
    if match:
      return row(training, key(match))
  match = re.fullmatch(r'efficientnet-(b\d)', lower)
  if match and parent in TF_FOLDERS:
    return row(TF_FOLDERS[parent], match[1])
  return None


def _file_row(filename: str) -> Row | None:
  """The keras or timm row a weights file's name says, if any."""
  lower = filename.lower()
  match = re.fullmatch(r'efficientnet(b\d)\.(h5|keras|weights\.h5)', lower)
  if match:
    return _row(f'keras-{match[1]}', match[1], 'aa', 'keras')
  match = re.fullmatch(r'efficientnetv2-(b\d|s|m|l)\.(h5|keras|weights\.h5)',
                       lower)
  if match:
    key = f'v2-{match[1]}'
    return _row(f'keras-{key}', key, 'v2', 'keras')
  match = re.fullmatch(
      r'tf_efficientnet(v2)?_(b\d|l2|lite\d|e[sml]|s|m|l|xl)\.([a-z0-9_]+)'
      r'\.(safetensors|pth|bin)', lower)
  if not match or match[3] not in TIMM_TAGS:
    return None
  v2, model, tag = match[1], match[2], match[3]
  training = TIMM_TAGS[tag]
  if v2:
    key = f'v2-{model}'
    training = 'v2' if tag == 'in1k' else training
  elif model.startswith('lite'):
    key, training = model, 'lite'
  elif model.startswith('e') and model[1:] in 'sml':
    key, training = f'edgetpu-{model[1]}', 'edgetpu'
  else:
    key = 'l2-475' if tag == 'ns_jft_in1k_475' else model
  return _row(f'timm-{key}{NAME_SUFFIXES[training]}', key, training, 'timm')


def _row(name: str, key: str, training: str, source: str) -> Row | None:
  """The row, if its variant is in arch.PRESETS and it was published."""
  if _variant(key) not in arch.PRESETS or key not in PUBLISHED_TOP1[training]:
    return None
  return Row(name, _variant(key), training, key, source)


def find_checkpoints(root: str, skip: str | None = None
                     ) -> Iterator[tuple[Row, str]]:
  """(row, path) of every published checkpoint under `root`, by name.

  Unrecognised checkpoints are logged and left out.
  """
  root = os.path.abspath(root)
  skip = os.path.abspath(skip) if skip else None
  for directory, subdirs, files in os.walk(root):
    if skip and (directory == skip or directory.startswith(skip + os.sep)):
      subdirs[:] = []
      continue
    subdirs.sort()
    for filename in sorted(files):
      row = _file_row(filename)
      if row:
        yield row, os.path.join(directory, filename)
    if not any(f.startswith('model.ckpt') and f.endswith('.index')
               for f in files):
      continue
    parts = os.path.relpath(directory, root).split(os.sep)
    row = None
    # The deepest name that identifies the row: a tarball's own directory,
    # else the directory it was unpacked into.
    for index in range(len(parts) - 1, -1, -1):
      row = _official_row(parts[index], parts[index - 1] if index else None)
      if row:
        break
    if row:
      yield row, directory
    else:
      logging.warning(
          'Skipping the TF checkpoint in %s: its name does not say which '
          'published row it is; move it into a directory named after its '
          "row (the table's first column), e.g. %s.", directory,
          os.path.join(root, 'b0-aa', parts[-1]))


def recipe(row: Row, *, data_dir: str | None, dataset: str, split: str,
           eval_batch_size: int | None, resolution: int | None, dtype: str):
  """The ImageNet recipe of the row's variant, set up to score its weights."""
  from configs import imagenet  # pylint: disable=g-import-not-at-top
  config = imagenet.get_config(row.variant)
  config.dataset = dataset
  config.data_dir = data_dir
  config.eval_split = split
  # The compute dtype lives in the execution section where the recipe has
  # one (issue 17), else in the model section.
  section = config.execution if 'execution' in config else config.model
  section.dtype = dtype
  if eval_batch_size:
    config.eval_batch_size = eval_batch_size
  if resolution:
    config.model.resolution = resolution
  return config


def _write_json(path: str, value: Any) -> None:
  """Writes JSON so that a reader never sees a half-written file."""
  temporary = path + '.tmp'
  with open(temporary, 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(temporary, path)


def _finished(result_path: str) -> bool:
  """A row is done when its result is written without an error."""
  if not os.path.exists(result_path):
    return False
  with open(result_path) as f:
    return 'error' not in json.load(f)


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'


def table_rows(found: dict[str, tuple[Row, str]], output: str
               ) -> list[dict[str, Any]]:
  """Every official row and every found one, with its result or state."""
  rows = {row.name: row for row in official_rows()}
  for name, (row, _) in found.items():
    rows.setdefault(name, row)
  entries = []
  for name, row in rows.items():
    entry = dict(name=name, variant=row.variant, source=row.source,
                 training=TRAINING_NAMES[row.training],
                 resolution=row.resolution or arch.PRESETS[row.variant]
                 .resolution,
                 published_top1=row.published_top1, top1=None,
                 difference=None, state=NOT_YET,
                 checkpoint=found[name][1] if name in found else None,
                 download=f'{BUCKET}/{row.tarball}' if row.tarball else None)
    result_path = os.path.join(output, 'results', f'{name}.json')
    if os.path.exists(result_path):
      with open(result_path) as f:
        result = json.load(f)
      entry['result'] = result
      if 'error' in result:
        entry['state'] = f'failed: {result["error"]}'
      else:
        top1 = round(100 * result['top1'], 2)
        entry.update(top1=top1, difference=round(top1 - row.published_top1, 2),
                     resolution=result['resolution'], state='measured')
        if result.get('resolution_override'):
          entry['state'] = (f'measured at --resolution='
                            f'{result["resolution_override"]}, not as '
                            'published')
    elif name in found:
      entry['state'] = 'not yet: needs ImageNet validation'
    entries.append(entry)
  return entries


def render_markdown(entries: Sequence[dict[str, Any]]) -> str:
  """The table as Markdown: one line per row.

  The last column is the official tarball, relative to BUCKET ($G in the
  README), for the rows that have one.
  """
  lines = [
      '| Checkpoint | Training | Resolution | Published top-1 | Ours | Δ | '
      'Tarball ($G/…) |',
      '|---|---|---|---|---|---|---|']
  for entry in entries:
    name = entry['name']
    if entry['source'] != 'tf':
      name += f' ({entry["source"]})'
    if entry['top1'] is None:
      ours, difference = entry['state'], ''
    else:
      ours = f'{entry["top1"]:.2f}'
      if entry['state'] != 'measured':
        ours += f' ({entry["state"]})'
      difference = f'{entry["difference"]:+.2f}'
    tarball = entry['download'] or ''
    if tarball:
      tarball = f'`{tarball.removeprefix(BUCKET + "/")}`'
    lines.append(f'| {name} | {entry["training"]} | {entry["resolution"]} | '
                 f'{entry["published_top1"]:g} | {ours} | {difference} | '
                 f'{tarball} |')
  return '\n'.join(lines) + '\n'


def write_table(found: dict[str, tuple[Row, str]], output: str) -> list[dict]:
  """Rewrites OUTPUT/table.json and table.md from the results so far."""
  entries = table_rows(found, output)
  _write_json(os.path.join(output, 'table.json'), entries)
  with open(os.path.join(output, 'table.md.tmp'), 'w') as f:
    f.write(render_markdown(entries))
  os.replace(os.path.join(output, 'table.md.tmp'),
             os.path.join(output, 'table.md'))
  return entries


def convert_once(row: Row, path: str, directory: str) -> None:
  """Converts `path` into `directory` unless a checkpoint is already there."""
  from efficientnet_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from efficientnet_jax import convert  # pylint: disable=g-import-not-at-top
  if checkpoints.latest_step(directory) is not None:
    logging.info('%s: already converted in %s.', row.name, directory)
    return
  logging.info('%s: converting %s.', row.name, path)
  converted = convert.convert(row.source, path, row.variant,
                              advprop=row.advprop, resolution=row.resolution)
  convert.save(converted, directory)


def reproduce(checkpoints_dir: str, output: str, *, data_dir: str | None,
              dataset: str = 'imagenet2012', split: str = 'validation',
              eval_batch_size: int | None = None,
              resolution: int | None = None,
              dtype: str = 'float32') -> list[dict[str, Any]]:
  """Converts, scores and tabulates every published checkpoint found.

  Rows whose result file exists are not scored again; a row that fails
  records its one-line error in its result file and is retried by the next
  run. A dataset that is not prepared stops the run before any conversion.

  Args:
    checkpoints_dir: the downloaded checkpoints (see the module docstring).
    output: where converted/, results/, table.md and table.json go.
    data_dir: the TFDS data directory holding the prepared dataset.
    dataset: the TFDS dataset ('imagenet2012'; tests use a mock).
    split: the split to score.
    eval_batch_size: None: the recipe's.
    resolution: score at this resolution instead of the published one
      (tests; the row is then marked as not as published).
    dtype: compute dtype; float32 by default, the checkpoints' own precision.

  Returns:
    The table entries (as in table.json).

  Raises:
    FileNotFoundError: no such checkpoints directory, or the dataset is not
      prepared (the message gives the command that prepares it).
    ValueError: the dataset has no such split.
  """
  from efficientnet_jax import eval_lib  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(checkpoints_dir):
    raise FileNotFoundError(f'--checkpoints={checkpoints_dir!r} is not a '
                            'directory.')
  for sub in ('converted', 'results'):
    os.makedirs(os.path.join(output, sub), exist_ok=True)
  found = {}
  for row, path in find_checkpoints(checkpoints_dir, skip=output):
    if row.name in found:
      logging.warning('%s: using %s, not %s.', row.name, found[row.name][1],
                      path)
      continue
    found[row.name] = (row, path)
  logging.info('Found %d published checkpoints: %s.', len(found),
               ', '.join(found) or 'none')
  write_table(found, output)
  if found:
    # Every row needs the split: say so before converting anything.
    from efficientnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    config = recipe(next(iter(found.values()))[0], data_dir=data_dir,
                    dataset=dataset, split=split, eval_batch_size=None,
                    resolution=None, dtype=dtype)
    logging.info('%s %s: %d examples.', dataset, split,
                 input_pipeline.dataset_info(config).num_eval_examples)
  for name, (row, path) in found.items():
    result_path = os.path.join(output, 'results', f'{name}.json')
    if _finished(result_path):
      logging.info('%s: done already (%s).', name, result_path)
      continue
    converted = os.path.join(output, 'converted', name)
    try:
      convert_once(row, path, converted)
      config = recipe(row, data_dir=data_dir, dataset=dataset, split=split,
                      eval_batch_size=eval_batch_size, resolution=resolution,
                      dtype=dtype)
      result = eval_lib.evaluate_checkpoint(config, converted)
      result['resolution_override'] = resolution
    except Exception as error:  # pylint: disable=broad-except
      logging.error('%s failed: %s', name, traceback.format_exc())
      result = dict(error=_one_line(error))
    result.update(row=name, published_top1=row.published_top1,
                  weights_file=path)
    _write_json(result_path, result)
    entries = write_table(found, output)
    logging.info('%s: %s', name, next(e['state'] for e in entries
                                     if e['name'] == name))
  return write_table(found, output)


_CHECKPOINTS = flags.DEFINE_string(
    'checkpoints', None, 'Directory of downloaded published checkpoints.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data directory with the validation split.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'Where converted/, results/, table.md, table.json go.')
_DATASET = flags.DEFINE_string('dataset', 'imagenet2012', 'TFDS dataset.')
_SPLIT = flags.DEFINE_string('split', 'validation', 'Split to score.')
_BATCH_SIZE = flags.DEFINE_integer(
    'eval_batch_size', None, 'Global eval batch (default: the recipe\'s).')
_RESOLUTION = flags.DEFINE_integer(
    'resolution', None, 'Score at this resolution instead of the published '
    'one (for quick checks; such rows are marked).')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Compute dtype.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not _CHECKPOINTS.value or not _OUTPUT.value:
    raise app.UsageError('--checkpoints and --output are required.')
  try:
    entries = reproduce(
        _CHECKPOINTS.value, _OUTPUT.value, data_dir=_DATA_DIR.value,
        dataset=_DATASET.value, split=_SPLIT.value,
        eval_batch_size=_BATCH_SIZE.value, resolution=_RESOLUTION.value,
        dtype=_DTYPE.value)
  except (FileNotFoundError, ValueError) as error:
    raise SystemExit(f'reproduce: error: {error}') from None
  measured = sum(entry['top1'] is not None for entry in entries)
  logging.info('%d of %d rows measured; wrote %s.', measured, len(entries),
               os.path.join(_OUTPUT.value, 'table.md'))


if __name__ == '__main__':
  app.run(main)
