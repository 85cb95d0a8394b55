"""Image folders (``<root>/{train,test}/<class>/*``) -> TFDS, decoded with Pillow.

Any format Pillow reads is accepted (PNG, JPEG, BMP, GIF, WebP...). A file Pillow cannot
open or decode (unknown format, truncated, corrupt compressed data) raises ``ValueError``
naming the file. Images are stored as uint8, ``pixel_max = 255``, optionally resized to
``resize x resize``. ``write_image_files`` is the writing path of every layout of image
files (this one and ``tiny_imagenet``).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Unpack

import numpy as np

from deinforeg_jax.data.prepare.builder import SplitData, check_classes
from deinforeg_jax.data.prepare.images import PreparedImages, WriteOptions, write_images

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


def read_image(path: str, channels: int, size: int | None = None) -> np.ndarray:
  """The image at ``path`` as uint8 ``[H, W, channels]`` (``channels`` 1 or 3), or
  ``[size, size, channels]`` when ``size`` is given.

  Alpha is dropped; grey -> RGB repeats the grey value, RGB -> grey uses Pillow's
  ITU-R 601-2 luma. 16-bit grey is scaled to 8 bits (``round(v * 255 / 65535)``).
  Resizing (after the conversion) is Pillow's bilinear filter, antialiased when it
  shrinks: what torchvision's ``Resize`` does to a Pillow image.
  """
  from PIL import Image  # pylint: disable=import-outside-toplevel

  with open_image(path) as image:
    if image.mode.startswith("I"):  # 16/32-bit integer grey
      wide = np.asarray(image, np.float64)
      image = Image.fromarray(np.clip(np.round(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None:
      image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
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


def write_image_files(
  name: str,
  data_dir: str,
  files: Mapping[str, Sequence[tuple[str, int]]],
  *,
  class_names: Sequence[str],
  sources: Mapping[str, str],
  description: str,
  resize: int | None = None,
  allow_one_class: bool = False,
  **options: Unpack[WriteOptions],
) -> PreparedImages:
  """Writes labelled image files ``{split: [(path, label), ...]}``, records in list order.

  ``sources`` names each split's folder for error messages. Images are RGB when any image
  has colour, else greyscale; alpha is dropped. Without ``resize`` every image must have
  the same height and width; with it each becomes ``[resize, resize]`` (``read_image``).
  The train split needs two classes or more unless ``allow_one_class``. ``options``
  (``mean``/``std``...): see ``write_images``.
  """
  if resize is not None and resize < 1:
    raise ValueError(f"resize (--resize) must be a positive number of pixels, got {resize}")
  check_classes(
    [label for _, label in files["train"]], sources["train"], allow_one_class=allow_one_class
  )
  sizes, channels = {}, 1
  for split_files in files.values():
    for path, _ in split_files:
      height, width, colours = image_shape(path)
      sizes.setdefault((height, width), path)
      channels = max(channels, colours)
  if resize is None and len(sizes) > 1:
    shown = ", ".join(f"{hw} (e.g. {p})" for hw, p in list(sizes.items())[:3])
    raise ValueError(
      f"images under {', '.join(sources.values())} differ in size (height, width): {shown}; "
      "resize them to one size first (--resize=N makes every image N x N)"
    )
  height, width = next(iter(sizes)) if resize is None else (resize, resize)

  def split_data(split: str) -> SplitData:
    def examples() -> Iterator[tuple[np.ndarray, int]]:
      for path, label in files[split]:
        yield read_image(path, channels, resize), label

    return SplitData(len(files[split]), examples, source=sources[split])

  return write_images(
    name,
    data_dir,
    {split: split_data(split) for split in files},
    image_shape=(height, width, channels),
    image_dtype=np.uint8,
    class_names=class_names,
    description=description,
    **options,
  )


def prepare_image_folder(
  name: str,
  data_dir: str,
  folder: str,
  *,
  resize: int | None = None,
  allow_one_class: bool = False,
  **options: Unpack[WriteOptions],
) -> PreparedImages:
  """Prepares ``folder/train/<class>/*`` and ``folder/test/<class>/*`` images.

  Class ids are the sorted class folder names of ``train``, each of which needs an image;
  every class folder of ``test`` must also exist in ``train``. Records are ordered by class,
  then file name. Both splits need images. ``resize``, ``allow_one_class``, ``options``: see
  ``write_image_files``.
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
  empty = [cls for cls in class_names if not listing["train"][cls]]
  if empty and files["train"]:
    raise ValueError(
      f"{folder}/train: class folder(s) {empty} hold no {'/'.join(IMAGE_SUFFIXES)} files, so "
      "those classes would have no train example: add images, or remove the empty folders"
    )
  for split in ("train", "test"):
    if not files[split]:
      raise ValueError(
        f"{folder}/{split}: the {split} split is empty: no {'/'.join(IMAGE_SUFFIXES)} files "
        f"in its class folders {sorted(listing[split])}"
      )
  return write_image_files(
    name,
    data_dir,
    files,
    class_names=class_names,
    sources={split: f"{folder}/{split}" for split in files},
    description=f"Prepared from the image folder {os.path.abspath(folder)}.",
    resize=resize,
    allow_one_class=allow_one_class,
    **options,
  )
