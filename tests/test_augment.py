"""Tests of ``deinforeg_jax.data.augment``."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from deinforeg_jax.data import DatasetInfo, load_digits, make_augment, train_batches
from deinforeg_jax.data import augment as aug


def info_for(shape, pixel_max=255.0):
  channels = shape[-1]
  return DatasetInfo(
    "t", shape, 10, 1, 1, (0.0,) * channels, (1.0,) * channels, pixel_max=pixel_max
  )


def unique_image(shape) -> np.ndarray:
  """Every pixel value distinct and nonzero, so positions can be traced."""
  return np.arange(1, np.prod(shape) + 1, dtype=np.float32).reshape(shape)


def random_image(shape, seed=0, pixel_max=255.0):
  return np.random.default_rng(seed).uniform(0, pixel_max, shape).astype(np.float32)


def test_kinds():
  assert make_augment("none", info_for((8, 8, 3))) is None
  with pytest.raises(ValueError, match="must be one of"):
    make_augment("autoaugment", info_for((8, 8, 3)))


@pytest.mark.parametrize("kind", ["crop_flip", "strong"])
@pytest.mark.parametrize("shape", [(32, 32, 3), (8, 8, 1), (5, 7, 3), (6, 6, 4), (3, 3, 2)])
def test_shape_dtype_and_range(kind, shape):
  fn = make_augment(kind, info_for(shape))
  rng = np.random.default_rng(0)
  for seed in range(20):
    out = fn(random_image(shape, seed), rng)
    assert out.shape == shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0


def _offset(out: np.ndarray, image: np.ndarray) -> tuple[int, int]:
  """The (dy, dx) with out[y, x] == image[y + dy, x + dx] wherever out is nonzero."""
  y, x = np.argwhere(out[..., 0] != 0)[0]
  sy, sx = np.argwhere(image[..., 0] == out[y, x, 0])[0]
  return int(sy - y), int(sx - x)


def test_crop_moves_content_at_most_4_pixels_and_pads_with_zeros():
  shape = (10, 9, 2)
  image = unique_image(shape)
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(600):
    out = aug.random_crop(image, rng)
    dy, dx = _offset(out, image)
    assert abs(dy) <= 4 and abs(dx) <= 4
    seen.add((dy, dx))
    # Inside the image the content is shifted exactly; outside it is zero padding.
    for y in range(shape[0]):
      for x in range(shape[1]):
        sy, sx = y + dy, x + dx
        inside = 0 <= sy < shape[0] and 0 <= sx < shape[1]
        np.testing.assert_array_equal(out[y, x], image[sy, sx] if inside else 0.0)
  assert len(seen) == 81  # every offset in [-4, 4]^2 occurs


def test_flip_mirrors_half_the_time():
  image = unique_image((4, 6, 3))
  rng = np.random.default_rng(1)
  flips = 0
  for _ in range(400):
    out = aug.random_flip(image, rng)
    if np.array_equal(out, image[:, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(out, image)
  assert 160 < flips < 240


@pytest.mark.parametrize("kind", ["crop_flip", "strong"])
def test_deterministic_for_a_seed(kind):
  fn = make_augment(kind, info_for((16, 16, 3)))
  image = random_image((16, 16, 3))
  a = [fn(image, np.random.default_rng(s)) for s in range(5)]
  b = [fn(image, np.random.default_rng(s)) for s in range(5)]
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], a[1])


def test_strong_greyscale_probability_and_jitter():
  fn = make_augment("strong", info_for((8, 8, 3)))
  image = random_image((8, 8, 3))
  rng = np.random.default_rng(2)
  outs = [fn(image, rng) for _ in range(500)]
  grey = np.mean(
    [np.allclose(o[..., 0], o[..., 1]) and np.allclose(o[..., 1], o[..., 2]) for o in outs]
  )
  assert 0.13 < grey < 0.27  # RandomGrayscale(p=0.2)
  # ColorJitter (p=0.8) changes pixel values beyond a crop/flip rearrangement.
  changed = np.mean([not np.isin(o[o != 0], image).all() for o in outs])
  assert 0.7 < changed < 0.9


def test_strong_on_greyscale_images_keeps_one_channel_in_range():
  fn = make_augment("strong", info_for((8, 8, 1), pixel_max=1.0))
  rng = np.random.default_rng(3)
  for seed in range(50):
    out = fn(random_image((8, 8, 1), seed, pixel_max=1.0), rng)
    assert out.shape == (8, 8, 1) and 0.0 <= out.min() and out.max() <= 1.0
  image = random_image((8, 8, 1))
  assert aug.adjust_saturation(image, 0.0, 255.0) is image
  assert aug.adjust_hue(image, 0.3, 255.0) is image


def test_colour_ops_match_their_definitions():
  image = random_image((5, 6, 3), seed=4)
  image[0, 0] = [10, 10, 10]  # grey pixel: hue undefined, stays grey
  for shift in (0.0, 0.07, -0.1, 0.5):
    out = aug.adjust_hue(image, shift, 255.0)
    ref = (
      np.asarray(
        [
          [
            colorsys.hsv_to_rgb((h[0] + shift) % 1.0, h[1], h[2])
            for h in (colorsys.rgb_to_hsv(*(p / 255.0)) for p in row)
          ]
          for row in image
        ]
      )
      * 255.0
    )
    np.testing.assert_allclose(out, ref, atol=1e-3)
  np.testing.assert_allclose(aug.adjust_brightness(image, 1.0, 255.0), image)
  np.testing.assert_allclose(aug.adjust_brightness(image, 2.0, 255.0), np.minimum(image * 2, 255.0))
  luma = image @ np.asarray([0.2989, 0.587, 0.114], np.float32)
  np.testing.assert_allclose(
    aug.adjust_contrast(image, 0.0, 255.0), np.full_like(image, luma.mean()), rtol=1e-5
  )
  np.testing.assert_allclose(
    aug.adjust_saturation(image, 0.0, 255.0), np.repeat(luma[..., None], 3, -1), rtol=1e-5
  )
  np.testing.assert_allclose(aug.adjust_saturation(image, 1.0, 255.0), image)


def test_train_batches_with_augment_are_reproducible():
  train, _, info = load_digits()
  fn = make_augment("strong", info)
  runs = [
    list(train_batches(train, info, global_batch_size=64, seed=0, epoch=1, augment=fn))
    for _ in range(2)
  ]
  for a, b in zip(*runs):
    np.testing.assert_array_equal(a["image"], b["image"])
  plain = next(train_batches(train, info, global_batch_size=64, seed=0, epoch=1))
  assert not np.array_equal(plain["image"], runs[0][0]["image"])
  np.testing.assert_array_equal(plain["label"], runs[0][0]["label"])
