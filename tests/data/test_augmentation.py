"""Random crop + flip: exact where the answer is known, deterministic per (seed, step, row)."""

import numpy as np
import pytest

from mmalign.data import pipeline


def gradient(height=20, width=30) -> np.ndarray:
  """Each column its own value: a crop keeps columns' order, a flip reverses it."""
  row = np.linspace(0, 240, width).astype(np.uint8)
  return np.repeat(np.repeat(row[None, :, None], height, axis=0), 3, axis=2)


class Source:
  def __init__(self, images):
    self.images = images

  def __getitem__(self, i):
    return {"image": self.images[i]}


def test_without_crop_or_flip_the_image_passes_unchanged():
  image = gradient()
  assert not pipeline.Augmentation()
  out = pipeline.Augmentation(flip=True)(image, None, np.random.default_rng(1))
  assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])


def test_flip_mirrors_about_half_the_rows():
  image = gradient()
  flips = [pipeline.Augmentation(flip=True)(image, None, np.random.default_rng(s))
           for s in range(40)]
  mirrored = [np.array_equal(f, image[:, ::-1]) for f in flips]
  assert all(m or np.array_equal(f, image) for m, f in zip(mirrored, flips))
  assert 10 <= sum(mirrored) <= 30


@pytest.mark.parametrize("seed", range(5))
def test_a_crop_is_a_resized_window_of_the_image(seed):
  image = gradient()
  out = pipeline.Augmentation(crop_min_area=0.3)(image, 16, np.random.default_rng(seed))
  assert out.shape == (16, 16, 3)
  columns = out[8, :, 0].astype(int)
  assert np.all(np.diff(columns) >= -2)  # Still increasing left to right (bicubic ringing).
  constant = np.full((20, 30, 1), 77, np.uint8)
  np.testing.assert_array_equal(
      pipeline.Augmentation(0.3, True)(constant, 16, np.random.default_rng(seed)), 77)


def test_rows_depend_on_seed_step_and_row_only():
  images = [gradient(20 + i, 30 + 2 * i) for i in range(6)]
  augmentation = pipeline.Augmentation(0.4, True)
  seeds = pipeline.augmentation_seeds(3, 7, np.arange(6))
  whole = pipeline.decode_images(Source(images), np.arange(6), 16, augmentation, seeds)
  halves = [pipeline.decode_images(Source(images), np.arange(6)[part], 16, augmentation,
                                   [seeds[i] for i in range(6)[part]])
            for part in (slice(0, 3), slice(3, 6))]
  np.testing.assert_array_equal(whole, np.concatenate(halves))
  again = pipeline.decode_images(Source(images), np.arange(6), 16, augmentation, seeds)
  np.testing.assert_array_equal(whole, again)
  other_step = pipeline.decode_images(Source(images), np.arange(6), 16, augmentation,
                                      pipeline.augmentation_seeds(3, 8, np.arange(6)))
  assert not np.array_equal(whole, other_step)


def test_images_of_any_size_are_resized_and_centre_cropped():
  images = [gradient(20, 30), gradient(40, 10), gradient(16, 16)]
  out = pipeline.decode_images(Source(images), np.arange(3), 16)
  assert out.shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(out[0], pipeline.resize_and_crop(images[0], 16))
  np.testing.assert_array_equal(out[2], images[2])
