"""Turns local text files (JSON Lines with ``text`` and ``label``) into a TFDS dataset.

The dataset is written by a ``tfds.core.GeneratorBasedBuilder`` in the array_record
format under ``<data_dir>/<name>/1.0.0`` with the features ``text``
(``tfds.features.Text``) and ``label`` (``tfds.features.ClassLabel``), the same
features as TFDS's ``imdb_reviews``; it is read back by name like any prepared
TFDS dataset.  Files may be gzip-compressed (``.gz``).  The raw text is stored:
normalisation and token ids are computed at load time (``data.text``).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import types
from collections.abc import Sequence

from deinforeg_jax.data.tfds_prepare import (
  VERSION,
  check_name,
  class_label,
  dataset_directory,
  write_array_record,
)


@dataclasses.dataclass(frozen=True)
class PreparedText:
  """What ``prepare_jsonl`` wrote."""

  name: str
  data_dir: str
  dataset_dir: str
  num_classes: int
  num_examples: dict[str, int]
  seconds: float


def read_jsonl(path: str, text_field: str = "text", label_field: str = "label"):
  """``(texts, labels)`` of a (gzipped) JSON Lines file; clear errors for bad records."""
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


def _make_builder(name, num_classes, class_names, splits, description):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  def body(ns):
    ns["name"] = name
    ns["VERSION"] = tfds.core.Version(VERSION)
    ns["RELEASE_NOTES"] = {VERSION: "Prepared by launch.prepare_data."}

    def _info(self):
      label = class_label(class_names, num_classes)
      return tfds.core.DatasetInfo(
        builder=self,
        description=description,
        features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "label": label}),
        supervised_keys=("text", "label"),
        disable_shuffling=True,  # keep the file order: record i = line i
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split):
      texts, labels = splits[split]
      for index, (text, label) in enumerate(zip(texts, labels)):
        yield index, {"text": text, "label": int(label)}

    ns["_info"] = _info
    ns["_split_generators"] = _split_generators
    ns["_generate_examples"] = _generate_examples

  return types.new_class(
    "LocalTextDataset", (tfds.core.GeneratorBasedBuilder,), {"skip_registration": True}, body
  )


def prepare_jsonl(
  name: str,
  data_dir: str,
  train_path: str,
  test_path: str,
  *,
  num_classes: int | None = None,
  class_names: Sequence[str] | None = None,
  overwrite: bool = False,
) -> PreparedText:
  """Prepares ``train_path``/``test_path`` (records ``{"text": str, "label": int}``).

  ``num_classes`` defaults to ``len(class_names)``, else the largest label + 1.
  """

  check_name(name)
  splits = {"train": read_jsonl(train_path), "test": read_jsonl(test_path)}
  largest = max(max(labels, default=-1) for _, labels in splits.values())
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
  if not splits["train"][0]:
    raise ValueError(f"{train_path} has no records")
  data_dir, dataset_dir = dataset_directory(data_dir, name, overwrite)
  description = (
    f"Prepared from {os.path.abspath(train_path)} (train) and {os.path.abspath(test_path)} (test)."
  )
  builder = _make_builder(name, num_classes, class_names, splits, description)(data_dir=data_dir)
  seconds = write_array_record(builder, name)
  return PreparedText(
    name=name,
    data_dir=data_dir,
    dataset_dir=dataset_dir,
    num_classes=num_classes,
    num_examples={split: len(labels) for split, (_, labels) in splits.items()},
    seconds=seconds,
  )
