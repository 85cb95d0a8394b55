"""Tiny-ImageNet-200 (the ``tiny-imagenet-200/`` folder) -> TFDS; ``val`` becomes ``test``.

The standard layout, as the archive unpacks::

  wnids.txt                   one WordNet id a line: the classes, in label order
  train/<wnid>/images/*.JPEG  the training images (``<wnid>_boxes.txt`` is not read)
  val/images/*.JPEG           the validation images
  val/val_annotations.txt     one ``file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1`` line an image

``test/`` (unlabelled) and ``words.txt`` are not read. Label ``i`` is the ``i``-th wnid of
``wnids.txt`` and the class names are the wnids. Train records are ordered by label, then
file name; test records as ``val_annotations.txt`` lists them. The images are 64x64, a few
of them grey (stored as RGB like the rest); the thesis trains on them resized to 32x32
(``resize=32``). A layout that does not match is refused naming the file and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Unpack

from deinforeg_jax.data.prepare.image_folder import IMAGE_SUFFIXES, write_image_files
from deinforeg_jax.data.prepare.images import PreparedImages, WriteOptions

LAYOUT = (
  "wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt"
)


def _lines(path: str, what: str) -> list[str]:
  """The lines of the UTF-8 text file ``path`` (``what`` it should hold, for errors)."""
  if not os.path.isfile(path):
    raise ValueError(
      f"{path}: no such file ({what}); pass the tiny-imagenet-200 folder itself, which "
      f"holds {LAYOUT}"
    )
  try:
    with open(path, encoding="utf-8") as file:
      return file.read().splitlines()
  except UnicodeDecodeError as error:
    raise ValueError(f"{path} is not UTF-8 text ({what}): {error}") from error


def _image_names(folder: str) -> list[str]:
  """Sorted names of the image files in ``folder`` (hidden files skipped)."""
  return sorted(
    n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")
  )


def read_wnids(root: str) -> list[str]:
  """The class wnids of ``root/wnids.txt`` in file order (blank lines skipped)."""
  if not os.path.isdir(root):
    raise ValueError(f"{root} is not a folder; expected the tiny-imagenet-200 folder ({LAYOUT})")
  path = os.path.join(root, "wnids.txt")
  wnids, line_of = [], {}
  for number, line in enumerate(_lines(path, "the class ids, one a line"), 1):
    wnid = line.strip()
    if not wnid:
      continue
    if wnid in line_of:
      raise ValueError(
        f"{path}:{number}: {wnid} is listed again (first on line {line_of[wnid]}); list each "
        "class once"
      )
    line_of[wnid] = number
    wnids.append(wnid)
  if not wnids:
    raise ValueError(f"{path} lists no classes; it needs one wnid (e.g. n01443537) a line")
  return wnids


def list_train(root: str, wnids: Sequence[str]) -> list[tuple[str, int]]:
  """``[(path, label)]`` of ``root/train/<wnid>/images/*``, by label, then file name."""
  train = os.path.join(root, "train")
  if not os.path.isdir(train):
    raise ValueError(f"{train} is not a folder; expected {train}/<wnid>/images/*.JPEG")
  unlisted = sorted(
    set(n for n in os.listdir(train) if os.path.isdir(os.path.join(train, n))) - set(wnids)
  )
  if unlisted:
    raise ValueError(
      f"{train} has class folder(s) {unlisted[:5]} ({len(unlisted)} in all) that "
      f"{root}/wnids.txt does not list; add them to wnids.txt or remove them"
    )
  files = []
  for label, wnid in enumerate(wnids):
    folder = os.path.join(train, wnid, "images")
    if not os.path.isdir(folder):
      raise ValueError(
        f"{folder} is not a folder, but {root}/wnids.txt lists {wnid}; restore its training "
        f"images or remove {wnid} from wnids.txt"
      )
    names = _image_names(folder)
    if not names:
      raise ValueError(f"{folder} has no images; class {wnid} needs its training .JPEG files")
    files += [(os.path.join(folder, name), label) for name in names]
  return files


def list_val(root: str, wnids: Sequence[str]) -> list[tuple[str, int]]:
  """``[(path, label)]`` of ``root/val/images/*``, labelled and ordered by
  ``val_annotations.txt``; every image needs exactly one line and every line its image."""
  images = os.path.join(root, "val", "images")
  if not os.path.isdir(images):
    raise ValueError(f"{images} is not a folder; expected the validation images in it")
  annotations = os.path.join(root, "val", "val_annotations.txt")
  lines = _lines(annotations, "the validation labels, 'file<TAB>wnid<TAB>box' a line")
  label_of = {wnid: label for label, wnid in enumerate(wnids)}
  present = set(os.listdir(images))
  files, line_of = [], {}
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    where = f"{annotations}:{number}"
    name, wnid = (line.split("\t") + ["", ""])[:2]
    if not name or not wnid:
      raise ValueError(
        f"{where}: expected 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1', got {line!r}"
      )
    if wnid not in label_of:
      raise ValueError(f"{where}: the class {wnid} of {name} is not in {root}/wnids.txt")
    if name in line_of:
      raise ValueError(f"{where}: {name} is annotated again (first on line {line_of[name]})")
    if name not in present:
      raise ValueError(f"{where}: {name} is not in {images}; restore it or delete the line")
    line_of[name] = number
    files.append((os.path.join(images, name), label_of[wnid]))
  unlabelled = [name for name in _image_names(images) if name not in line_of]
  if unlabelled:
    raise ValueError(
      f"{os.path.join(images, unlabelled[0])} ({len(unlabelled)} image(s) in all) has no "
      f"line in {annotations}; add its label there or remove the image"
    )
  if not files:
    raise ValueError(f"{annotations} lists no images; the test split needs the val labels")
  return files


def prepare_tiny_imagenet(
  name: str,
  data_dir: str,
  root: str,
  *,
  resize: int | None = None,
  allow_one_class: bool = False,
  **options: Unpack[WriteOptions],
) -> PreparedImages:
  """Prepares the ``tiny-imagenet-200`` folder ``root``: train -> ``train``, val -> ``test``.

  Images are uint8 ``[64, 64, 3]`` as distributed, or ``[resize, resize, 3]`` (Pillow's
  bilinear filter, as torchvision's ``Resize``). ``allow_one_class``, ``options``: see
  ``write_image_files``.
  """
  wnids = read_wnids(root)
  files = {"train": list_train(root, wnids), "test": list_val(root, wnids)}
  size = f", resized to {resize}x{resize}" if resize is not None else ""
  return write_image_files(
    name,
    data_dir,
    files,
    class_names=wnids,
    sources={"train": os.path.join(root, "train"), "test": os.path.join(root, "val")},
    description=f"Tiny-ImageNet-200 from {os.path.abspath(root)}{size}; test = its val split.",
    resize=resize,
    allow_one_class=allow_one_class,
    **options,
  )
