"""The inputs ``launch.predict`` classifies, read from a file or folder (``read_input``).

* an image folder: every image file under it, sorted by path, read with Pillow as grey or RGB
  to the run's channel count; sizes must match; ids are the relative paths;
* an ``.npz`` with key ``x`` or ``images`` (raw pixels ``[N, H, W, C]`` / ``[N, H, W]``); ids
  are the array indices;
* JSON Lines (``.jsonl``/``.jsonl.gz``) for a text run: one ``{"text": ..., "id": ...}``
  object or one JSON string per line; ids are the lines' ``id`` (else their index).

The raw inputs then go through the run's own preprocessing (``TrainedModel.predict``).  Every
problem is one ``InputError`` naming ``--input``.
"""

from __future__ import annotations

import gzip
import json
import os
import zipfile

import numpy as np

from deinforeg_jax.data.prepare.image_folder import read_image
from deinforeg_jax.trained.preprocessing import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def read_image_folder(root: str, channels: int) -> tuple[list[str], np.ndarray]:
  """``(relative paths, uint8 images [N, H, W, channels])`` of every image under ``root``."""
  paths = sorted(
    os.path.join(d, f)
    for d, _, files in os.walk(root)
    for f in files
    if f.lower().endswith(IMAGE_EXTENSIONS)
  )
  if not paths:
    raise InputError(f"--input={root}: no image files ({', '.join(IMAGE_EXTENSIONS)}) under it.")
  images = [read_image(p, channels) for p in paths]
  shapes = {im.shape for im in images}
  if len(shapes) > 1:
    first = images[0].shape
    odd = next(p for p, im in zip(paths, images) if im.shape != first)
    raise InputError(
      f"--input={root}: images differ in size ({paths[0]} is {first[0]}x{first[1]}, {odd} is "
      f"{images[paths.index(odd)].shape[0]}x{images[paths.index(odd)].shape[1]}); resize them "
      "to the model's input size."
    )
  return [os.path.relpath(p, root) for p in paths], np.stack(images)


def read_npz(path: str) -> tuple[list[str], np.ndarray]:
  """``(indices, images)`` of an ``.npz`` holding ``x`` or ``images``."""
  try:
    with np.load(path, allow_pickle=False) as data:
      key = next((k for k in ("x", "images") if k in data.files), None)
      images = None if key is None else data[key]
  except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:  # truncated, not a zip
    raise InputError(f"--input={path} is not a readable .npz archive ({error}).") from None
  if key is None:
    raise InputError(f"--input={path} has no array 'x' or 'images' (found {data.files}).")
  if images.ndim == 0:
    raise InputError(f"--input={path}: {key!r} is one number, not images [N, H, W, C].")
  return [str(i) for i in range(len(images))], images


def read_jsonl(path: str) -> tuple[list[str], list[str]]:
  """``(ids, texts)`` of JSON Lines: ``{"text": ..., "id": ...}`` objects or JSON strings."""
  ids, texts = [], []
  try:
    with (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
      lines = f.readlines()
  except (EOFError, UnicodeDecodeError) as error:  # a truncated .gz, not UTF-8
    raise InputError(f"--input={path} is not readable UTF-8 JSON Lines ({error}).") from None
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise InputError(f"--input={path} line {number} is not JSON ({error}).") from None
    if isinstance(record, dict) and isinstance(record.get("text"), str):
      ids.append(str(record.get("id", len(ids))))
      texts.append(record["text"])
    elif isinstance(record, str):
      ids.append(str(len(ids)))
      texts.append(record)
    else:
      raise InputError(
        f'--input={path} line {number}: expected {{"text": "...", "id": ...}} or a JSON string.'
      )
  return ids, texts


def read_input(path: str, trained) -> tuple[list[str], object]:
  """``(ids, raw inputs)`` of ``--input`` for ``trained``'s kind of model."""
  kind = trained.kind
  is_text = path.endswith((".jsonl", ".jsonl.gz", ".json"))
  if not os.path.exists(path):
    raise InputError(f"--input={path}: no such file or folder.")
  if (kind == "text") != is_text:
    wanted = "a .jsonl file of texts" if kind == "text" else "an image folder or an .npz file"
    raise InputError(f"--input={path}: this {kind} model reads {wanted}.")
  if is_text:
    ids, inputs = read_jsonl(path)
  elif os.path.isdir(path):
    ids, inputs = read_image_folder(path, trained.preprocessing.input_shape[-1])
  elif path.endswith(".npz"):
    ids, inputs = read_npz(path)
  else:
    raise InputError(f"--input={path}: expected a folder, an .npz or a .jsonl file.")
  if not ids:
    raise InputError(f"--input={path} holds no inputs: give at least one to classify.")
  return ids, inputs
