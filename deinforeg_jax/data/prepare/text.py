"""Text datasets: JSON Lines files (``{"text": str, "label": int}``) -> TFDS.

The features are ``text`` (``tfds.features.Text``) and ``label``
(``tfds.features.ClassLabel``), as in TFDS's ``imdb_reviews``. Files may be
gzip-compressed (``.gz``). The raw text is stored: normalisation and token ids are
computed at load time (``deinforeg_jax.data.text``). A train and a test file are
prepared as they are (``prepare_jsonl``); a single file is split into both, stratified
by label and seeded (``prepare_jsonl_split``).
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

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


_Records = tuple[list[str], list[int], list[int]]  # texts, labels, line numbers


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

  ``num_classes`` defaults to ``len(class_names)``, else the number of train classes: the
  labels must then be ``0..K-1`` with every id in the train file and every test label
  among them (as an image folder's classes are its train folders). Both files need
  records, and the train file two classes or more unless ``allow_one_class``.
  """
  paths = {"train": train_path, "test": test_path}
  records = {split: _read_records(path, "text", "label") for split, path in paths.items()}
  return _write_text(
    name,
    data_dir,
    records,
    paths,
    description=(
      f"Prepared from {os.path.abspath(train_path)} (train) and "
      f"{os.path.abspath(test_path)} (test)."
    ),
    metadata={},
    num_classes=num_classes,
    class_names=class_names,
    allow_one_class=allow_one_class,
    overwrite=overwrite,
  )


def stratified_split(
  labels: Sequence[int], test_fraction: float, seed: int, source: str = ""
) -> tuple[np.ndarray, np.ndarray]:
  """``(train indices, test indices)`` of ``labels``, each in increasing order.

  For every class (in label order) a permutation of its indices, drawn from one
  ``numpy.random.default_rng(seed)``, puts its first ``round(test_fraction * n_c)``
  (halves up) in the test split. The split depends only on the labels (their order
  included), ``test_fraction`` and ``seed``. A fraction outside (0, 1), a negative seed
  or a class that would be missing from one split raises ``ValueError`` naming the flag
  (and ``source``, the file).
  """
  if not 0 < test_fraction < 1:
    raise ValueError(f"--test_fraction={test_fraction} must be in (0, 1) (exclusive)")
  if seed < 0:
    raise ValueError(f"--split_seed={seed} must be a non-negative integer")
  labels = np.asarray(labels)
  rng = np.random.default_rng(seed)
  test = []
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    num_test = int(np.floor(test_fraction * len(members) + 0.5))
    if not 0 < num_test < len(members):
      missing = "test" if num_test == 0 else "train"
      raise ValueError(
        f"{source}: class {label} has {len(members)} record(s); --test_fraction="
        f"{test_fraction} leaves none of them in the {missing} split, and every class must "
        f"be in both splits; change --test_fraction or add records of class {label}"
      )
    test.append(rng.permutation(members)[:num_test])
  test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
  return np.setdiff1d(np.arange(len(labels)), test), test


def prepare_jsonl_split(
  name: str,
  data_dir: str,
  path: str,
  *,
  test_fraction: float,
  split_seed: int = 0,
  num_classes: int | None = None,
  class_names: Sequence[str] | None = None,
  allow_one_class: bool = False,
  overwrite: bool = False,
) -> Prepared:
  """Prepares one JSON Lines file, split into train and test, as ``<data_dir>/<name>/1.0.0``.

  The split is ``stratified_split(labels, test_fraction, split_seed)``: every class is in
  both splits in the same proportion, and both keep the file's order. It is recorded in
  the dataset's description and metadata (``split_source``, ``test_fraction``,
  ``split_seed``). A seeded split of the whole file is used rather than a split field in
  it: such fields in local files (e.g. ``source_split`` of the DBpedia-14 subset in
  ``../shared/data``, the ``test`` and ``val`` halves of a re-sampled source) are not
  official splits either, and would fix the test share (there 50%). Fields other than
  ``text`` and ``label`` are ignored. Other arguments are as for ``prepare_jsonl``.
  """
  texts, labels, numbers = _read_records(path, "text", "label")
  if not labels:
    raise ValueError(f"{path}: the file is empty (no records); nothing to split")
  train, test = stratified_split(labels, test_fraction, split_seed, source=path)
  records = {
    split: ([texts[i] for i in index], [labels[i] for i in index], [numbers[i] for i in index])
    for split, index in (("train", train), ("test", test))
  }
  return _write_text(
    name,
    data_dir,
    records,
    {"train": path, "test": path},
    description=(
      f"Prepared from {os.path.abspath(path)}, split stratified by label: test fraction "
      f"{test_fraction} of each class, seed {split_seed}."
    ),
    metadata={
      "split_source": os.path.abspath(path),
      "test_fraction": test_fraction,
      "split_seed": split_seed,
    },
    num_classes=num_classes,
    class_names=class_names,
    allow_one_class=allow_one_class,
    overwrite=overwrite,
  )


def _check_contiguous(records: dict[str, _Records], paths: dict[str, str]) -> None:
  """Without a class count, the labels must be the ids ``0..K-1`` of the classes in the train
  split, as an image folder's classes are its train class folders: a missing id (label 99
  with no 2..98 would make 100 classes, 97 of them empty) or a test-only class is refused."""
  _, train_labels, _ = records["train"]
  present = set(train_labels)
  missing = sorted(set(range(max(present) + 1)) - present)
  if missing:
    high = max(present)
    line = records["train"][2][train_labels.index(high)]
    shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
    raise ValueError(
      f"{paths['train']}:{line}: label {high} makes {high + 1} classes, but {len(missing)} of "
      f"the ids below it have no train record ({shown}): labels must be the 0-based ids "
      "0..K-1 of the classes present. Remap the labels, or give --num_classes (num_classes) "
      "if those classes exist without records"
    )
  for split, (_, labels, numbers) in records.items():
    index = next((i for i, label in enumerate(labels) if label not in present), None)
    if split != "train" and index is not None:
      raise ValueError(
        f"{paths[split]}:{numbers[index]}: label {labels[index]} has no record in the train "
        f"split ({paths['train']}), whose classes are {sorted(present)}; every {split} class "
        "must be in train. Remap the labels, or give --num_classes (num_classes)"
      )


def _write_text(
  name: str,
  data_dir: str,
  records: dict[str, _Records],
  paths: dict[str, str],
  *,
  description: str,
  metadata: dict,
  num_classes: int | None,
  class_names: Sequence[str] | None,
  allow_one_class: bool,
  overwrite: bool,
) -> Prepared:
  """Checks the ``train``/``test`` records (read from ``paths``) and writes them."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  for split, (_, labels, _) in records.items():
    if not labels:
      raise ValueError(f"{paths[split]}: the {split} split is empty (no records)")
  if class_names:
    num_classes = num_classes or len(class_names)
    if num_classes != len(class_names):
      raise ValueError(f"num_classes={num_classes} but {len(class_names)} class_names")
  check_classes(records["train"][1], paths["train"], allow_one_class=allow_one_class)
  if not num_classes:
    _check_contiguous(records, paths)
  num_classes = num_classes or max(max(labels) for _, labels, _ in records.values()) + 1
  for split, (_, labels, numbers) in records.items():
    index = next((i for i, label in enumerate(labels) if label >= num_classes), None)
    if index is not None:
      raise ValueError(
        f"{paths[split]}:{numbers[index]}: label {labels[index]} is outside "
        f"[0, {num_classes}); give --num_classes > {max(labels)} or remap the labels to "
        "0-based class ids"
      )
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
    description=description,
    metadata=(lambda: metadata) if metadata else None,
  )
  return write_dataset(dataset, data_dir, overwrite=overwrite)
