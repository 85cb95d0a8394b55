"""Image datasets: ``.npz`` arrays -> TFDS, and the image-writing path shared with folders.

Images are stored as a ``tfds.features.Tensor`` of one fixed shape ``[H, W, C]`` (uint8, or
float32 for float arrays; raw bytes). ``tfds.features.Image`` would PNG-encode them with
TensorFlow; raw tensors need no codec to read. Labels are a ``tfds.features.ClassLabel``.
The train split's per-channel pixel mean/std (raw units) are stored in the dataset's
metadata (``metadata.json``) next to ``pixel_max``, ``stats_source`` and ``prepared_by``.

The pixel range (``pixel_max``, the top of the range that colour augmentation clips to)
is taken from the data of an ``.npz``:

- integer arrays (any integer dtype) must hold values in 0..255 and are stored as uint8,
  ``pixel_max = 255``;
- float arrays must be finite and non-negative; they are stored as float32 with
  ``pixel_max = 1`` when every value is at most 1, else ``pixel_max = 255`` (values up to
  255). Larger values (e.g. 16-bit data as floats) and negative values (normalised data)
  are refused: store raw intensities in [0, 1] or 0..255, the loader normalises them.
  Both splits must use one scale.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from typing import TypedDict, Unpack

import numpy as np

from deinforeg_jax.data.loader import StatsAccumulator, validate_labels
from deinforeg_jax.data.prepare.builder import (
  LocalDataset,
  Prepared,
  SplitData,
  check_classes,
  check_splits,
  write_dataset,
)

_CHUNK = 4096  # images per vectorised pass over in-memory arrays (bounds temporary memory)
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class WriteOptions(TypedDict, total=False):
  """The keywords every image ``prepare_*`` passes on to ``write_images`` unchanged."""

  mean: Sequence[float] | None
  std: Sequence[float] | None
  stats_units: str
  stats_source: str
  overwrite: bool


@dataclasses.dataclass(frozen=True)
class PreparedImages(Prepared):
  """``Prepared`` plus the image shape ``[H, W, C]`` and pixel mean/std ``[C]`` (raw units)."""

  image_shape: tuple[int, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]


def check_stats(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
  """Refuses mean/std that are not one finite number per channel, or a std that is not > 0."""
  if len(mean) != channels or len(std) != channels:
    raise ValueError(
      f"mean/std (--mean/--std) need one value per channel ({channels}), got mean "
      f"{list(mean)} and std {list(std)}"
    )
  for what, values in (("mean", mean), ("std", std)):
    for channel, value in enumerate(values):
      if not np.isfinite(float(value)) or (what == "std" and float(value) <= 0):
        need = "a finite number > 0" if what == "std" else "a finite number"
        raise ValueError(
          f"{what} (--{what}) of channel {channel} is {float(value)}; it must be {need}"
        )


def write_images(
  name: str,
  data_dir: str,
  splits: dict[str, SplitData],
  *,
  image_shape: tuple[int, ...],
  image_dtype=np.uint8,
  pixel_max: float | None = None,
  class_names: Sequence[str] | None = None,
  num_classes: int | None = None,
  mean: Sequence[float] | None = None,
  std: Sequence[float] | None = None,
  stats_units: str = "raw",
  stats_source: str = "given",
  description: str = "",
  overwrite: bool = False,
) -> PreparedImages:
  """Writes ``splits`` (``(image [H, W, C], label)`` pairs) as ``<data_dir>/<name>/1.0.0``.

  ``pixel_max`` is 255 for uint8 images and must be given for other dtypes. ``mean``/``std``
  (one per channel, in raw pixel units, or in [0, 1] units scaled by ``pixel_max`` when
  ``stats_units="unit"``) are stored as given (described by ``stats_source``), else
  computed from the train split while it is written.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  image_shape, image_dtype = tuple(image_shape), np.dtype(image_dtype)
  if pixel_max is None:
    if image_dtype != np.uint8:
      raise ValueError(f"give pixel_max for {image_dtype} images (255 is assumed only for uint8)")
    pixel_max = 255.0
  if class_names:
    num_classes = len(class_names)
  if not num_classes:
    raise ValueError("give class_names or num_classes")
  if (mean is None) != (std is None):
    raise ValueError("give both mean and std, or neither")
  if stats_units not in ("raw", "unit"):
    raise ValueError(f"stats_units must be 'raw' or 'unit', got {stats_units!r}")
  channels = image_shape[-1]
  if mean is not None:
    check_stats(mean, std, channels)
    scale = pixel_max if stats_units == "unit" else 1.0
    mean, std = [float(m) * scale for m in mean], [float(s) * scale for s in std]

  stats = StatsAccumulator(channels)
  if mean is None and "train" in splits:
    train = splits["train"]

    def train_examples() -> Iterator[tuple[np.ndarray, int]]:
      for image, label in train.examples():
        stats.add(image)
        yield image, label

    splits = {**splits, "train": dataclasses.replace(train, examples=train_examples)}
    stats_source = f"train split, {train.num_examples} images"

  def metadata():
    values = (mean, std) if mean is not None else stats.result()
    return dict(
      mean=[float(m) for m in values[0]],
      std=[float(s) for s in values[1]],
      stats_source=stats_source,
      pixel_max=float(pixel_max),
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


def _first_image(mask: np.ndarray) -> int:
  """Index of the first image ``[N, ...]`` with a True element in ``mask``."""
  return int(np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))[0])


def pixel_range(images: np.ndarray, where: str) -> tuple[float, float]:
  """``(min, max)`` of ``images [N, ...]`` (``(0, 0)`` when empty), after refusing
  non-finite values and values outside [0, 255], each naming ``where[index]``."""
  low, high = np.inf, -np.inf
  for start in range(0, len(images), _CHUNK):
    chunk = images[start : start + _CHUNK]
    if np.issubdtype(chunk.dtype, np.floating):
      finite = np.isfinite(chunk)
      if not finite.all():
        raise ValueError(
          f"{where}[{start + _first_image(~finite)}] has NaN or Inf pixel values; "
          "replace or drop the images with non-finite values"
        )
    low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
  if low < 0:
    raise ValueError(
      f"{where}[{_first_image(images < 0)}] has a negative pixel value ({low:g}); store raw "
      "pixel intensities in [0, 1] or 0..255 (undo any normalisation: the loader "
      "normalises with the stored mean/std)"
    )
  if high > 255:
    raise ValueError(
      f"{where}[{_first_image(images > 255)}] has a pixel value above 255 ({high:g}); store "
      "images as integers 0..255 or floats in [0, 1] (e.g. divide 16-bit data by 65535)"
    )
  return (0.0, 0.0) if low > high else (low, high)


def _as_images(array: np.ndarray, where: str) -> tuple[np.ndarray, float]:
  """``([N, H, W, C] images, largest value)``: ``[N, H, W]`` -> ``[N, H, W, 1]``; integers
  0..255 -> uint8, floats -> float32 (after ``pixel_range``'s checks)."""
  if array.ndim == 3:
    array = array[..., None]
  if array.ndim != 4:
    raise ValueError(f"{where} must be [N, H, W] or [N, H, W, C], got shape {array.shape}")
  if not np.issubdtype(array.dtype, np.number):
    raise ValueError(f"{where} must hold numbers, got dtype {array.dtype}")
  if np.issubdtype(array.dtype, np.complexfloating):
    raise ValueError(f"{where} must hold real numbers, got dtype {array.dtype}")
  if array.dtype == np.uint8:
    return array, 255.0
  high = pixel_range(array, where)[1]
  if np.issubdtype(array.dtype, np.integer):
    return array.astype(np.uint8, copy=False), high
  return array.astype(np.float32, copy=False), high


def read_npz(npz_path: str) -> tuple[dict[str, np.ndarray], list[str] | None]:
  """``({x_train, y_train, x_test, y_test}, class_names or None)`` of an ``.npz`` archive.

  A missing file, a file that is not an ``.npz`` archive (e.g. a single ``.npy`` array),
  a missing key, or an unreadable (pickled, truncated) array is refused naming the file.
  """
  if not os.path.isfile(npz_path):
    raise FileNotFoundError(f"{npz_path}: no such file (the --npz archive to prepare)")
  save_hint = "write it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
  try:
    data = np.load(npz_path, allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
    raise ValueError(f"{npz_path} is not a readable .npz archive ({error}); {save_hint}") from error
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(
      f"{npz_path} holds a single array of shape {getattr(data, 'shape', '?')} (.npy format), "
      f"not an .npz archive of named arrays; {save_hint}"
    )
  with data:
    missing = set(NPZ_KEYS) - set(data.files)
    if missing:
      raise ValueError(
        f"{npz_path} lacks key(s) {sorted(missing)}; it needs x_train, y_train, x_test, "
        f"y_test (and optionally class_names), found {data.files}"
      )
    arrays = {}
    for key in (*NPZ_KEYS, "class_names"):
      if key not in data.files:
        continue
      try:
        arrays[key] = data[key]
      except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"{npz_path}: cannot read array {key!r} ({error})") from error
  class_names = arrays.pop("class_names", None)
  return arrays, None if class_names is None else [str(c) for c in class_names]


def prepare_npz(
  name: str,
  data_dir: str,
  npz_path: str,
  *,
  num_classes: int | None = None,
  allow_one_class: bool = False,
  **options: Unpack[WriteOptions],
) -> PreparedImages:
  """Prepares ``x_train, y_train, x_test, y_test`` (+ optional ``class_names``) arrays.

  Images are ``[N, H, W]`` (stored as ``[N, H, W, 1]``) or ``[N, H, W, C]``: integers
  0..255 (stored as uint8) or finite floats in [0, 1] or [0, 255] (stored as float32; the
  pixel range is inferred, see the module docstring). Labels ``[N]`` must be 0-based ids
  below ``num_classes`` (default: ``len(class_names)``, else the largest label + 1); the
  train labels need two classes or more unless ``allow_one_class``. ``options``
  (``mean``/``std``...): see ``write_images``.
  """
  arrays, class_names = read_npz(npz_path)
  images, highs = {}, {}
  for split in ("train", "test"):
    images[split], highs[split] = _as_images(arrays[f"x_{split}"], f"{npz_path}: x_{split}")
  labels = {s: np.asarray(arrays[f"y_{s}"]) for s in ("train", "test")}
  for split in ("train", "test"):
    if labels[split].shape != images[split].shape[:1]:
      raise ValueError(
        f"{npz_path}: y_{split} must be [N] with N = len(x_{split}) = {len(images[split])}, "
        f"got shape {labels[split].shape}"
      )
  if images["train"].shape[1:] != images["test"].shape[1:]:
    raise ValueError(
      f"{npz_path}: train and test images differ in shape: {images['train'].shape[1:]} vs "
      f"{images['test'].shape[1:]}"
    )
  splits = {
    split: SplitData(
      len(labels[split]),
      lambda split=split: zip(iter(images[split]), labels[split].tolist()),
      source=f"{npz_path} (x_{split}, y_{split})",
    )
    for split in ("train", "test")
  }
  check_splits(splits)
  if images["train"].dtype != images["test"].dtype:
    images = {s: x.astype(np.float32) for s, x in images.items()}
  pixel_max = 255.0
  if images["train"].dtype != np.uint8:
    pixel_max = _float_pixel_max(highs, npz_path)
  if class_names and num_classes and num_classes != len(class_names):
    raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
  if not num_classes:
    if class_names:
      num_classes = len(class_names)
    else:
      both = np.concatenate([labels["train"], labels["test"]])
      num_classes = int(both.max()) + 1 if np.issubdtype(both.dtype, np.integer) else 1
  for split in ("train", "test"):
    validate_labels(labels[split], num_classes, split_name=f"{npz_path}: y_{split}")
  check_classes(labels["train"], f"{npz_path} (y_train)", allow_one_class=allow_one_class)

  if options.get("mean") is None:
    # The arrays are in memory already: one vectorised pass, in chunks to bound memory.
    stats = StatsAccumulator(images["train"].shape[-1])
    for start in range(0, len(images["train"]), _CHUNK):
      stats.add(images["train"][start : start + _CHUNK])
    mean, std = stats.result()
    source = f"train split, {len(images['train'])} images"
    options.update(mean=mean, std=std, stats_units="raw", stats_source=source)
  return write_images(
    name,
    data_dir,
    splits,
    image_shape=images["train"].shape[1:],
    image_dtype=images["train"].dtype,
    pixel_max=pixel_max,
    class_names=class_names,
    num_classes=num_classes,
    description=f"Prepared from {os.path.abspath(npz_path)}.",
    **options,
  )


def _float_pixel_max(highs: dict[str, float], npz_path: str) -> float:
  """1.0 when the largest value of every split (``highs``) is at most 1, else 255.0; the
  splits must agree (one in (0, 1] and another reaching past 1 is refused)."""
  if max(highs.values()) <= 1.0:
    return 1.0
  unit = [split for split, high in highs.items() if 0.0 < high <= 1.0]
  if unit:
    other = next(split for split in highs if split not in unit)
    raise ValueError(
      f"{npz_path}: x_{unit[0]} holds values in [0, 1] but x_{other} reaches "
      f"{highs[other]:g}; both splits must use one pixel scale ([0, 1] or 0..255)"
    )
  return 255.0
