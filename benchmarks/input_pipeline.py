"""Throughput of the input pipeline's preprocessing, in images/s per CPU core.

Generates ImageNet-like JPEGs (500x375, ~100 KB, quality 90) in memory and
runs the pipeline's own train preprocessing (decode-and-crop,
bicubic resize, flip, then none / AutoAugment / RandAugment) and eval
preprocessing at 224 px through tf.data (parallel map, batches of 64), the
way input_pipeline does it minus TFRecord reading, handing images over in
input_pipeline.host_image_dtype's dtype ('auto'; the steps normalise on the
device).

Host bytes per batch: the image array of one batch per mode, as 'auto' hands
it over and as float32 (what every mode handed over when the host
normalised), and the same two for B7's recipe batch (4096 at 600 px).

Two figures per mode, each the best of --repeats windows taken in turns:
wall-clock images/s divided by the usable cores, and images per CPU-second
of this process (user + system time), which holds up better when other jobs
share the machine.

  python -m benchmarks.input_pipeline [--seconds=5] [--repeats=3] [--json]

Every run writes benchmarks/results/input_pipeline-<UTC time>.json and
input_pipeline-latest.json: the command line, the machine (with the load
average before and after), every window and the best figures per mode;
`python -m benchmarks.render` turns the latest into docs/performance.md's
table. With --json the last line printed is that JSON object.
"""

import json
import os
import resource
import sys
import time

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf

from benchmarks import report
from efficientnet_jax import arch
from efficientnet_jax import input_pipeline

_SECONDS = flags.DEFINE_float('seconds', 5.0, 'Seconds per timed window.')
_REPEATS = flags.DEFINE_integer(
    'repeats', 3, 'Windows per mode, taken in turns; the best one counts.')
_NUM_IMAGES = flags.DEFINE_integer(
    'num_images', 256, 'Distinct JPEGs generated (cycled through).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Batch size.')
_RESOLUTION = flags.DEFINE_integer('resolution', 224, 'Output side.')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON line at the end.')

MODES = ('train_none', 'train_autoaugment', 'train_randaugment', 'eval')
# B7's recipe batch and resolution (configs/imagenet.py:b7).
B7_BATCH, B7_RESOLUTION = 4096, 600


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
  """ImageNet-like JPEGs: 500x375 smooth colour fields plus noise.

  The noise sets the file size near ImageNet's mean (~110 KB: 140 GB over
  1.28M training images), which is what JPEG decoding time follows.
  """
  rng = np.random.default_rng(seed)
  images = []
  for _ in range(count):
    coarse = rng.uniform(0, 255, (1, 12, 16, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, [375, 500], method='bicubic')[0]
    noisy = smooth + rng.normal(0, 22, smooth.shape).astype(np.float32)
    pixels = tf.cast(tf.clip_by_value(noisy, 0, 255), tf.uint8)
    images.append(tf.io.encode_jpeg(pixels, quality=90).numpy())
  return images


def host_dtype(mode: str, host_image_dtype: str) -> tf.DType:
  """input_pipeline.host_image_dtype for `mode` under that config value."""
  config = ml_collections.ConfigDict(dict(
      augment='none' if mode == 'eval' else mode.removeprefix('train_'),
      host_image_dtype=host_image_dtype))
  return input_pipeline.host_image_dtype(config, train=mode != 'eval')


def build_dataset(jpegs: list[bytes], mode: str,
                  host_image_dtype: str = 'auto') -> tf.data.Dataset:
  """The pipeline's per-example work for `mode`, batched."""
  spec = arch.spec_for('b0')
  resolution = _RESOLUTION.value
  dtype = host_dtype(mode, host_image_dtype)
  dataset = tf.data.Dataset.from_tensor_slices(jpegs).repeat()
  dataset = dataset.enumerate()

  @tf.autograph.experimental.do_not_convert
  def preprocess(index, image_bytes):
    if mode == 'eval':
      image = input_pipeline.preprocess_eval(
          image_bytes, resolution=resolution,
          resize_method=spec.resize_method, crop_padding=32)
    else:
      seed = tf.stack([tf.constant(0, tf.int64), index])
      image = input_pipeline.preprocess_train(
          image_bytes, seed, resolution=resolution,
          resize_method=spec.resize_method,
          augment_name=mode.removeprefix('train_'),
          randaugment_num_layers=2, randaugment_magnitude=10,
          crop_padding=32)
    return input_pipeline.to_host_dtype(image, dtype)

  dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(_BATCH_SIZE.value, drop_remainder=True)
  options = tf.data.Options()
  options.threading.max_intra_op_parallelism = 1
  return dataset.prefetch(2).with_options(options)


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def timed_window(iterator, seconds: float) -> tuple[int, float, float]:
  """(images, wall seconds, CPU seconds) of pulling batches for `seconds`."""
  images = 0
  start_wall, start_cpu = time.perf_counter(), cpu_seconds()
  while time.perf_counter() - start_wall < seconds:
    next(iterator)
    images += _BATCH_SIZE.value
  return (images, time.perf_counter() - start_wall,
          cpu_seconds() - start_cpu)


def host_bytes(jpegs: list[bytes]) -> dict[str, dict]:
  """Per mode: the image bytes of one batch, as 'auto' and as float32."""
  figures = {}
  for mode in MODES:
    auto = next(build_dataset(jpegs, mode, 'auto').as_numpy_iterator())
    float32 = next(build_dataset(jpegs, mode, 'float32').as_numpy_iterator())
    per_pixel = auto.dtype.itemsize
    figures[mode] = dict(
        dtype=str(auto.dtype), bytes_per_batch=int(auto.nbytes),
        float32_bytes_per_batch=int(float32.nbytes),
        ratio=float32.nbytes / auto.nbytes,
        b7_batch_gb=B7_BATCH * B7_RESOLUTION**2 * 3 * per_pixel / 1e9,
        b7_batch_float32_gb=B7_BATCH * B7_RESOLUTION**2 * 3 * 4 / 1e9)
  return figures


def main(argv):
  del argv
  command = report.command_line(module='benchmarks.input_pipeline')
  machine = report.machine_info()  # The load average before any window.
  started = report.utc_now().isoformat(timespec='seconds')
  git = report.git_revision()
  cores = len(os.sched_getaffinity(0))
  jpegs = make_jpegs(_NUM_IMAGES.value)
  mean_kb = float(np.mean([len(j) for j in jpegs]) / 1024)
  logging.info('%d JPEGs, mean %.0f KB', len(jpegs), mean_kb)
  bytes_per_batch = host_bytes(jpegs)
  iterators = {mode: iter(build_dataset(jpegs, mode)) for mode in MODES}
  for iterator in iterators.values():
    for _ in range(3):  # Warm-up: graph instantiation, thread pools.
      next(iterator)
  # Modes take turns, and each keeps its best window: other jobs on the
  # machine only ever slow a window down.
  windows = []
  for round_index in range(1, _REPEATS.value + 1):
    for mode in MODES:
      images, wall, cpu = timed_window(iterators[mode], _SECONDS.value)
      windows.append(dict(mode=mode, round=round_index, images=images,
                          wall_s=wall, cpu_s=cpu, images_per_s=images / wall,
                          images_per_cpu_s=images / cpu,
                          load_average=os.getloadavg()[0]))
  modes = {}
  print(f'{"mode":20s} {"img/s":>8s} {"img/s/core":>11s} {"img/cpu-s":>10s}')
  for mode in MODES:
    mine = [w for w in windows if w['mode'] == mode]
    figures = dict(
        images_per_s=max(w['images_per_s'] for w in mine),
        images_per_cpu_s=max(w['images_per_cpu_s'] for w in mine))
    figures['images_per_s_per_core'] = figures['images_per_s'] / cores
    modes[mode] = figures
    print(f'{mode:20s} {figures["images_per_s"]:8.1f} '
          f'{figures["images_per_s_per_core"]:11.1f} '
          f'{figures["images_per_cpu_s"]:10.1f}')
  cost_ratios = {
      name: (modes['train_none']['images_per_cpu_s']
             / modes[f'train_{name}']['images_per_cpu_s'])
      for name in ('autoaugment', 'randaugment')}
  results = dict(
      kind='input_pipeline', command=command, started_utc=started,
      finished_utc=report.utc_now().isoformat(timespec='seconds'),
      git=git, machine=machine,
      software={sys.executable: report.package_versions(
          ['tensorflow', 'numpy', 'jax'])},
      settings=dict(seconds=_SECONDS.value, repeats=_REPEATS.value,
                    num_images=_NUM_IMAGES.value,
                    batch_size=_BATCH_SIZE.value),
      cores=cores, resolution=_RESOLUTION.value, mean_jpeg_kb=mean_kb,
      load_average_end=os.getloadavg()[0], windows=windows, modes=modes,
      cost_ratios=cost_ratios, host_bytes=bytes_per_batch)
  print(f'AutoAugment costs {cost_ratios["autoaugment"]:.2f}x and '
        f'RandAugment {cost_ratios["randaugment"]:.2f}x the plain '
        'train preprocessing (CPU time per image); load average '
        f'{results["load_average_end"]:.1f} on {cores} cores.')
  for mode, figures in bytes_per_batch.items():
    print(f'{mode:20s} host {figures["dtype"]:8s} '
          f'{figures["bytes_per_batch"] / 2**20:7.1f} MiB per batch '
          f'(float32 {figures["float32_bytes_per_batch"] / 2**20:.1f} MiB); '
          f'B7 at {B7_BATCH}: {figures["b7_batch_gb"]:.1f} GB '
          f'(float32 {figures["b7_batch_float32_gb"]:.1f} GB)')
  path = report.write_results(results, 'input_pipeline')
  logging.info('Results: %s and input_pipeline-latest.json', path)
  if _JSON.value:
    with open(path) as f:
      print(json.dumps(json.load(f)))


if __name__ == '__main__':
  app.run(main)
