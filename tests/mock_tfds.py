"""A TFDS dataset with only a `validation` split, built offline (tests only).

As a user has ImageNet when they only evaluate published weights: 1000
classes and no `train` split. Used by the input pipeline, eval_lib and
reproduce tests; `prepare(data_dir)` writes it and returns config.dataset's
name for it.
"""

import numpy as np
import tensorflow_datasets as tfds

NAME = 'validation_only_images'
NUM_CLASSES = 1000  # ImageNet's, so published B0 heads fit.
NUM_EXAMPLES = 3
SIDE = 40  # Pixels; large enough for a 32 px centre crop.


def label(example_id: int) -> int:
  return 7 * example_id


class ValidationOnlyImages(tfds.core.GeneratorBasedBuilder):
  """NUM_EXAMPLES random SIDE x SIDE PNGs, label 7 * id, `validation` only."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3)),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'validation': self._generate_examples()}

  def _generate_examples(self):
    for example_id in range(NUM_EXAMPLES):
      image = np.random.default_rng(example_id).integers(
          0, 256, (SIDE, SIDE, 3)).astype(np.uint8)
      yield example_id, {'image': image, 'label': label(example_id)}


def prepare(data_dir: str) -> str:
  """Writes the dataset into `data_dir`; returns its name."""
  ValidationOnlyImages(data_dir=data_dir).download_and_prepare()
  return NAME
