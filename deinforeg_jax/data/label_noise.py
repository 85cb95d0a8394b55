"""Training-label noise (reference: utils/vision_utils.py); the test split always stays clean.

``symmetric`` follows the reference ``add_noise_cifar``: a sample is selected when
``randint(100) >= 100 - rate`` (``rate`` in percent), i.e. with probability rate %, and
a selected sample gets a label drawn uniformly from **all** C classes, so it may keep
its label: the expected fraction of changed labels is ``rate/100 * (C-1)/C``.
``asymmetric`` selects samples the same way and gives them the class-pair mapped label:
for CIFAR-10 the standard truck->automobile, bird->airplane, deer->horse, cat<->dog;
for any other dataset ``c -> (c + 1) mod C``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

KINDS = ("none", "symmetric", "asymmetric")
CIFAR10_CLASSES = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)
CIFAR10_PAIRS = {
  "truck": "automobile",
  "bird": "airplane",
  "deer": "horse",
  "cat": "dog",
  "dog": "cat",
}


def asymmetric_mapping(num_classes: int, class_names: Sequence[str] = ()) -> np.ndarray:
  """``[C]`` int array: the label a selected sample of class ``c`` gets.

  CIFAR-10's class-pair map when ``class_names`` are CIFAR-10's classes, else
  ``(c + 1) mod C``.
  """
  if tuple(class_names) == CIFAR10_CLASSES:
    index = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    mapping = np.arange(num_classes)
    for source, target in CIFAR10_PAIRS.items():
      mapping[index[source]] = index[target]
    return mapping
  return (np.arange(num_classes) + 1) % num_classes


def _check_rate(rate: Any) -> int:
  value = float(rate)
  if not 0.0 <= value <= 100.0 or value != round(value):
    raise ValueError(
      f"label_noise.rate={rate!r} must be a whole percentage in [0, 100] (e.g. 20 for "
      "20 %): a sample is selected when randint(100) >= 100 - rate"
    )
  return int(round(value))


def apply_label_noise(
  labels: np.ndarray,
  num_classes: int,
  *,
  kind: str,
  rate: float,
  seed: int,
  class_names: Sequence[str] = (),
) -> tuple[np.ndarray, dict[str, Any]]:
  """Noisy copy of ``labels`` [N] and ``{"kind", "rate", "seed", "num_changed", "changed_fraction"}``.

  ``changed_fraction`` is the fraction of labels that actually differ from ``labels``.
  Deterministic given ``seed`` (a ``numpy`` Generator); ``labels`` is not modified.
  """
  if kind not in KINDS:
    raise ValueError(f"label_noise.kind={kind!r} must be one of {KINDS}")
  rate = _check_rate(rate)
  labels = np.asarray(labels)
  noisy = labels.copy()
  if kind != "none" and rate > 0 and labels.size:
    rng = np.random.default_rng(seed)
    selected = rng.integers(0, 100, size=labels.shape) >= 100 - rate
    if kind == "symmetric":
      noisy[selected] = rng.integers(0, num_classes, size=int(selected.sum()))
    else:
      noisy[selected] = asymmetric_mapping(num_classes, class_names)[labels[selected]]
  changed = int(np.sum(noisy != labels))
  summary = {
    "kind": kind,
    "rate": rate,
    "seed": int(seed),
    "num_changed": changed,
    "changed_fraction": changed / max(labels.size, 1),
  }
  return noisy.astype(labels.dtype, copy=False), summary


class RelabeledSource:
  """A record source whose record ``i`` has label ``labels[i]`` (image unchanged)."""

  def __init__(self, source, labels: np.ndarray):
    if len(labels) != len(source):
      raise ValueError(f"{len(labels)} labels for a source of {len(source)} records")
    self._source = source
    self._labels = np.asarray(labels)

  def __len__(self) -> int:
    return len(self._source)

  def _relabel(self, index: int, record: Any) -> dict[str, Any]:
    image = record["image"] if isinstance(record, dict) else record[0]
    return {"image": image, "label": int(self._labels[index])}

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self._relabel(index, self._source[index])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    indices = [int(i) for i in indices]
    if hasattr(self._source, "__getitems__"):
      records = self._source.__getitems__(indices)
    else:
      records = [self._source[i] for i in indices]
    return [self._relabel(i, r) for i, r in zip(indices, records)]

  def labels(self) -> np.ndarray:
    """The (noisy) labels of every record."""
    return self._labels
