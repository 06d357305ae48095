"""Pieces every recipe shares: the variant argument and the model section.

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
  typed_none = dict(phi=float, dropout_rate=float, resolution=int)
  section = ml_collections.ConfigDict()
  for name, value in fields.items():
    if name in typed_none:
      value = ml_collections.FieldReference(value, field_type=typed_none[name])
    section[name] = value
  section.dtype = 'float32'  # Compute dtype; 'bfloat16' on GPU/TPU.
  section.padding = 'same'  # TF 'SAME'; 'symmetric' for timm's own weights.
  section.bn_group_size = ml_collections.FieldReference(None, field_type=int)
  section.depthwise_impl = 'auto'  # 'shifted' on CPU, 'grouped' elsewhere.
  # Train: which activations the backward pass recomputes instead of keeping:
  # 'all' (least memory), 'project' or 'none' (fastest); see models.MBConv.
  section.recompute = 'project'
  # ...and only the stages whose input takes at least this many bytes per
  # example; 0 recomputes every stage the policy names.
  section.recompute_min_bytes = 1 << 20
  # Inference: run each block on batch chunks whose expanded activation takes
  # at most this many bytes; None: 6 MB on CPU, whole batches elsewhere.
  section.inference_chunk_bytes = ml_collections.FieldReference(
      None, field_type=int)
  return section
