"""Turns local image data (an ``.npz`` or an image folder) into a real TFDS dataset.

The dataset is written by a ``tfds.core.GeneratorBasedBuilder`` in the array_record
format, so it is read back like any prepared TFDS dataset, by name, with
``tfds.data_source(name, data_dir=data_dir, download=False)``: TFDS finds it from the
files in ``data_dir`` alone (``<data_dir>/<name>/1.0.0/``), no builder class needed.

Images are stored as a ``tfds.features.Tensor`` of fixed shape ``[H, W, C]`` (uint8,
raw bytes). ``tfds.features.Image`` would PNG-encode them, which TFDS does with
TensorFlow, and decoding them needs OpenCV or Pillow; raw tensors need neither.
Labels are a ``tfds.features.ClassLabel``. The train split's per-channel pixel
mean/std (raw units) are stored in the dataset's metadata (``metadata.json``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import time
import types
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from deinforeg_jax.data import png
from deinforeg_jax.data.loader import validate_labels

VERSION = "1.0.0"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class SplitData:
  """One split to write: ``num_examples`` and a factory of ``(image [H, W, C], label)``."""

  num_examples: int
  examples: Callable[[], Iterator[tuple[np.ndarray, int]]]


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What ``prepare_*`` wrote: where, and the summary it printed."""

  name: str
  data_dir: str
  dataset_dir: str
  image_shape: tuple[int, ...]
  num_classes: int
  num_examples: dict[str, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  seconds: float


class _StatsAccumulator:
  """Per-channel mean/std of every train image, accumulated in float64."""

  def __init__(self, channels: int):
    self.count = 0
    self.total = np.zeros(channels)
    self.total_sq = np.zeros(channels)

  def add(self, images: np.ndarray) -> None:
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
    self.count += flat.shape[0]
    self.total += flat.sum(0)
    self.total_sq += np.square(flat).sum(0)

  def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = self.total / max(self.count, 1)
    var = np.maximum(self.total_sq / max(self.count, 1) - np.square(mean), 0.0)
    std = np.sqrt(var)
    return tuple(float(m) for m in mean), tuple(float(s) if s > 0 else 1.0 for s in std)


def check_name(name: str) -> None:
  """Rejects names TFDS cannot use, and names of TFDS catalogue datasets.

  A catalogue name (``cifar10``, ``mnist``...) would resolve to TFDS's own builder
  class and version, not to the files written here.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  if not _NAME_RE.match(name):
    raise ValueError(
      f"dataset name {name!r} must be snake_case: a lower-case letter, then lower-case "
      "letters, digits or '_'"
    )
  if name in tfds.list_builders(with_community_datasets=False):
    raise ValueError(
      f"{name!r} is the name of a TFDS catalogue dataset, which TFDS would read with its "
      f"own builder; choose another name for local data, e.g. {name + '_local'!r}"
    )


def class_label(class_names: Sequence[str] | None, num_classes: int):
  """The ``tfds.features.ClassLabel`` for ``class_names`` if given, else ``num_classes``."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  if class_names:
    return tfds.features.ClassLabel(names=list(class_names))
  return tfds.features.ClassLabel(num_classes=num_classes)


def dataset_directory(data_dir: str, name: str, overwrite: bool) -> tuple[str, str]:
  """``(absolute data_dir, <data_dir>/<name>/1.0.0)``; an existing dataset is removed only
  when ``overwrite``, else ``FileExistsError``."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  dataset_dir = os.path.join(data_dir, name, VERSION)
  if os.path.exists(dataset_dir):
    if not overwrite:
      raise FileExistsError(
        f"{dataset_dir} already exists; delete it or pass --overwrite to replace it"
      )
    shutil.rmtree(dataset_dir)
  return data_dir, dataset_dir


def write_array_record(builder, name: str) -> float:
  """Runs ``builder.download_and_prepare`` as array_record (no network); returns seconds."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix=f"{name}_downloads_") as downloads:
    builder.download_and_prepare(
      file_format="array_record",
      download_dir=downloads,
      download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
  return time.perf_counter() - start


def _make_builder(
  name: str,
  image_shape: tuple[int, ...],
  image_dtype: np.dtype,
  class_names: Sequence[str] | None,
  num_classes: int,
  splits: dict[str, SplitData],
  description: str,
  fixed_stats: tuple[Sequence[float], Sequence[float]] | None,
  stats_source: str,
):
  """A ``GeneratorBasedBuilder`` subclass named ``name`` (not registered with TFDS)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  stats = _StatsAccumulator(image_shape[-1])

  def body(ns):
    ns["name"] = name
    ns["VERSION"] = tfds.core.Version(VERSION)
    ns["RELEASE_NOTES"] = {VERSION: "Prepared by launch.prepare_data."}

    def _info(self):
      label = class_label(class_names, num_classes)
      features = tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(
            shape=image_shape,
            dtype=image_dtype,
            encoding=tfds.features.Encoding.BYTES,
          ),
          "label": label,
        }
      )
      return tfds.core.DatasetInfo(
        builder=self,
        description=description,
        features=features,
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # keep the source order: record i = example i
        metadata=tfds.core.MetadataDict(),
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split):
      count = 0
      for index, (image, label) in enumerate(splits[split].examples()):
        if not 0 <= int(label) < num_classes:
          raise ValueError(
            f"{split} example {index}: label {label} is outside [0, {num_classes}); "
            "labels must be 0-based class ids"
          )
        if split == "train" and fixed_stats is None:
          stats.add(image)
        count += 1
        yield index, {"image": image, "label": int(label)}
      if split == "train":
        mean, std = fixed_stats if fixed_stats else stats.result()
        # Saved with dataset_info.json once every split is written.
        self.info.metadata.update(
          mean=[float(m) for m in mean],
          std=[float(s) for s in std],
          stats_source=stats_source if fixed_stats else f"train split, {count} images",
          pixel_max=255.0 if image_dtype == np.uint8 else 1.0,
          prepared_by="deinforeg_jax launch.prepare_data",
        )

    ns["_info"] = _info
    ns["_split_generators"] = _split_generators
    ns["_generate_examples"] = _generate_examples

  return types.new_class(
    "LocalImageDataset",
    (tfds.core.GeneratorBasedBuilder,),
    {"skip_registration": True},
    body,
  )


def prepare_splits(
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
) -> Prepared:
  """Writes ``splits`` as the array_record TFDS dataset ``<data_dir>/<name>/1.0.0``.

  ``mean``/``std`` (raw pixel units) are stored as given (described by
  ``stats_source``), else computed from the train split while it is written. An
  existing dataset is replaced only when ``overwrite``.
  """

  check_name(name)
  if "train" not in splits:
    raise ValueError(f"a 'train' split is required, got splits {sorted(splits)}")
  if class_names:
    num_classes = len(class_names)
  if not num_classes:
    raise ValueError("give class_names or num_classes")
  if (mean is None) != (std is None):
    raise ValueError("give both mean and std, or neither")
  if mean is not None and (len(mean) != image_shape[-1] or len(std) != image_shape[-1]):
    raise ValueError(f"mean/std need one value per channel ({image_shape[-1]}), got {mean} / {std}")
  data_dir, dataset_dir = dataset_directory(data_dir, name, overwrite)
  builder_cls = _make_builder(
    name,
    tuple(image_shape),
    np.dtype(image_dtype),
    class_names,
    num_classes,
    splits,
    description,
    None if mean is None else (tuple(mean), tuple(std)),
    stats_source,
  )
  builder = builder_cls(data_dir=data_dir)
  seconds = write_array_record(builder, name)
  metadata = builder.info.metadata
  return Prepared(
    name=name,
    data_dir=data_dir,
    dataset_dir=dataset_dir,
    image_shape=tuple(image_shape),
    num_classes=num_classes,
    num_examples={split: s.num_examples for split, s in splits.items()},
    mean=tuple(metadata["mean"]),
    std=tuple(metadata["std"]),
    seconds=seconds,
  )


# --- npz ------------------------------------------------------------------------------


def _as_images(array: np.ndarray, key: str) -> np.ndarray:
  if array.ndim == 3:  # [N, H, W] greyscale
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
) -> Prepared:
  """Prepares ``x_train, y_train, x_test, y_test`` (+ optional ``class_names``) arrays.

  Images are ``[N, H, W]`` (stored as ``[N, H, W, 1]``) or ``[N, H, W, C]``, uint8
  (or numbers, stored as float32). Labels must be 0-based ids below ``num_classes``
  (default: ``len(class_names)``, else the largest label + 1).
  """
  with np.load(npz_path, allow_pickle=False) as data:
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(data.files)
    if missing:
      raise ValueError(
        f"{npz_path} lacks key(s) {sorted(missing)}; it needs x_train, y_train, x_test, "
        f"y_test (and optionally class_names), found {data.files}"
      )
    arrays = {key: data[key] for key in ("x_train", "y_train", "x_test", "y_test")}
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

  def examples(split):
    def generate():
      x, y = images[split], labels[split]
      return zip(iter(x), y.tolist())

    return SplitData(len(labels[split]), generate)

  if mean is None and images["train"].size:
    stats = _StatsAccumulator(images["train"].shape[-1])
    for chunk in np.array_split(images["train"], max(1, len(images["train"]) // 4096)):
      stats.add(chunk)
    mean, std = stats.result()
    stats_source = f"train split, {len(images['train'])} images"
  return prepare_splits(
    name,
    data_dir,
    {"train": examples("train"), "test": examples("test")},
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


# --- image folder ---------------------------------------------------------------------


def _list_split(root: str, split: str) -> dict[str, list[str]]:
  folder = os.path.join(root, split)
  if not os.path.isdir(folder):
    raise ValueError(f"{folder} is not a folder; expected {root}/{{train,test}}/<class>/*")
  classes = {}
  for entry in sorted(os.listdir(folder)):
    path = os.path.join(folder, entry)
    if os.path.isdir(path):
      files = sorted(
        os.path.join(path, f)
        for f in os.listdir(path)
        if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")
      )
      classes[entry] = files
  if not classes:
    raise ValueError(f"{folder} has no class sub-folders; expected {folder}/<class>/*.png")
  return classes


def _read_image(path: str, channels: int | None = None) -> np.ndarray:
  with open(path, "rb") as f:
    data = f.read()
  try:
    image = png.decode_image(data)
  except (ValueError, ImportError) as error:
    raise ValueError(f"cannot read image {path}: {error}") from error
  if image.dtype != np.uint8:  # 16-bit PNG
    image = (image.astype(np.float64) * (255.0 / 65535.0)).round().astype(np.uint8)
  if channels is not None:
    image = _to_channels(image, channels)
  return image


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """Drops alpha and converts grey <-> RGB so that the image has ``channels`` channels."""
  if image.shape[-1] in (2, 4):  # grey + alpha, RGBA
    image = image[..., :-1]
  if image.shape[-1] == channels:
    return image
  if channels == 3:  # grey -> RGB
    return np.repeat(image, 3, axis=-1)
  weights = np.asarray([0.299, 0.587, 0.114])  # RGB -> grey (ITU-R 601-2 luma)
  return np.clip((image @ weights).round(), 0, 255).astype(np.uint8)[..., None]


def _header_shape(path: str) -> tuple[int, int, int]:
  with open(path, "rb") as f:
    head = f.read(64)
  if head.startswith(png.PNG_SIGNATURE):
    h, w, c = png.png_header(head)
    return h, w, 1 if c in (1, 2) else 3
  h, w, c = _read_image(path).shape
  return h, w, 1 if c in (1, 2) else 3


def prepare_image_folder(
  name: str,
  data_dir: str,
  folder: str,
  *,
  mean: Sequence[float] | None = None,
  std: Sequence[float] | None = None,
  stats_source: str = "given",
  overwrite: bool = False,
) -> Prepared:
  """Prepares ``folder/train/<class>/*`` and ``folder/test/<class>/*`` images.

  Class ids are the sorted class folder names of ``train``; every class folder of
  ``test`` must also exist in ``train``. All images must have the same height and
  width. Images are RGB when any image has colour, else greyscale; alpha is
  dropped. PNG is read without extra packages; JPEG and other formats need Pillow
  or OpenCV.
  """
  listing = {split: _list_split(folder, split) for split in ("train", "test")}
  class_names = sorted(listing["train"])
  unknown = sorted(set(listing["test"]) - set(class_names))
  if unknown:
    raise ValueError(
      f"{folder}/test has class folder(s) {unknown} that {folder}/train lacks; train's "
      f"classes are {class_names}"
    )
  files = {
    split: [
      (path, class_names.index(cls))
      for cls in sorted(listing[split])
      for path in listing[split][cls]
    ]
    for split in ("train", "test")
  }
  if not files["train"]:
    raise ValueError(f"no images found under {folder}/train/<class>/")
  sizes, channels = {}, 1
  for split in ("train", "test"):
    for path, _ in files[split]:
      height, width, colours = _header_shape(path)
      sizes.setdefault((height, width), path)
      channels = max(channels, colours)
  if len(sizes) > 1:
    shown = ", ".join(f"{hw} (e.g. {p})" for hw, p in list(sizes.items())[:3])
    raise ValueError(
      f"images under {folder} differ in size (height, width): {shown}; resize them to "
      "one size first"
    )
  ((height, width),) = sizes

  def examples(split):
    def generate():
      for path, label in files[split]:
        yield _read_image(path, channels), label

    return SplitData(len(files[split]), generate)

  return prepare_splits(
    name,
    data_dir,
    {"train": examples("train"), "test": examples("test")},
    image_shape=(height, width, channels),
    image_dtype=np.uint8,
    class_names=class_names,
    mean=mean,
    std=std,
    stats_source=stats_source,
    description=f"Prepared from the image folder {os.path.abspath(folder)}.",
    overwrite=overwrite,
  )
