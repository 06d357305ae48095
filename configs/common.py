"""Pieces every recipe shares: the variant argument, the model and execution
sections.

No jax import, so configs load instantly (configs_test loads them all).
"""

from __future__ import annotations

import ml_collections

from efficientnet_jax import arch


def model_config(arg: str | None) -> ml_collections.ConfigDict:
  """The model section for a get_config argument ('b3', 'lite0', 'phi=2.5').

  Fields that default to "the variant's own value" (phi, dropout_rate,
  resolution) are typed placeholders so the command line can set them:
  `--config.model.phi=2.5` switches from the published table to the rule.
  """
  fields = arch.parse_variant(arg or 'b0')
  typed_none = dict(phi=float, dropout_rate=float, resolution=int,
                    blocks=tuple)
  section = ml_collections.ConfigDict()
  for name, value in fields.items():
    if name in typed_none:
      value = ml_collections.FieldReference(value, field_type=typed_none[name])
    section[name] = value
  section.padding = 'same'  # TF 'SAME'; 'symmetric' for timm's own weights.
  section.bn_group_size = ml_collections.FieldReference(None, field_type=int)
  return section


def execution_config(dtype: str = 'float32') -> ml_collections.ConfigDict:
  """How the network runs: never recorded in checkpoints, resolved once per
  backend by efficientnet_jax/execution.py (whose DEFAULTS these mirror;
  'auto' and None pick the backend's choice there)."""
  section = ml_collections.ConfigDict()
  section.dtype = dtype  # Compute dtype; 'bfloat16' on GPU/TPU.
  # 'cpu': the XLA:CPU kernels (1x1 as dots, stem as patches, swish keeping
  # only its input); 'xla': plain flax layers; 'auto': 'cpu' on CPU.
  section.kernels = 'auto'
  # 'shifted' (CPU kernel) or 'grouped' (lax); 'auto' follows `kernels`.
  section.depthwise_impl = 'auto'
  # Train: which activations the backward pass recomputes instead of keeping:
  # 'all' (least memory), 'project' or 'none' (fastest); see models.MBConv.
  # 'auto': 'project' on CPU, 'none' (XLA's own choice) elsewhere.
  section.recompute = 'auto'
  # ...and only the stages whose input takes at least this many bytes per
  # example; 0 recomputes every stage the policy names.
  section.recompute_min_bytes = 1 << 20
  # Inference: run each block on batch chunks whose expanded activation takes
  # at most this many bytes; None: 6 MB on CPU, whole batches elsewhere.
  section.inference_chunk_bytes = ml_collections.FieldReference(
      None, field_type=int)
  return section


def progressive_config(num_stages: int = 1, schedule: str = 'code', *,
                       min_image_size: int | None = None,
                       min_randaugment_magnitude: float | None = None,
                       min_mixup_alpha: float | None = None,
                       min_cutmix_alpha: float | None = None,
                       min_dropout_rate: float | None = None
                       ) -> ml_collections.ConfigDict:
  """The progressive-learning section (efficientnet_jax/progressive.py).

  Each setting rises over `num_stages` stages from its min_* here to the
  run's own value (train_image_size, randaugment_magnitude, mixup_alpha,
  cutmix_alpha, model.dropout_rate); a None minimum keeps that setting
  constant. One stage trains with the run's own settings throughout.
  `schedule`: 'code' (google/automl main.py) or 'paper' (Table 6).
  """
  section = ml_collections.ConfigDict()
  section.num_stages = num_stages
  section.schedule = schedule
  for name, value, field_type in (
      ('min_image_size', min_image_size, int),
      ('min_randaugment_magnitude', min_randaugment_magnitude, float),
      ('min_mixup_alpha', min_mixup_alpha, float),
      ('min_cutmix_alpha', min_cutmix_alpha, float),
      ('min_dropout_rate', min_dropout_rate, float)):
    section[name] = ml_collections.FieldReference(value,
                                                  field_type=field_type)
  return section
