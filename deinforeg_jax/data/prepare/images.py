"""Image datasets: ``.npz`` arrays -> TFDS, and the image-writing path shared with folders.

Images are stored as a ``tfds.features.Tensor`` of one fixed shape ``[H, W, C]`` (uint8, or
float32 for float arrays; raw bytes). ``tfds.features.Image`` would PNG-encode them with
TensorFlow; raw tensors need no codec to read. Labels are a ``tfds.features.ClassLabel``.
The train split's per-channel pixel mean/std (raw units) are stored in the dataset's
metadata (``metadata.json``) next to ``pixel_max``, ``stats_source`` and ``prepared_by``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np

from deinforeg_jax.data.loader import StatsAccumulator, validate_labels
from deinforeg_jax.data.prepare.builder import LocalDataset, Prepared, SplitData, write_dataset


@dataclasses.dataclass(frozen=True)
class PreparedImages(Prepared):
  """``Prepared`` plus the image shape ``[H, W, C]`` and pixel mean/std ``[C]`` (raw units)."""

  image_shape: tuple[int, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]


def write_images(
  name: str,
  data_dir: str,
  splits: dict[str, SplitData],
  *,
  image_shape: tuple[int, ...],
  image_dtype=np.uint8,
  class_names: Sequence[str] | None = None,
  num_classes: int | None = None,
  mean: Sequence[float] | None = None,
  std: Sequence[float] | None = None,
  stats_source: str = "given",
  description: str = "",
  overwrite: bool = False,
) -> PreparedImages:
  """Writes ``splits`` (``(image [H, W, C], label)`` pairs) as ``<data_dir>/<name>/1.0.0``.

  ``mean``/``std`` (raw pixel units, one per channel) are stored as given (described by
  ``stats_source``), else computed from the train split while it is written.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  image_shape, image_dtype = tuple(image_shape), np.dtype(image_dtype)
  if class_names:
    num_classes = len(class_names)
  if not num_classes:
    raise ValueError("give class_names or num_classes")
  if (mean is None) != (std is None):
    raise ValueError("give both mean and std, or neither")
  channels = image_shape[-1]
  if mean is not None and (len(mean) != channels or len(std) != channels):
    raise ValueError(f"mean/std need one value per channel ({channels}), got {mean} / {std}")

  stats = StatsAccumulator(channels)
  if mean is None and "train" in splits:
    train = splits["train"]

    def train_examples() -> Iterator[tuple[np.ndarray, int]]:
      for image, label in train.examples():
        stats.add(image)
        yield image, label

    splits = {**splits, "train": SplitData(train.num_examples, train_examples)}
    stats_source = f"train split, {train.num_examples} images"

  def metadata():
    values = (mean, std) if mean is not None else stats.result()
    return dict(
      mean=[float(m) for m in values[0]],
      std=[float(s) for s in values[1]],
      stats_source=stats_source,
      pixel_max=255.0 if image_dtype == np.uint8 else 1.0,
    )

  feature = tfds.features.Tensor(
    shape=image_shape, dtype=image_dtype, encoding=tfds.features.Encoding.BYTES
  )
  dataset = LocalDataset(
    name=name,
    input_key="image",
    input_feature=feature,
    num_classes=num_classes,
    class_names=class_names,
    splits=splits,
    description=description,
    metadata=metadata,
  )
  written = write_dataset(dataset, data_dir, overwrite=overwrite)
  return PreparedImages(
    **vars(written),
    image_shape=image_shape,
    mean=tuple(written.metadata["mean"]),
    std=tuple(written.metadata["std"]),
  )


def _as_images(array: np.ndarray, key: str) -> np.ndarray:
  """``[N, H, W]`` -> ``[N, H, W, 1]``; uint8 kept, other numbers -> float32."""
  if array.ndim == 3:
    array = array[..., None]
  if array.ndim != 4:
    raise ValueError(f"{key} must be [N, H, W] or [N, H, W, C], got shape {array.shape}")
  if array.dtype == np.uint8:
    return array
  if not np.issubdtype(array.dtype, np.number):
    raise ValueError(f"{key} must hold numbers, got dtype {array.dtype}")
  return array.astype(np.float32)


def prepare_npz(
  name: str,
  data_dir: str,
  npz_path: str,
  *,
  num_classes: int | None = None,
  mean: Sequence[float] | None = None,
  std: Sequence[float] | None = None,
  stats_source: str = "given",
  overwrite: bool = False,
) -> PreparedImages:
  """Prepares ``x_train, y_train, x_test, y_test`` (+ optional ``class_names``) arrays.

  Images are ``[N, H, W]`` (stored as ``[N, H, W, 1]``) or ``[N, H, W, C]``, uint8 (or
  numbers, stored as float32). Labels ``[N]`` must be 0-based ids below ``num_classes``
  (default: ``len(class_names)``, else the largest label + 1).
  """
  keys = ("x_train", "y_train", "x_test", "y_test")
  with np.load(npz_path, allow_pickle=False) as data:
    missing = set(keys) - set(data.files)
    if missing:
      raise ValueError(
        f"{npz_path} lacks key(s) {sorted(missing)}; it needs x_train, y_train, x_test, "
        f"y_test (and optionally class_names), found {data.files}"
      )
    arrays = {key: data[key] for key in keys}
    class_names = [str(c) for c in data["class_names"]] if "class_names" in data.files else None
  images = {s: _as_images(arrays[f"x_{s}"], f"x_{s}") for s in ("train", "test")}
  labels = {s: np.asarray(arrays[f"y_{s}"]) for s in ("train", "test")}
  for split in ("train", "test"):
    if labels[split].shape != images[split].shape[:1]:
      raise ValueError(
        f"y_{split} must be [N] with N = len(x_{split}) = {len(images[split])}, got "
        f"shape {labels[split].shape}"
      )
  if images["train"].shape[1:] != images["test"].shape[1:]:
    raise ValueError(
      f"train and test images differ in shape: {images['train'].shape[1:]} vs "
      f"{images['test'].shape[1:]}"
    )
  if images["train"].dtype != images["test"].dtype:
    images = {s: x.astype(np.float32) for s, x in images.items()}
  if class_names and num_classes and num_classes != len(class_names):
    raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
  if not num_classes:
    if class_names:
      num_classes = len(class_names)
    else:
      both = np.concatenate([labels["train"], labels["test"]])
      num_classes = int(both.max()) + 1 if both.size else 0
  for split in ("train", "test"):
    validate_labels(labels[split], num_classes, split_name=f"{npz_path}: y_{split}")

  def split_data(split: str) -> SplitData:
    return SplitData(len(labels[split]), lambda: zip(iter(images[split]), labels[split].tolist()))

  if mean is None and images["train"].size:
    # The arrays are in memory already: one vectorised pass, in chunks to bound memory.
    stats = StatsAccumulator(images["train"].shape[-1])
    for chunk in np.array_split(images["train"], max(1, len(images["train"]) // 4096)):
      stats.add(chunk)
    mean, std = stats.result()
    stats_source = f"train split, {len(images['train'])} images"
  return write_images(
    name,
    data_dir,
    {"train": split_data("train"), "test": split_data("test")},
    image_shape=images["train"].shape[1:],
    image_dtype=images["train"].dtype,
    class_names=class_names,
    num_classes=num_classes,
    mean=mean,
    std=std,
    stats_source=stats_source,
    description=f"Prepared from {os.path.abspath(npz_path)}.",
    overwrite=overwrite,
  )
