"""Deterministic, resumable batching on grain for any random-access record source.

A *source* is any object with ``__len__`` and ``__getitem__(i)`` returning either a
dict with ``"image"`` (HWC array) and ``"label"`` (int) keys, e.g. a TFDS
``tfds.data_source(...)`` split, or an ``(image, label)`` tuple.  Text sources
(``text.TextSplit``) return ``{"tokens": int32 [T], "label": int}``: their batches
hold ``"tokens"`` int32 ``[b, T]`` instead of ``"image"`` and are not normalised. In-memory
``ArraySplit`` arrays are adapted to such a source. Every pipeline is a
``grain.MapDataset`` (random access end to end), so skipping batches costs no reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grain
import numpy as np

Batch = dict[str, np.ndarray]
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset.

  ``mean``/``std`` are per-channel constants, in the units of the raw stored pixel
  values, that the loader applies as ``(image - mean) / std``. ``pixel_max`` is the
  largest raw pixel value (255 for uint8 images, 1 for [0, 1] floats); augmentation
  clips colour changes to ``[0, pixel_max]``. ``class_names`` is empty when unknown.
  ``kind`` is ``"image"`` or ``"text"``; text has ``input_shape = (max_len,)`` token
  ids and empty ``mean``/``std``.
  """

  name: str
  input_shape: tuple[int, ...]  # (H, W, C) of one example
  num_classes: int
  num_train: int
  num_test: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  pixel_max: float = 255.0
  class_names: tuple[str, ...] = ()
  kind: str = "image"

  def __post_init__(self):
    channels = 0 if self.kind == "text" else self.input_shape[-1]
    if len(self.mean) != channels or len(self.std) != channels:
      raise ValueError(
        f"{self.name}: mean/std need one value per channel ({channels}), "
        f"got mean={self.mean}, std={self.std}"
      )
    if self.class_names and len(self.class_names) != self.num_classes:
      raise ValueError(
        f"{self.name}: {len(self.class_names)} class names for {self.num_classes} classes"
      )


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One in-memory split: ``images`` [N, H, W, C] (uint8 or float32, raw), ``labels`` [N] int."""

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.ndim != 4 or self.labels.shape != self.images.shape[:1]:
      raise ValueError(
        f"expected images [N, H, W, C] and labels [N], got {self.images.shape} "
        f"and {self.labels.shape}"
      )


class RecordSource(Protocol):
  """Random-access records: ``source[i]`` is ``{"image", "label", ...}`` or ``(image, label)``."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> Any: ...


class _ArraySource:
  """Adapts an ``ArraySplit`` to a ``RecordSource`` of dict records."""

  def __init__(self, split: ArraySplit):
    self._split = split

  def __len__(self) -> int:
    return len(self._split.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"image": self._split.images[index], "label": self._split.labels[index]}


class StatsAccumulator:
  """Per-channel pixel mean/std (raw units) of every image added (``[..., C]``), in float64."""

  def __init__(self, channels: int):
    self.count = 0
    self.total = np.zeros(channels)
    self.total_sq = np.zeros(channels)

  def add(self, images: np.ndarray) -> None:
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
    self.count += flat.shape[0]
    self.total += flat.sum(0)
    self.total_sq += np.square(flat).sum(0)

  def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean [C], std [C])``; a zero std (constant channel) is reported as 1."""
    mean = self.total / max(self.count, 1)
    std = np.sqrt(np.maximum(self.total_sq / max(self.count, 1) - np.square(mean), 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) if s > 0 else 1.0 for s in std)


class LabelError(ValueError):
  """A split's labels are not integer class ids in ``[0, num_classes)`` (the message says which)."""


def validate_labels(labels: np.ndarray, num_classes: int, *, split_name: str) -> None:
  """Raises ``LabelError`` unless every label in ``labels`` [N] is an integer in [0, num_classes)."""
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise LabelError(f"{split_name} labels must be integer class ids, got dtype {labels.dtype}")
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    shown = bad[:5]
    raise LabelError(
      f"{split_name} labels out of range: {bad.size} label(s) outside [0, {num_classes}), "
      f"e.g. value(s) {labels[shown].tolist()} at index(es) {shown.tolist()}. "
      "Labels must be 0-based class ids; check data.num_classes or remap the labels."
    )


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Number of full global batches in one epoch (the remainder is dropped)."""
  if global_batch_size <= 0:
    raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
  steps = num_examples // global_batch_size
  if steps == 0:
    raise ValueError(
      f"global_batch_size={global_batch_size} exceeds the {num_examples} examples "
      "of the split, so an epoch would have no batches; lower the batch size"
    )
  return steps


def _as_source(data: ArraySplit | RecordSource, info: DatasetInfo, split_name: str):
  if isinstance(data, ArraySplit):
    validate_labels(data.labels, info.num_classes, split_name=split_name)
    return _ArraySource(data)
  return data


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, {process_count})")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
      f"global_batch_size={global_batch_size} must be a positive multiple of "
      f"process_count={process_count}"
    )
  return global_batch_size // process_count


def _to_example(record: Any) -> dict[str, np.ndarray]:
  """One record -> ``{"image": float32 [H, W, C] raw values, "label": int32 []}``.

  A text record gives ``{"tokens": int32 [T], "label": int32 []}``.
  """
  if isinstance(record, dict) and "tokens" in record:
    return {"tokens": np.asarray(record["tokens"], np.int32), "label": np.int32(record["label"])}
  image, label = (record["image"], record["label"]) if isinstance(record, dict) else record
  return {"image": np.asarray(image, np.float32), "label": np.int32(label)}


def _normalizer(info: DatasetInfo) -> Callable[[Batch], Batch]:
  if info.kind == "text":
    return lambda batch: batch
  mean = np.asarray(info.mean, np.float32)
  inv_std = 1.0 / np.asarray(info.std, np.float32)

  def normalize(batch: Batch) -> Batch:
    return {**batch, "image": (batch["image"] - mean) * inv_std}

  return normalize


def _shard(
  batched: grain.MapDataset, num_global: int, process_index: int, process_count: int
) -> grain.MapDataset:
  """Keeps this process's rows of each of ``num_global`` global batches.

  ``batched`` holds per-process-sized batches, so global batch ``t`` is local batches
  ``t*P .. t*P+P-1`` and process ``p`` owns local batch ``t*P + p``.
  """
  return batched[: num_global * process_count][process_index::process_count]


def _iterate(ds: grain.MapDataset, prefetch: int) -> Iterator[Batch]:
  """Iterates in order; ``prefetch`` batches are prepared ahead in as many threads."""
  options = grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)
  return iter(ds.to_iter_dataset(options))


def train_batches(
  split: ArraySplit | RecordSource,
  info: DatasetInfo,
  *,
  global_batch_size: int,
  seed: int,
  epoch: int,
  start_step: int = 0,
  process_index: int = 0,
  process_count: int = 1,
  augment: Augment | None = None,
  prefetch: int = 2,
) -> Iterator[Batch]:
  """One epoch of shuffled training batches for this process.

  Yields ``{"image": float32 [b, H, W, C] normalised, "label": int32 [b]}`` with
  ``b = global_batch_size // process_count``: rows ``[p*b, (p+1)*b)`` of each global
  batch. The order is a permutation fixed by ``(seed, epoch)``; the remainder is
  dropped, so there are ``steps_per_epoch(len(split), global_batch_size) - start_step``
  batches. ``augment(image [H, W, C] raw float32, rng) -> image`` runs before
  normalisation with ``rng`` seeded by ``(seed, epoch, position in the epoch)``; it must
  be a pure function (batches are prepared in ``prefetch`` threads).
  """
  source = _as_source(split, info, "train")
  local_batch = _local_batch_size(global_batch_size, process_index, process_count)
  num_steps = steps_per_epoch(len(source), global_batch_size)
  if not 0 <= start_step <= num_steps:
    raise ValueError(f"start_step={start_step} not in [0, {num_steps}]")
  # Hash (seed, epoch) into one 32-bit shuffle seed. A plain seed + epoch (what grain's
  # own repeat() does) would make (seed=s, epoch=e+1) replay (seed=s+1, epoch=e).
  shuffle_seed = int(np.random.SeedSequence((seed, epoch)).generate_state(1)[0])

  def prepare(position: int, record: Any) -> dict[str, np.ndarray]:
    example = _to_example(record)
    if augment is not None:
      rng = np.random.default_rng((seed, epoch, position))
      example["image"] = np.asarray(augment(example["image"], rng), np.float32)
    return example

  ds = (
    grain.MapDataset.source(source)
    .shuffle(seed=shuffle_seed)
    .map_with_index(prepare)
    .batch(local_batch, drop_remainder=True)
  )
  ds = _shard(ds, num_steps, process_index, process_count)[start_step:]
  return _iterate(ds.map(_normalizer(info)), prefetch)


def eval_batches(
  split: ArraySplit | RecordSource,
  info: DatasetInfo,
  *,
  global_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  prefetch: int = 2,
) -> Iterator[Batch]:
  """Every example exactly once, in source order, for this process.

  Yields ``{"image": float32 [b, H, W, C], "label": int32 [b], "mask": float32 [b]}``
  with ``b = global_batch_size // process_count`` (rows ``[p*b, (p+1)*b)`` of each
  global batch). The last global batch is padded to full size with rows whose
  mask, image and label are all 0.
  """
  source = _as_source(split, info, "eval")
  local_batch = _local_batch_size(global_batch_size, process_index, process_count)
  num_steps = -(-len(source) // global_batch_size)
  input_key, dtype = ("tokens", np.int32) if info.kind == "text" else ("image", np.float32)
  padding = {
    input_key: np.zeros(info.input_shape, dtype),
    "label": np.int32(0),
    "mask": np.float32(0.0),
  }
  real = grain.MapDataset.source(source).map(
    lambda record: {**_to_example(record), "mask": np.float32(1.0)}
  )
  pad = grain.MapDataset.range(num_steps * global_batch_size - len(source)).map(lambda _: padding)
  ds = grain.MapDataset.concatenate([real, pad]).batch(local_batch)
  normalize = _normalizer(info)

  def normalize_real(batch: Batch) -> Batch:
    batch = normalize(batch)
    if "image" in batch:
      batch["image"] *= batch["mask"][:, None, None, None]
    return batch

  ds = _shard(ds, num_steps, process_index, process_count)
  return _iterate(ds.map(normalize_real), prefetch)
