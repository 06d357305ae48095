"""Mixup and CutMix on device, on a normalised float batch (pure JAX).

As google/automl efficientnetv2 datasets.py mixes (docs/reference.md §10.7):

- mixup (Zhang et al. 2018): example j becomes w_j * x_j + (1 - w_j) * x_p(j),
  w_j ~ Beta(alpha, alpha) raised to max(w_j, 1 - w_j), so an example keeps at
  least half of itself;
- CutMix (Yun et al. 2019): a box of area about (1 - w_j) of the image, with
  w_j ~ Beta(alpha, alpha) and a uniform centre, clipped to the image, is
  pasted from the partner; the label weight is the share of the image left
  unpasted, measured on the box as clipped;
- the partner p(j) is the batch reversed, and with both on the first half of
  the batch gets mixup and the second half CutMix, each half mixing with
  itself reversed.

The official code weighs CutMix labels by the pasted area averaged over the
batch; here each example's own area weighs its labels, so every soft target
matches its image. Every draw is a function of the step's key alone, so a
resumed run replays the same mixing. An alpha of 0 turns a method off before
anything is traced: the batch passes through untouched.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

Batch = Mapping[str, Any]
# fold_in salt of the mixing key, so that mixing leaves the dropout key as it
# is without mixing.
MIXING_SALT = 0x6d6978


def is_on(mixup_alpha: float, cutmix_alpha: float) -> bool:
  return bool(mixup_alpha) or bool(cutmix_alpha)


def mixup(images: jax.Array, rng: jax.Array, alpha: float
          ) -> tuple[jax.Array, jax.Array]:
  """(mixed images, each example's own weight) with the reversed batch."""
  weight = jax.random.beta(rng, alpha, alpha, (images.shape[0],))
  weight = jnp.maximum(weight, 1.0 - weight)
  image_weight = weight.astype(images.dtype)[:, None, None, None]
  mixed = images * image_weight + images[::-1] * (1.0 - image_weight)
  return mixed, weight


def cutmix_masks(rng: jax.Array, batch_size: int, height: int, width: int,
                 alpha: float) -> jax.Array:
  """float32 (B, H, W) masks, 1 inside each example's pasted box."""
  area_rng, y_rng, x_rng = jax.random.split(rng, 3)
  kept = jax.random.beta(area_rng, alpha, alpha, (batch_size,))
  side = jnp.sqrt(1.0 - kept)
  box_h = (side * height).astype(jnp.int32)
  box_w = (side * width).astype(jnp.int32)
  centre_y = jax.random.randint(y_rng, (batch_size,), 0, height)
  centre_x = jax.random.randint(x_rng, (batch_size,), 0, width)
  top = jnp.clip(centre_y - box_h // 2, 0, height)
  bottom = jnp.clip(centre_y + box_h // 2, 0, height)
  left = jnp.clip(centre_x - box_w // 2, 0, width)
  right = jnp.clip(centre_x + box_w // 2, 0, width)
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < bottom[:, None, None]) &
            (cols >= left[:, None, None]) & (cols < right[:, None, None]))
  return inside.astype(jnp.float32)


def cutmix(images: jax.Array, rng: jax.Array, alpha: float
           ) -> tuple[jax.Array, jax.Array]:
  """(images with a box from the reversed batch, each one's kept share)."""
  batch_size, height, width = images.shape[:3]
  masks = cutmix_masks(rng, batch_size, height, width, alpha)
  mask = masks.astype(images.dtype)[..., None]
  mixed = images * (1.0 - mask) + images[::-1] * mask
  return mixed, 1.0 - jnp.mean(masks, axis=(1, 2))


def mix_batch(batch: Batch, rng: jax.Array, *, mixup_alpha: float,
              cutmix_alpha: float) -> dict[str, Any]:
  """The batch with mixed 'image' plus 'mix_label' and 'mix_weight'.

  Example j's target is mix_weight_j * onehot(label_j) + (1 - mix_weight_j) *
  onehot(mix_label_j) (`soft_targets`). With both alphas 0 the batch comes
  back as given.
  """
  if not is_on(mixup_alpha, cutmix_alpha):
    return dict(batch)
  images, labels = batch['image'], batch['label']
  mixup_rng, cutmix_rng = jax.random.split(rng)
  if mixup_alpha and cutmix_alpha:
    half = images.shape[0] // 2
    first, first_weight = mixup(images[:half], mixup_rng, mixup_alpha)
    second, second_weight = cutmix(images[half:], cutmix_rng, cutmix_alpha)
    mixed = jnp.concatenate([first, second])
    weight = jnp.concatenate([first_weight, second_weight])
    partner = jnp.concatenate([labels[:half][::-1], labels[half:][::-1]])
  elif mixup_alpha:
    mixed, weight = mixup(images, mixup_rng, mixup_alpha)
    partner = labels[::-1]
  else:
    mixed, weight = cutmix(images, cutmix_rng, cutmix_alpha)
    partner = labels[::-1]
  return dict(batch, image=mixed, mix_label=partner,
              mix_weight=weight.astype(jnp.float32))


def soft_targets(batch: Batch, num_classes: int,
                 label_smoothing: float) -> jax.Array:
  """Smoothed one-hot targets, mixed when the batch carries 'mix_label'.

  Smoothing is affine and the mixing weights sum to 1, so smoothing the
  mixture equals mixing the smoothed one-hots.
  """
  targets = jax.nn.one_hot(batch['label'], num_classes)
  if 'mix_label' in batch:
    weight = batch['mix_weight'][:, None]
    targets = (weight * targets + (1.0 - weight) *
               jax.nn.one_hot(batch['mix_label'], num_classes))
  return optax.smooth_labels(targets, label_smoothing)
