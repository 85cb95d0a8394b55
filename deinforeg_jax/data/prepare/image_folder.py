"""Image folders (``<root>/{train,test}/<class>/*``) -> TFDS, decoded with Pillow.

Any format Pillow reads is accepted (PNG, JPEG, BMP, GIF, WebP...). A file Pillow cannot
open or decode (unknown format, truncated, corrupt compressed data) raises ``ValueError``
naming the file. Images are stored as uint8, ``pixel_max = 255``.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from deinforeg_jax.data.prepare.builder import SplitData, check_classes
from deinforeg_jax.data.prepare.images import PreparedImages, write_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GREY_BANDS = frozenset({"1", "L", "I", "F", "A"})  # Pillow band names without colour


@contextlib.contextmanager
def open_image(path: str):
  """``PIL.Image.open(path)``; any read or decode error becomes ``ValueError`` naming ``path``."""
  from PIL import Image  # pylint: disable=import-outside-toplevel

  try:
    with Image.open(path) as image:
      yield image
  except (
    OSError,  # includes PIL.UnidentifiedImageError and "image file is truncated"
    EOFError,
    SyntaxError,
    ValueError,
    struct.error,
    zlib.error,  # corrupt compressed PNG data
    Image.DecompressionBombError,
  ) as error:
    raise ValueError(f"cannot read image {path}: {error}") from error


def image_shape(path: str) -> tuple[int, int, int]:
  """``(height, width, channels)`` from the file header: channels 1 (grey) or 3 (colour).

  Alpha is not counted; palette images count as colour.
  """
  with open_image(path) as image:
    width, height = image.size
    return height, width, 1 if set(image.getbands()) <= _GREY_BANDS else 3


def read_image(path: str, channels: int) -> np.ndarray:
  """The image at ``path`` as uint8 ``[H, W, channels]`` (``channels`` 1 or 3).

  Alpha is dropped; grey -> RGB repeats the grey value, RGB -> grey uses Pillow's
  ITU-R 601-2 luma. 16-bit grey is scaled to 8 bits (``round(v * 255 / 65535)``).
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  with open_image(path) as image:
    if image.mode.startswith("I"):  # 16/32-bit integer grey
      wide = np.asarray(image, np.float64)
      image = Image.fromarray(np.clip(np.round(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8))
    pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
  return pixels.reshape(*pixels.shape[:2], channels)


def _list_split(root: str, split: str) -> dict[str, list[str]]:
  """``{class folder name: sorted image paths}`` of ``root/split``."""
  folder = os.path.join(root, split)
  if not os.path.isdir(folder):
    raise ValueError(f"{folder} is not a folder; expected {root}/{{train,test}}/<class>/*")
  classes = {}
  for entry in sorted(os.listdir(folder)):
    path = os.path.join(folder, entry)
    if os.path.isdir(path):
      classes[entry] = sorted(
        os.path.join(path, f)
        for f in os.listdir(path)
        if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")
      )
  if not classes:
    raise ValueError(f"{folder} has no class sub-folders; expected {folder}/<class>/*.png")
  return classes


def prepare_image_folder(
  name: str,
  data_dir: str,
  folder: str,
  *,
  mean: Sequence[float] | None = None,
  std: Sequence[float] | None = None,
  stats_units: str = "raw",
  stats_source: str = "given",
  allow_one_class: bool = False,
  overwrite: bool = False,
) -> PreparedImages:
  """Prepares ``folder/train/<class>/*`` and ``folder/test/<class>/*`` images.

  Class ids are the sorted class folder names of ``train``; every class folder of
  ``test`` must also exist in ``train``. Records are ordered by class, then file name.
  All images must have the same height and width. Images are RGB when any image has
  colour, else greyscale; alpha is dropped. Both splits need images, and the train split
  two classes or more unless ``allow_one_class``. ``mean``/``std``: see ``write_images``.
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
  for split in ("train", "test"):
    if not files[split]:
      raise ValueError(
        f"{folder}/{split}: the {split} split is empty: no {'/'.join(IMAGE_SUFFIXES)} files "
        f"in its class folders {sorted(listing[split])}"
      )
  check_classes(
    [label for _, label in files["train"]], f"{folder}/train", allow_one_class=allow_one_class
  )
  sizes, channels = {}, 1
  for split in ("train", "test"):
    for path, _ in files[split]:
      height, width, colours = image_shape(path)
      sizes.setdefault((height, width), path)
      channels = max(channels, colours)
  if len(sizes) > 1:
    shown = ", ".join(f"{hw} (e.g. {p})" for hw, p in list(sizes.items())[:3])
    raise ValueError(
      f"images under {folder} differ in size (height, width): {shown}; resize them to "
      "one size first"
    )
  ((height, width),) = sizes

  def split_data(split: str) -> SplitData:
    def examples() -> Iterator[tuple[np.ndarray, int]]:
      for path, label in files[split]:
        yield read_image(path, channels), label

    return SplitData(len(files[split]), examples, source=f"{folder}/{split}")

  return write_images(
    name,
    data_dir,
    {"train": split_data("train"), "test": split_data("test")},
    image_shape=(height, width, channels),
    image_dtype=np.uint8,
    class_names=class_names,
    mean=mean,
    std=std,
    stats_units=stats_units,
    stats_source=stats_source,
    description=f"Prepared from the image folder {os.path.abspath(folder)}.",
    overwrite=overwrite,
  )
