"""Text datasets: JSON Lines files (``{"text": str, "label": int}``) -> TFDS.

The features are ``text`` (``tfds.features.Text``) and ``label``
(``tfds.features.ClassLabel``), as in TFDS's ``imdb_reviews``. Files may be
gzip-compressed (``.gz``). The raw text is stored: normalisation and token ids are
computed at load time (``deinforeg_jax.data.text``).
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator, Sequence

from deinforeg_jax.data.prepare.builder import (
  LocalDataset,
  Prepared,
  SplitData,
  check_classes,
  write_dataset,
)


def _lines(path: str) -> Iterator[tuple[int, str]]:
  """``(line number, text)`` of a (gzipped) UTF-8 file; a byte that is not UTF-8, a
  truncated or corrupt ``.gz``, or a missing file raises an error naming ``path`` (and
  the line)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (a JSON Lines file to prepare)")
  opener = gzip.open if path.endswith(".gz") else open
  number = 0
  with opener(path, "rb") as f:
    try:
      for number, raw in enumerate(f, 1):
        try:
          yield number, raw.decode("utf-8")
        except UnicodeDecodeError as error:
          raise ValueError(
            f"{path}:{number}: not UTF-8 text (byte {raw[error.start]:#04x} at column "
            f"{error.start + 1}); re-encode the file as UTF-8"
          ) from error
    except (EOFError, OSError, zlib.error) as error:  # gzip: truncated, bad header or data
      raise ValueError(
        f"{path}: truncated or corrupt gzip data after line {number} ({error}); "
        "compress the file again"
      ) from error


def _read_records(
  path: str, text_field: str, label_field: str
) -> tuple[list[str], list[int], list[int]]:
  """``(texts, labels, line numbers)`` of the records of a (gzipped) JSON Lines file."""
  texts, labels, numbers = [], [], []
  for number, line in _lines(path):
    if not line.strip():
      continue
    where = f"{path}:{number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise ValueError(f"{where}: not a JSON object ({error})") from error
    if not isinstance(record, dict):
      raise ValueError(
        f"{where}: expected a JSON object like {{{text_field!r}: ..., {label_field!r}: 0}}, "
        f"got {type(record).__name__} {line.strip()[:40]}"
      )
    if text_field not in record or label_field not in record:
      raise ValueError(
        f"{where}: a record needs the fields {text_field!r} and {label_field!r}, "
        f"found {sorted(record)}"
      )
    value, label = record[text_field], record[label_field]
    if not isinstance(value, str):
      shown = "null" if value is None else f"{type(value).__name__} {json.dumps(value)[:40]}"
      raise ValueError(f"{where}: field {text_field!r} must be a string, got {shown}")
    try:
      value.encode("utf-8")
    except UnicodeEncodeError as error:  # e.g. an unpaired "\ud800" escape
      raise ValueError(
        f"{where}: field {text_field!r} is not valid Unicode ({error.reason} at character "
        f"{error.start})"
      ) from error
    if not isinstance(label, int) or isinstance(label, bool) or label < 0:
      raise ValueError(f"{where}: label {label!r} must be a 0-based integer class id")
    texts.append(value)
    labels.append(label)
    numbers.append(number)
  return texts, labels, numbers


def read_jsonl(
  path: str, text_field: str = "text", label_field: str = "label"
) -> tuple[list[str], list[int]]:
  """``(texts [N], labels [N])`` of a (gzipped) JSON Lines file; blank lines are skipped.

  A bad record (not an object, a missing field, a text that is not a string, e.g.
  ``null``, a label that is not a 0-based integer), a byte that is not UTF-8 or a
  truncated ``.gz`` raises ``ValueError`` naming ``path:line``.
  """
  texts, labels, _ = _read_records(path, text_field, label_field)
  return texts, labels


def prepare_jsonl(
  name: str,
  data_dir: str,
  train_path: str,
  test_path: str,
  *,
  num_classes: int | None = None,
  class_names: Sequence[str] | None = None,
  allow_one_class: bool = False,
  overwrite: bool = False,
) -> Prepared:
  """Prepares ``train_path``/``test_path`` as the text dataset ``<data_dir>/<name>/1.0.0``.

  ``num_classes`` defaults to ``len(class_names)``, else the largest label + 1. Both
  files need records, and the train file two classes or more unless ``allow_one_class``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  paths = {"train": train_path, "test": test_path}
  records = {split: _read_records(path, "text", "label") for split, path in paths.items()}
  for split, (_, labels, _) in records.items():
    if not labels:
      raise ValueError(f"{paths[split]}: the {split} split is empty (no records)")
  if class_names:
    num_classes = num_classes or len(class_names)
    if num_classes != len(class_names):
      raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
  num_classes = num_classes or max(max(labels) for _, labels, _ in records.values()) + 1
  for split, (_, labels, numbers) in records.items():
    index = next((i for i, label in enumerate(labels) if label >= num_classes), None)
    if index is not None:
      raise ValueError(
        f"{paths[split]}:{numbers[index]}: label {labels[index]} is outside "
        f"[0, {num_classes}); give --num_classes > {max(labels)} or remap the labels to "
        "0-based class ids"
      )
  check_classes(records["train"][1], train_path, allow_one_class=allow_one_class)
  dataset = LocalDataset(
    name=name,
    input_key="text",
    input_feature=tfds.features.Text(),
    num_classes=num_classes,
    class_names=class_names,
    splits={
      split: SplitData(
        len(labels), lambda texts=texts, labels=labels: zip(texts, labels), source=paths[split]
      )
      for split, (texts, labels, _) in records.items()
    },
    description=(
      f"Prepared from {os.path.abspath(train_path)} (train) and "
      f"{os.path.abspath(test_path)} (test)."
    ),
  )
  return write_dataset(dataset, data_dir, overwrite=overwrite)
