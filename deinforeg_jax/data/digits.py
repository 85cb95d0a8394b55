"""The embedded default dataset: scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

import numpy as np

from deinforeg_jax.data.loader import ArraySplit, DatasetInfo


def load_digits(
  *, seed: int = 0, test_fraction: float = 0.2
) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
  """Loads the 1,797 digits (no download) as a seeded, stratified train/test split.

  Images are float32 [N, 8, 8, 1] in [0, 1] (raw 0..16 divided by 16), labels int32
  [N] in [0, 10). ``info.mean``/``info.std`` are the train split's pixel statistics.
  """
  # scikit-learn is imported here, not at module level: importing it costs ~1 s, which every
  # process that imports deinforeg_jax.data (preparation tools, other datasets) would pay.
  import sklearn.datasets  # pylint: disable=import-outside-toplevel
  from sklearn.model_selection import train_test_split  # pylint: disable=import-outside-toplevel

  raw = sklearn.datasets.load_digits()
  images = (raw.images[..., None] / 16.0).astype(np.float32)
  labels = raw.target.astype(np.int32)
  train_x, test_x, train_y, test_y = train_test_split(
    images, labels, test_size=test_fraction, stratify=labels, random_state=seed
  )
  info = DatasetInfo(
    name="digits",
    input_shape=images.shape[1:],
    num_classes=10,
    num_train=len(train_y),
    num_test=len(test_y),
    mean=(float(train_x.mean()),),
    std=(float(train_x.std()),),
    pixel_max=1.0,
    class_names=tuple(str(d) for d in range(10)),
  )
  return ArraySplit(train_x, train_y), ArraySplit(test_x, test_y), info
