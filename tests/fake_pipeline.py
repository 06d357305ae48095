"""An in-memory stand-in for efficientnet_jax.input_pipeline (tests only).

Same interface and contract (start_step=k yields exactly what the
uninterrupted iterator yields from step k; eval batches padded with mask 0 and
index -1), on sklearn's bundled handwritten digits, upsampled by pixel
repetition and placed in a black canvas of the requested resolution. Lets the
train_lib tests run without tensorflow_datasets.

Images are [0, 255] RGB, not normalised, as the real pipeline hands them
over. The digits' 17 levels are rounded to integers here, so every image is
integral and config.host_image_dtype 'auto' hands over uint8 (the real
pipeline's rule: uint8 where the preprocessing ends in integers); 'float32'
hands over the same values as float32.
"""

from __future__ import annotations

import collections

import numpy as np
from sklearn import datasets

DatasetInfo = collections.namedtuple(
    'DatasetInfo', ['num_classes', 'num_train_examples', 'num_eval_examples'])
NUM_EVAL = 297  # Not a multiple of any batch size, to exercise padding.


def _digits() -> tuple[np.ndarray, np.ndarray]:
  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0))  # 0..16 -> 0..255.
  return images.astype(np.uint8), digits.target.astype(np.int32)


def _split(split: str) -> tuple[np.ndarray, np.ndarray]:
  images, labels = _digits()
  if split == 'train':
    return images[:-NUM_EVAL], labels[:-NUM_EVAL]
  return images[-NUM_EVAL:], labels[-NUM_EVAL:]


def dataset_info(config) -> DatasetInfo:
  del config
  images, _ = _digits()
  return DatasetInfo(10, len(images) - NUM_EVAL, NUM_EVAL)


def host_image_dtype(config) -> type:
  """uint8 for 'auto' and 'uint8' (the images are integral), else float32."""
  if config.host_image_dtype not in ('auto', 'uint8', 'float32'):
    raise ValueError(f'config.host_image_dtype={config.host_image_dtype!r}')
  return np.float32 if config.host_image_dtype == 'float32' else np.uint8


def _to_model_input(images, resolution, dtype):
  scale = max(1, resolution // 8)
  big = np.kron(images, np.ones((scale, scale), np.uint8))
  canvas = np.zeros((len(images), resolution, resolution), np.uint8)
  offset = (resolution - big.shape[1]) // 2
  canvas[:, offset:offset + big.shape[1], offset:offset + big.shape[2]] = big
  return np.repeat(canvas[..., None], 3, axis=-1).astype(dtype)


def _process(process_index, process_count):
  """(index, count) of this process, jax's when not given."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    return jax.process_index(), jax.process_count()
  return process_index, process_count


def create_train_iter(config, *, resolution, resize_method,
                      local_batch_size, start_step=0, process_index=None,
                      process_count=None):
  """Each process yields its rows of the same global batch, so that N
  processes see exactly the batches of one process with N times the batch."""
  del resize_method
  index, count = _process(process_index, process_count)
  images, labels = _split(config.train_split)
  images = _to_model_input(images, resolution, host_image_dtype(config))
  n = len(labels)
  global_batch_size = local_batch_size * count
  step = start_step
  while True:
    start = step * global_batch_size + index * local_batch_size
    positions = np.arange(start, start + local_batch_size)
    epochs = positions // n
    order = {e: np.random.default_rng((config.seed, int(e))).permutation(n)
             for e in np.unique(epochs)}
    idx = np.array([order[e][p % n] for e, p in zip(epochs, positions)])
    yield dict(image=images[idx], label=labels[idx])
    step += 1


def create_eval_iter(config, *, resolution, resize_method,
                     local_batch_size, split=None, process_index=None,
                     process_count=None):
  """Each process scores a contiguous share of the split; all processes yield
  the same number of batches (the eval step is collective), padded with
  mask 0 and index -1."""
  del resize_method
  index, count = _process(process_index, process_count)
  images, labels = _split(split or config.eval_split)
  images = _to_model_input(images, resolution, host_image_dtype(config))
  shares = np.array_split(np.arange(len(labels)), count)
  num_batches = -(-max(len(share) for share in shares) // local_batch_size)
  mine = shares[index]
  for batch in range(num_batches):
    rows = mine[batch * local_batch_size:(batch + 1) * local_batch_size]
    pad = local_batch_size - len(rows)
    yield dict(
        image=np.concatenate([images[rows],
                              np.zeros((pad,) + images.shape[1:],
                                       images.dtype)]),
        label=np.concatenate([labels[rows], np.zeros(pad, np.int32)]),
        mask=np.concatenate([np.ones(len(rows), np.float32),
                             np.zeros(pad, np.float32)]),
        index=np.concatenate([rows.astype(np.int32),
                              -np.ones(pad, np.int32)]))
