"""Prepared TFDS image-classification datasets as random-access sources, without TensorFlow.

A dataset is read from its array_record files in ``data_dir`` with
``tfds.builder(name, data_dir=...)`` + ``builder.as_data_source(split)`` (what
``tfds.data_source(name, data_dir=..., download=False)`` does). Nothing is downloaded
unless ``download=True``; a dataset that is not prepared raises ``DatasetNotPreparedError``
at once, saying how to prepare it. With ``download=True`` a short connection probe to
the download host comes first, so that a machine without network fails in seconds
(``DownloadUnavailableError``) instead of TFDS retrying DNS for minutes.

A dataset folder is data, never code: TFDS builds a dataset's features from the Python class
names in its JSON files and imports the module of a name it does not know, so before TFDS
reads a dataset every class name there must be one of ``tensorflow_datasets``' own feature
classes (``check_feature_classes``; anything else is ``UntrustedDatasetError``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from deinforeg_jax.data.loader import DatasetInfo, StatsAccumulator

# The reference code's normalisation constants (vision/setting.py), in [0, 1] units
# (scaled to the stored pixel range).
REFERENCE_STATS = {
  "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
  "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
STATS_SAMPLE = 4096  # images read to compute mean/std of a dataset without stored stats
_LABEL_CHUNK = 4096


# Where TFDS looks first for prepared catalogue datasets (and hosts many raw files):
# reachable means the network is up. With HTTPS_PROXY set, the proxy is probed instead.
# DEINFOREG_DOWNLOAD_PROBE=host:port overrides both, DEINFOREG_DOWNLOAD_PROBE=off skips
# the probe (e.g. a builder that needs no network).
DOWNLOAD_PROBE = ("storage.googleapis.com", 443)
DOWNLOAD_PROBE_TIMEOUT_S = 5.0


class DatasetNotPreparedError(FileNotFoundError):
  """The dataset is not prepared (as array_record) in the data directory."""


class DownloadUnavailableError(ConnectionError):
  """``download=True`` was asked for, but the download host cannot be reached."""


class UntrustedDatasetError(DatasetNotPreparedError):
  """A dataset file names a feature class that is not one of ``tensorflow_datasets``' own
  (TFDS would import, i.e. run, its module), or a dataset whose builder is fetched code.
  The message is one line naming the file and the class."""


# The files of a prepared dataset where TFDS looks feature classes up by their Python name
# (``FeatureConnector.cls_from_name``, which imports the module of a name not registered yet):
# ``features.json`` and the ``features`` of ``dataset_info.json`` (tensorflow_datasets 4.9.10).
# Its other files (split sizes, label names, metadata.json) are read as plain data.
FEATURE_FILES = ("features.json", "dataset_info.json")
_CLASS_NAME_KEYS = ("pythonClassName", "python_class_name")  # the proto JSON's two spellings


class _JsonObject(list):
  """A JSON object as its ``(key, value)`` pairs, duplicate keys included (TFDS keeps the
  last one; every one is checked)."""


def _parse_json(text: str):
  return json.loads(text, object_pairs_hook=_JsonObject)


def _feature_class_names(value) -> Iterator:
  """Every feature class name in a parsed JSON value, at any depth: ``pythonClassName`` (the
  proto form), and ``type`` beside ``content`` (the legacy form); also inside strings that
  hold JSON, which TFDS parses too (a ``jsonFeature``'s ``json``, a legacy ``content``)."""
  if isinstance(value, _JsonObject):
    keys = {key for key, _ in value}
    for key, item in value:
      if key in _CLASS_NAME_KEYS or (key == "type" and "content" in keys):
        yield item
      yield from _feature_class_names(item)
  elif isinstance(value, list):
    for item in value:
      yield from _feature_class_names(item)
  elif isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
    try:
      parsed = _parse_json(value)
    except ValueError:  # not JSON: TFDS fails on it before looking any class up
      return
    yield from _feature_class_names(parsed)


def _is_tfds_feature_class(class_name) -> bool:
  """Whether TFDS knows ``class_name`` as one of its own feature classes, so that looking it
  up imports nothing.  (``_registered_features`` is private: should it go, nothing passes.)"""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  known = getattr(tfds.features.FeatureConnector, "_registered_features", {})
  feature_class = known.get(class_name) if isinstance(class_name, str) else None
  return feature_class is not None and feature_class.__module__.startswith("tensorflow_datasets.")


def check_feature_classes(name: str, data_dir: str) -> None:
  """Refuses the dataset TFDS would read for ``name`` in ``data_dir`` when one of its
  ``FEATURE_FILES`` names a feature class that is not ``tensorflow_datasets``' own.

  The folder checked is the one ``tfds.builder`` reads: TFDS's own lookup
  (``read_only_builder._find_builder_dir``, tensorflow_datasets 4.9.10) picks it.

  Raises:
    UntrustedDatasetError: naming the file and the class (or the file, when it is not JSON).
  """
  # pylint: disable=import-outside-toplevel,protected-access
  from tensorflow_datasets.core import read_only_builder, registered
  from tensorflow_datasets.core.utils import error_utils

  with error_utils.reraise_with_context(registered.DatasetNotFoundError):  # its notes go there
    builder_dir = read_only_builder._find_builder_dir(name, data_dir=data_dir)
  # pylint: enable=import-outside-toplevel,protected-access
  if builder_dir is None:  # no dataset files: TFDS reads none (catalogue code, or not found)
    return
  for file_name in FEATURE_FILES:
    path = os.path.join(os.fspath(builder_dir), file_name)
    if not os.path.lexists(path):
      continue
    try:
      with open(path, encoding="utf-8") as f:
        value = _parse_json(f.read())
    except (OSError, ValueError, RecursionError) as error:
      raise UntrustedDatasetError(
        f"{path} cannot be read as JSON ({type(error).__name__}: {error}); prepare the dataset "
        "again with launch.prepare_data"
      ) from None
    for class_name in _feature_class_names(value):
      if not _is_tfds_feature_class(class_name):
        raise UntrustedDatasetError(
          f"{path} names the feature class {class_name!r}, which is not one of "
          "tensorflow_datasets' own: reading the dataset would import (run) its module, so it "
          "is not read; prepare the dataset again with launch.prepare_data"
        )


def _check_not_community(name: str) -> None:
  """Refuses a ``namespace:name`` dataset: TFDS would fetch its builder (code) by name."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  namespace = tfds.core.naming.parse_builder_name_kwargs(name)[0].namespace
  if namespace:
    raise UntrustedDatasetError(
      f"config.data.name={name!r} names a dataset of the TFDS namespace {namespace!r}, whose "
      "builder is code fetched by name; only prepared datasets and TFDS's catalogue are read"
    )


def _probe_address() -> tuple[str, int] | None:
  """``DEINFOREG_DOWNLOAD_PROBE``, else the HTTPS proxy (downloads go through it when one
  is set), else ``DOWNLOAD_PROBE``; ``None``: do not probe."""
  setting = os.environ.get("DEINFOREG_DOWNLOAD_PROBE", "").strip()
  if not setting:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
      parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
      if parts.hostname:
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    return DOWNLOAD_PROBE
  if setting.lower() == "off":
    return None
  host, _, port = setting.rpartition(":")
  if not host or not port.isdigit():
    raise DatasetFormatError(f"DEINFOREG_DOWNLOAD_PROBE={setting!r} must be host:port or 'off'")
  return host, int(port)


def probe_network(address: tuple[str, int], timeout: float) -> str | None:
  """``None`` when a TCP connection to ``address`` opens within ``timeout`` seconds, else
  why not. Name resolution is bounded too: it runs in a daemon thread that is left
  behind (not waited for) when it is slow."""
  outcome: list[str | None] = []

  def connect():
    try:
      with socket.create_connection(address, timeout=timeout):
        outcome.append(None)
    except OSError as error:
      outcome.append(f"{type(error).__name__}: {error}")

  thread = threading.Thread(target=connect, name="deinforeg-download-probe", daemon=True)
  thread.start()
  thread.join(timeout)
  return outcome[0] if outcome else f"no answer within {timeout:g} s"


def check_download_possible(name: str, data_dir: str) -> None:
  """Raises ``DownloadUnavailableError`` when the download host cannot be reached."""
  address = _probe_address()
  if address is None:
    return
  problem = probe_network(address, DOWNLOAD_PROBE_TIMEOUT_S)
  if problem is None:
    return
  raise DownloadUnavailableError(
    f"config.data.download=True, but {address[0]}:{address[1]} cannot be reached "
    f"({problem}): no network? Nothing was downloaded for {name!r}; without a network, "
    "prepare the data locally with launch.prepare_data and train with "
    "config.data.download=False. (DEINFOREG_DOWNLOAD_PROBE=host:port probes another "
    "host, =off skips the probe.)\n" + _how_to_prepare(name, data_dir)
  )


def default_data_dir() -> str:
  """TFDS's default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  return os.fspath(tfds.core.constants.DATA_DIR)


def _is_catalogue(name: str) -> bool:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  return name in tfds.list_builders(with_community_datasets=False)


def _how_to_prepare(name: str, data_dir: str) -> str:
  catalogue = _is_catalogue(name)
  # A catalogue name belongs to TFDS's own builder: local copies get their own name.
  local = f"{name}_local" if catalogue else name
  lines = [
    "To prepare it:",
    "  * from local arrays or images (no network needed):",
    f"      python -m launch.prepare_data --name={local} --data_dir={data_dir} "
    "--npz=FILE.npz   (x_train, y_train, x_test, y_test)",
    f"      python -m launch.prepare_data --name={local} --data_dir={data_dir} "
    "--image_folder=DIR   (DIR/train/<class>/*.png, DIR/test/<class>/*.png)",
  ]
  if catalogue:
    lines.append(
      f"    then train with --config.data.name={local} --config.data.data_dir={data_dir}"
    )
  lines.append(
    "  * or, for a TFDS catalogue dataset on a machine with network access, let TFDS "
    "download and prepare it: --config.data.download=True (TFDS's own builders "
    "generally need TensorFlow installed to prepare, not to read)."
  )
  return "\n".join(lines)


def _not_prepared(name: str, data_dir: str, detail: str) -> DatasetNotPreparedError:
  return DatasetNotPreparedError(
    f"Dataset {name!r} is not prepared in data_dir={data_dir!r} ({detail}).\n"
    + _how_to_prepare(name, data_dir)
  )


def _unknown(name: str, data_dir: str, download: bool) -> Exception:
  """One line for a name that is neither prepared in ``data_dir`` nor in the TFDS catalogue."""
  import difflib  # pylint: disable=import-outside-toplevel

  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  known = list(tfds.list_builders(with_community_datasets=False))
  if os.path.isdir(data_dir):
    known += [d for d in os.listdir(data_dir) if not d.startswith(".")]
  close = difflib.get_close_matches(name, known, n=1)
  message = (
    f"Dataset {name!r} is not prepared in data_dir={data_dir!r} (no dataset files under "
    f"{os.path.join(data_dir, name)}) and is not a TFDS catalogue name"
    + (" (download=True cannot fetch it)" if download else "")
    + f"; prepare it with `python -m launch.prepare_data --name={name} --data_dir={data_dir}` "
    "and one of --npz=FILE.npz, --image_folder=DIR, --jsonl=FILE.jsonl, or set "
    "config.data.data_dir to where it is prepared"
    + (f" (did you mean {close[0]!r}?)" if close else "")
    + "."
  )
  return ValueError(message) if download else DatasetNotPreparedError(message)


def open_builder(name: str, data_dir: str, *, download: bool = False):
  """The TFDS builder of a prepared (or, with ``download``, freshly prepared) dataset, once
  ``check_feature_classes`` has accepted its files."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  _check_not_community(name)
  check_feature_classes(name, data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:  # its message lists the whole catalogue
    raise _unknown(name, data_dir, download) from None
  if download and not builder.is_prepared():
    check_download_possible(name, data_dir)
    try:
      builder.download_and_prepare(file_format="array_record")
    except ModuleNotFoundError as error:
      if error.name != "tensorflow":
        raise
      raise RuntimeError(
        f"TFDS's builder for {name!r} needs TensorFlow to generate the dataset (it is "
        "not needed to read it). Prepare it once where TensorFlow is installed, e.g. "
        f"`tfds build {name} --data_dir={data_dir} --file_format=array_record`, or "
        "convert local copies with launch.prepare_data.\n" + _how_to_prepare(name, data_dir)
      ) from error
  if not builder.is_prepared():
    raise _not_prepared(
      name, data_dir, f"no prepared version at {builder.data_path}; download=False"
    )
  file_format = builder.info.file_format
  if file_format is not None and getattr(file_format, "value", file_format) != "array_record":
    raise DatasetFormatError(
      f"{name!r} in {data_dir!r} is stored as {getattr(file_format, 'value', file_format)}, "
      "but random access without TensorFlow needs array_record. Convert it (needs "
      f"TensorFlow): `tfds convert_format --dataset_dir={builder.data_path} "
      "--out_file_format=array_record`, or prepare it again in another data_dir."
    )
  return builder


class DatasetFormatError(ValueError):
  """A prepared dataset (or a setting that reads it) does not fit what this project reads."""


class DamagedDatasetError(OSError):
  """A prepared dataset's record file cannot be read: truncated or corrupted on disk."""


@contextlib.contextmanager
def damage_named(builder, split: str):
  """Reads of ``split`` inside the block: array_record's error on a damaged file (a
  ``RuntimeError`` naming no file) becomes ``DamagedDatasetError`` naming the split's files."""
  try:
    yield
  except RuntimeError as error:
    if not any(mark in str(error) for mark in ("Riegeli", "ArrayRecord")):
      raise
    files = ", ".join(str(f) for f in builder.info.splits[split].filepaths)
    raise DamagedDatasetError(
      f"{files}: the {split} split of {builder.name} is damaged (truncated or corrupted: "
      f"{str(error).splitlines()[0][:200]}). Prepare the dataset again (launch.prepare_data "
      "... --overwrite), or copy it again."
    ) from None


class TfdsSource:
  """One split of a prepared TFDS dataset: ``source[i] = {"image": [H, W, C], "label": int}``.

  Wraps ``builder.as_data_source(split)``. ``tfds.features.Image`` images are decoded
  by TFDS (with Pillow, or OpenCV when installed); ``[H, W]`` images become ``[H, W, 1]``.
  """

  def __init__(self, builder, split: str, image_key: str, label_key: str):
    self._builder = builder
    self.split = split
    self._image_key, self._label_key = image_key, label_key
    self._source = builder.as_data_source(split=split)
    self._labels: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self._source)

  def _convert(self, record: dict[str, Any]) -> dict[str, Any]:
    image = np.asarray(record[self._image_key])
    if image.ndim == 2:
      image = image[..., None]
    return {"image": image, "label": int(record[self._label_key])}

  def __getitem__(self, index: int) -> dict[str, Any]:
    with damage_named(self._builder, self.split):
      return self._convert(self._source[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    with damage_named(self._builder, self.split):
      records = self._source.__getitems__(list(indices))
    return [self._convert(r) for r in records]

  def labels(self) -> np.ndarray:
    """Every label of the split, ``int64 [N]`` (read once, then cached)."""
    if self._labels is None:
      self._labels = self._read_labels()
    return self._labels

  def _read_labels(self) -> np.ndarray:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    n = len(self)
    labels = np.empty(n, np.int64)
    try:
      # Fast path: parse only the tf.train.Example protos, no feature decoding.
      from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=import-outside-toplevel

      raw = self._builder.as_data_source(
        split=self.split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
      )
      parse, key = tf_example_pb2.Example.FromString, self._label_key
      for start in range(0, n, _LABEL_CHUNK):
        records = raw.__getitems__(list(range(start, min(start + _LABEL_CHUNK, n))))
        for offset, record in enumerate(records):
          labels[start + offset] = parse(record).features.feature[key].int64_list.value[0]
      return labels
    except Exception:  # pylint: disable=broad-except  # other serialisations: decode all
      pass
    source = self._builder.as_data_source(
      split=self.split, decoders={self._image_key: tfds.decode.SkipDecoding()}
    )
    for start in range(0, n, _LABEL_CHUNK):
      with damage_named(self._builder, self.split):
        records = source.__getitems__(list(range(start, min(start + _LABEL_CHUNK, n))))
      labels[start : start + len(records)] = [int(r[self._label_key]) for r in records]
    return labels


def _feature_keys(builder) -> tuple[str, str]:
  features = builder.info.features
  if "image" in features and "label" in features:
    return "image", "label"
  keys = builder.info.supervised_keys
  if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
    return keys
  raise DatasetFormatError(
    f"{builder.name}: expected 'image' and 'label' features (or 2 supervised_keys), got "
    f"features {list(features)} and supervised_keys {keys}"
  )


def _pick_splits(builder) -> tuple[str, str]:
  splits = list(builder.info.splits)
  if "train" not in splits:
    raise DatasetFormatError(f"{builder.name} has no 'train' split (splits: {splits})")
  for test in ("test", "validation", "valid", "val"):
    if test in splits:
      return "train", test
  raise DatasetFormatError(f"{builder.name} has no 'test' or 'validation' split (splits: {splits})")


def _sample_stats(source: TfdsSource, sample: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean/std over ``sample`` evenly spaced images (deterministic)."""
  indices = np.unique(np.linspace(0, len(source) - 1, min(sample, len(source))).astype(int))
  stats = None
  for start in range(0, len(indices), 512):
    images = np.stack([r["image"] for r in source.__getitems__(indices[start : start + 512])])
    if stats is None:
      stats = StatsAccumulator(images.shape[-1])
    stats.add(images)
  return stats.result()


# Text datasets: the fields joined into one text (AG News as Hugging Face's ``ag_news``:
# title + " " + description; DBpedia: the content only).
TEXT_FIELDS = (("text",), ("title", "description"), ("content",))
# Tokens kept per text, as the reference's nlp/setting.py sets max_len per dataset.
TEXT_MAX_LEN = {"imdb_reviews": 350, "ag_news_subset": 60, "dbpedia": 350}


def text_fields(builder) -> tuple[str, ...]:
  """The string features that make one example's text; () for a non-text dataset."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  features = builder.info.features
  for fields in TEXT_FIELDS:
    if all(f in features and isinstance(features[f], tfds.features.Text) for f in fields):
      return fields
  return ()


def read_text_splits(name: str, data_dir: str = "", *, download: bool = False):
  """``{"train": (texts, labels), "test": (texts, labels)}`` and the label names.

  Reads a prepared TFDS text dataset (``imdb_reviews``, ``ag_news_subset``,
  ``dbpedia`` or one written by ``launch.prepare_data --jsonl_train``).
  """
  data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
  builder = open_builder(name, data_dir, download=download)
  fields = text_fields(builder)
  if not fields or "label" not in builder.info.features:
    raise DatasetFormatError(
      f"{name} in {data_dir!r} is not a text classification dataset: expected a 'label' and "
      f"text features {' or '.join('+'.join(f) for f in TEXT_FIELDS)}, got "
      f"{list(builder.info.features)}. Image datasets need an image config (no data.max_len)."
    )
  splits = {}
  for key, split in zip(("train", "test"), _pick_splits(builder)):
    source = builder.as_data_source(split=split)
    texts, labels = [], np.empty(len(source), np.int64)
    for start in range(0, len(source), _LABEL_CHUNK):
      with damage_named(builder, split):
        records = source.__getitems__(list(range(start, min(start + _LABEL_CHUNK, len(source)))))
      for offset, record in enumerate(records):
        parts = [record[f] for f in fields]
        texts.append(" ".join(p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in parts))
        labels[start + offset] = int(record["label"])
    splits[key] = (texts, labels)
  return splits, tuple(builder.info.features["label"].names)


def load_tfds(
  name: str, data_dir: str = "", *, download: bool = False, stats_sample: int = STATS_SAMPLE
) -> tuple[TfdsSource, TfdsSource, DatasetInfo]:
  """Train source, test source and ``DatasetInfo`` of a prepared TFDS dataset.

  ``info.mean``/``std`` (raw pixel units): the reference code's constants for
  ``cifar10`` and ``cifar100`` (``REFERENCE_STATS``), else the ``mean``/``std`` stored in the dataset's metadata (written by
  ``launch.prepare_data``), else computed from ``stats_sample`` train images.
  The test split is ``test``, or ``validation`` when there is no ``test``.
  """
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  data_dir = os.path.expanduser(data_dir) if data_dir else default_data_dir()
  builder = open_builder(name, data_dir, download=download)
  if text_fields(builder):
    raise DatasetFormatError(
      f"{name} is a text dataset; train it with a text config (e.g. "
      "launch/configs/agnews_lstm.py), which sets config.data.max_len."
    )
  image_key, label_key = _feature_keys(builder)
  image_feature = builder.info.features[image_key]
  label_feature = builder.info.features[label_key]
  if not isinstance(label_feature, tfds.features.ClassLabel):
    raise DatasetFormatError(f"{name}: feature {label_key!r} must be a ClassLabel, got {label_feature}")
  shape = tuple(image_feature.shape)
  if len(shape) == 2:
    shape = (*shape, 1)
  if len(shape) != 3 or any(d is None for d in shape):
    raise DatasetFormatError(
      f"{name}: images must have one fixed [H, W, C] shape, got {image_feature.shape}; "
      "resize them to one size and prepare them with launch.prepare_data"
    )
  train_split, test_split = _pick_splits(builder)
  train = TfdsSource(builder, train_split, image_key, label_key)
  test = TfdsSource(builder, test_split, image_key, label_key)
  dtype = np.dtype(image_feature.np_dtype)
  pixel_max = 255.0 if dtype == np.uint8 else (65535.0 if dtype == np.uint16 else 1.0)
  metadata = builder.info.metadata or {}
  if name in REFERENCE_STATS and shape[-1] == 3:
    mean, std = (tuple(v * pixel_max for v in values) for values in REFERENCE_STATS[name])
  elif "mean" in metadata and "std" in metadata:
    mean, std = tuple(metadata["mean"]), tuple(metadata["std"])
    pixel_max = float(metadata.get("pixel_max", pixel_max))
  else:
    mean, std = _sample_stats(train, stats_sample)
  info = DatasetInfo(
    name=name,
    input_shape=shape,
    num_classes=label_feature.num_classes,
    num_train=len(train),
    num_test=len(test),
    mean=tuple(float(m) for m in mean),
    std=tuple(float(s) for s in std),
    pixel_max=pixel_max,
    class_names=tuple(label_feature.names),
  )
  return train, test, info
