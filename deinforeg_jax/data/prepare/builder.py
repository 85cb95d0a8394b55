"""The one TFDS builder that writes local image and text datasets as array_record.

A ``LocalDataset`` names one input feature (``image`` or ``text``) next to a
``ClassLabel`` ``label``; ``write_dataset`` turns it into a
``tfds.core.GeneratorBasedBuilder`` (not registered with TFDS) and runs
``download_and_prepare`` offline. The result, ``<data_dir>/<name>/1.0.0/``, is read back
by name with ``tfds.data_source(name, data_dir=data_dir, download=False)``: TFDS finds it
from the files alone, no builder class needed. Records keep the source order
(``disable_shuffling``): record ``i`` of a split is example ``i``.

A dataset is never lost to a failed run: it is written into a temporary folder in
``data_dir`` (``.<name>.incomplete-*``) and renamed into place only once every split is
written; with ``overwrite`` the old version is moved aside, the new one renamed in, and
only then is the old one deleted. Any error leaves the previous dataset as it was.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

DATASET_VERSION = "1.0.0"
PREPARED_BY = "deinforeg_jax launch.prepare_data"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class SplitData:
  """One split: ``num_examples`` and a factory of ``(input, label)`` pairs in order.

  ``source`` names where the split comes from (a file or folder), for error messages.
  """

  num_examples: int
  examples: Callable[[], Iterator[tuple[Any, int]]]
  source: str = ""


@dataclasses.dataclass(frozen=True)
class LocalDataset:
  """What to write: features ``{input_key: input_feature, "label": ClassLabel}``.

  ``metadata`` (optional) is called after each split is written; what it returns is
  stored in ``metadata.json`` (e.g. pixel statistics gathered while ``train`` is written).
  """

  name: str
  input_key: str
  input_feature: Any  # a tfds.features.FeatureConnector
  num_classes: int
  class_names: Sequence[str] | None
  splits: Mapping[str, SplitData]
  description: str
  metadata: Callable[[], dict[str, Any]] | None = None


@dataclasses.dataclass(frozen=True)
class Prepared:
  """What ``write_dataset`` wrote: where, how many examples, seconds, stored metadata."""

  name: str
  data_dir: str
  dataset_dir: str
  num_classes: int
  num_examples: dict[str, int]
  seconds: float
  metadata: dict[str, Any]


def check_name(name: str) -> None:
  """Rejects names TFDS cannot use, and names of TFDS catalogue datasets.

  A catalogue name (``cifar10``, ``mnist``...) would resolve to TFDS's own builder class
  and version, not to the files written here.
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


def dataset_directory(data_dir: str, name: str, overwrite: bool) -> tuple[str, str]:
  """``(absolute data_dir, <data_dir>/<name>/1.0.0)``; an existing dataset is an error
  (``FileExistsError``) unless ``overwrite``. Nothing is deleted here."""
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  dataset_dir = os.path.join(data_dir, name, DATASET_VERSION)
  if os.path.exists(dataset_dir) and not overwrite:
    raise FileExistsError(
      f"{dataset_dir} already exists; delete it or pass --overwrite to replace it"
    )
  return data_dir, dataset_dir


def _prefix(source: str) -> str:
  return f"{source}: " if source else ""


def check_splits(splits: Mapping[str, SplitData]) -> None:
  """Refuses an empty split, naming its source (TFDS would fail with a bare assertion)."""
  for split, data in splits.items():
    if data.num_examples == 0:
      raise ValueError(
        f"{_prefix(data.source)}the {split} split is empty (0 examples); every split needs "
        "at least one example"
      )


def check_classes(labels: Sequence[int], source: str, *, allow_one_class: bool = False) -> None:
  """Refuses train labels with fewer than two distinct classes, unless ``allow_one_class``.

  A classifier trained on one class reaches accuracy 1.0 and learns nothing; this is
  almost always a labelling mistake (a wrong column, a filter that kept one class).
  """
  classes = sorted({int(label) for label in labels})
  if len(classes) < 2 and not allow_one_class:
    raise ValueError(
      f"{source}: the train split has only one class (label {classes[0] if classes else None}"
      f" on all {len(labels)} examples); a classifier learns nothing from it. Check the "
      "labels, or pass --allow_one_class (allow_one_class=True) if this is intended"
    )


def _swap_in(new_dir: str, dataset_dir: str, trash: str) -> None:
  """Renames ``new_dir`` to ``dataset_dir``; an existing ``dataset_dir`` is first renamed
  to ``trash`` (and renamed back if the swap fails). Renames in one folder are atomic."""
  old = None
  if os.path.exists(dataset_dir):
    os.rename(dataset_dir, trash)
    old = trash
  try:
    os.makedirs(os.path.dirname(dataset_dir), exist_ok=True)
    os.rename(new_dir, dataset_dir)
  except BaseException:
    if old is not None and not os.path.exists(dataset_dir):
      os.rename(old, dataset_dir)
    raise


def _builder_class(dataset: LocalDataset):
  """A ``GeneratorBasedBuilder`` subclass named ``dataset.name`` that writes ``dataset``."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  dataset_name = dataset.name

  class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes the splits of ``dataset``; never registered, so names never clash."""

    name = dataset_name
    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Prepared by launch.prepare_data."}

    def _info(self):
      if dataset.class_names:
        label = tfds.features.ClassLabel(names=list(dataset.class_names))
      else:
        label = tfds.features.ClassLabel(num_classes=dataset.num_classes)
      return tfds.core.DatasetInfo(
        builder=self,
        description=dataset.description,
        features=tfds.features.FeaturesDict(
          {dataset.input_key: dataset.input_feature, "label": label}
        ),
        supervised_keys=(dataset.input_key, "label"),
        disable_shuffling=True,  # keep the source order: record i = example i
        metadata=tfds.core.MetadataDict(prepared_by=PREPARED_BY),
      )

    def _split_generators(self, dl_manager):
      del dl_manager  # everything is local
      return {split: self._generate_examples(split) for split in dataset.splits}

    def _generate_examples(self, split):
      data = dataset.splits[split]
      where = _prefix(data.source)
      for index, (value, label) in enumerate(data.examples()):
        if not 0 <= int(label) < dataset.num_classes:
          raise ValueError(
            f"{where}{split} example {index}: label {label} is outside "
            f"[0, {dataset.num_classes}); labels must be 0-based class ids"
          )
        yield index, {dataset.input_key: value, "label": int(label)}
      if dataset.metadata is not None:
        # Saved with dataset_info.json once every split is written.
        self.info.metadata.update(dataset.metadata())

  return LocalBuilder


def write_dataset(dataset: LocalDataset, data_dir: str, *, overwrite: bool = False) -> Prepared:
  """Writes ``dataset`` as the array_record TFDS dataset ``<data_dir>/<name>/1.0.0``.

  Needs a ``train`` split; no split may be empty. No network is used. An existing
  dataset is replaced only when ``overwrite``, and only once the new one is complete.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  check_name(dataset.name)
  if "train" not in dataset.splits:
    raise ValueError(f"a 'train' split is required, got splits {sorted(dataset.splits)}")
  check_splits(dataset.splits)
  data_dir, dataset_dir = dataset_directory(data_dir, dataset.name, overwrite)
  os.makedirs(data_dir, exist_ok=True)
  # Written next to the target (same file system, so the final rename is atomic).
  staging = tempfile.mkdtemp(prefix=f".{dataset.name}.incomplete-", dir=data_dir)
  try:
    builder = _builder_class(dataset)(data_dir=staging)
    start = time.perf_counter()
    downloads = os.path.join(staging, "downloads")
    builder.download_and_prepare(
      file_format="array_record",
      download_dir=downloads,
      download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    dataset_directory(data_dir, dataset.name, overwrite)  # written meanwhile by another run?
    _swap_in(
      os.path.join(staging, dataset.name, DATASET_VERSION),
      dataset_dir,
      os.path.join(staging, "replaced"),
    )
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return Prepared(
    name=dataset.name,
    data_dir=data_dir,
    dataset_dir=dataset_dir,
    num_classes=dataset.num_classes,
    num_examples={split: s.num_examples for split, s in dataset.splits.items()},
    seconds=time.perf_counter() - start,
    metadata=dict(builder.info.metadata),
  )
