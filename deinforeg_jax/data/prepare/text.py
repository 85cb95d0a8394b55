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
from collections.abc import Sequence

from deinforeg_jax.data.prepare.builder import LocalDataset, Prepared, SplitData, write_dataset


def read_jsonl(
  path: str, text_field: str = "text", label_field: str = "label"
) -> tuple[list[str], list[int]]:
  """``(texts [N], labels [N])`` of a (gzipped) JSON Lines file; blank lines are skipped.

  A bad record raises ``ValueError`` naming ``path:line``.
  """
  opener = gzip.open if path.endswith(".gz") else open
  texts, labels = [], []
  with opener(path, "rt", encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number}: not a JSON object ({error})") from error
      if text_field not in record or label_field not in record:
        raise ValueError(
          f"{path}:{number}: a record needs the fields {text_field!r} and {label_field!r}, "
          f"found {sorted(record)}"
        )
      label = record[label_field]
      if not isinstance(label, int) or isinstance(label, bool) or label < 0:
        raise ValueError(f"{path}:{number}: label {label!r} must be a 0-based integer class id")
      texts.append(str(record[text_field]))
      labels.append(label)
  return texts, labels


def prepare_jsonl(
  name: str,
  data_dir: str,
  train_path: str,
  test_path: str,
  *,
  num_classes: int | None = None,
  class_names: Sequence[str] | None = None,
  overwrite: bool = False,
) -> Prepared:
  """Prepares ``train_path``/``test_path`` as the text dataset ``<data_dir>/<name>/1.0.0``.

  ``num_classes`` defaults to ``len(class_names)``, else the largest label + 1.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  records = {"train": read_jsonl(train_path), "test": read_jsonl(test_path)}
  largest = max(max(labels, default=-1) for _, labels in records.values())
  if class_names:
    num_classes = num_classes or len(class_names)
    if num_classes != len(class_names):
      raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
  num_classes = num_classes or largest + 1
  if largest >= num_classes:
    raise ValueError(
      f"label {largest} is outside [0, {num_classes}); give --num_classes > {largest} "
      "or remap the labels to 0-based class ids"
    )
  if not records["train"][0]:
    raise ValueError(f"{train_path} has no records")
  dataset = LocalDataset(
    name=name,
    input_key="text",
    input_feature=tfds.features.Text(),
    num_classes=num_classes,
    class_names=class_names,
    splits={
      split: SplitData(len(labels), lambda texts=texts, labels=labels: zip(texts, labels))
      for split, (texts, labels) in records.items()
    },
    description=(
      f"Prepared from {os.path.abspath(train_path)} (train) and "
      f"{os.path.abspath(test_path)} (test)."
    ),
  )
  return write_dataset(dataset, data_dir, overwrite=overwrite)
