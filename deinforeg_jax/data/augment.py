"""Training-image augmentation in numpy, for any image size and channel count.

Follows the reference code's pipelines (vision/setting.py, ``--aug_type``).

``make_augment(kind, info)`` returns ``augment(image, rng) -> image`` for
``loader.train_batches``: ``image`` is float32 ``[H, W, C]`` in raw units
(``[0, info.pixel_max]``), ``rng`` a ``np.random.Generator``; the result has the same
shape. Kinds:

- ``"none"``: no augmentation (``make_augment`` returns None).
- ``"crop_flip"``: RandomCrop(H x W, padding 4, zero fill) + RandomHorizontalFlip(0.5).
- ``"strong"``: crop_flip + RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8) +
  RandomGrayscale(0.2) -- the reference's default ``--aug_type basic`` pipeline.

The colour operations follow torchvision's tensor implementation: the four jitter
operations run in a random order with factors drawn uniformly from [0.6, 1.4] (hue
shift from [-0.1, 0.1]); results are clipped to ``[0, pixel_max]``; greyscale uses
the weights (0.2989, 0.587, 0.114). As in torchvision, saturation, hue and grayscale
leave images without exactly 3 channels unchanged, brightness and contrast apply to all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deinforeg_jax.data.loader import DatasetInfo

KINDS = ("none", "crop_flip", "strong")
PADDING = 4
JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
JITTER_P = 0.8
GRAYSCALE_P = 0.2
_GREY_WEIGHTS = np.asarray([0.2989, 0.587, 0.114], np.float32)

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def random_crop(image: np.ndarray, rng: np.random.Generator, padding: int = PADDING) -> np.ndarray:
  """Zero-pads ``padding`` pixels on every side, then crops a random ``H x W`` window."""
  height, width = image.shape[:2]
  top, left = rng.integers(0, 2 * padding + 1, size=2)
  out = np.zeros_like(image)
  # out[y, x] = image[y + top - padding, x + left - padding] where that is inside.
  dy, dx = int(top) - padding, int(left) - padding
  rows, cols = height - abs(dy), width - abs(dx)  # size of the part still inside
  if rows > 0 and cols > 0:
    out[max(0, -dy) : max(0, -dy) + rows, max(0, -dx) : max(0, -dx) + cols] = image[
      max(0, dy) : max(0, dy) + rows, max(0, dx) : max(0, dx) + cols
    ]
  return out


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors left-right with probability 0.5."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def grayscale(image: np.ndarray) -> np.ndarray:
  """``[H, W, 3]`` -> ``[H, W, 1]`` luma."""
  return image @ _GREY_WEIGHTS[:, None].astype(image.dtype, copy=False)


def adjust_brightness(image: np.ndarray, factor: float, pixel_max: float) -> np.ndarray:
  return np.clip(image * factor, 0.0, pixel_max)


def adjust_contrast(image: np.ndarray, factor: float, pixel_max: float) -> np.ndarray:
  # Mean luma = luma of the per-channel means (cheaper than the mean of the luma image).
  channel_mean = image.reshape(-1, image.shape[-1]).mean(0)
  mean = float(channel_mean @ _GREY_WEIGHTS) if image.shape[-1] == 3 else float(channel_mean.mean())
  return np.clip(factor * image + (1.0 - factor) * mean, 0.0, pixel_max)


def adjust_saturation(image: np.ndarray, factor: float, pixel_max: float) -> np.ndarray:
  if image.shape[-1] != 3:
    return image
  return np.clip(factor * image + (1.0 - factor) * grayscale(image), 0.0, pixel_max)


def adjust_hue(image: np.ndarray, shift: float, pixel_max: float) -> np.ndarray:
  """Rotates the hue by ``shift`` turns (RGB -> HSV -> RGB)."""
  if image.shape[-1] != 3:
    return image
  # Contiguous [H, W] planes: numpy is several times faster on them than on strided views.
  r, g, b = np.clip(np.moveaxis(image, -1, 0) * np.float32(1.0 / pixel_max), 0.0, 1.0)
  value = np.maximum(np.maximum(r, g), b)
  delta = value - np.minimum(np.minimum(r, g), b)
  safe = np.where(delta > 0, delta, np.float32(1.0))
  hue = np.where(
    value == r, (g - b) / safe, np.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
  )
  hue = np.where(delta > 0, hue, np.float32(0.0)) + np.float32(6.0 * shift)  # sixths of a turn
  # HSV -> RGB: channel = V - V S clip(min(k, 4 - k), 0, 1) with k = (n + 6 H) mod 6,
  # n = 5, 3, 1 for R, G, B, and V S = delta.
  planes = []
  for n in (5.0, 3.0, 1.0):
    k = hue + np.float32(n)
    k -= np.float32(6.0) * np.floor(k * np.float32(1.0 / 6.0))  # mod 6 (faster than %)
    planes.append(value - delta * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
  return (np.stack(planes, axis=-1) * np.float32(pixel_max)).astype(image.dtype, copy=False)


def color_jitter(image: np.ndarray, rng: np.random.Generator, pixel_max: float) -> np.ndarray:
  """torchvision ColorJitter(0.4, 0.4, 0.4, 0.1): the four ops in a random order."""
  factors = [
    rng.uniform(1.0 - JITTER["brightness"], 1.0 + JITTER["brightness"]),
    rng.uniform(1.0 - JITTER["contrast"], 1.0 + JITTER["contrast"]),
    rng.uniform(1.0 - JITTER["saturation"], 1.0 + JITTER["saturation"]),
    rng.uniform(-JITTER["hue"], JITTER["hue"]),
  ]
  ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
  for index in rng.permutation(4):
    image = ops[index](image, factors[index], pixel_max)
  return image


def crop_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """RandomCrop(padding=4) + RandomHorizontalFlip."""
  return random_flip(random_crop(image, rng), rng)


def make_augment(kind: str, info: DatasetInfo) -> Augment | None:
  """The ``augment(image, rng)`` function of ``kind`` for ``info``'s images, or None."""
  if kind not in KINDS:
    raise ValueError(f"data.augment={kind!r} must be one of {KINDS}")
  if kind == "none":
    return None
  if kind == "crop_flip":
    return crop_flip
  pixel_max = float(info.pixel_max)

  def strong(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = crop_flip(np.asarray(image, np.float32), rng)
    if rng.random() < JITTER_P:
      image = color_jitter(image, rng, pixel_max)
    if rng.random() < GRAYSCALE_P and image.shape[-1] == 3:
      image = np.repeat(grayscale(image), 3, axis=-1)
    return image.astype(np.float32, copy=False)

  return strong
