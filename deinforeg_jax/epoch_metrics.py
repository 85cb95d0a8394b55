"""Running sums of an epoch's per-step train metrics, carried by mid-epoch checkpoints."""

from __future__ import annotations

from typing import Any

import numpy as np


class EpochMetrics:
  """Running float64 sums of the per-step train metrics of the current epoch.

  The epoch's summary is ``sums / count``; a mid-epoch checkpoint carries both
  (``metadata``), so a run resumed inside an epoch reports the same epoch metrics as one that
  never stopped (the sums are accumulated step by step in the same order either way).
  """

  def __init__(self, sums: dict[str, np.ndarray] | None = None, count: int = 0):
    self.sums, self.count = dict(sums or {}), count

  def add(self, metrics: list[dict[str, np.ndarray]]) -> None:
    for step_metrics in metrics:
      for name, value in step_metrics.items():
        value = np.asarray(value, np.float64)
        self.sums[name] = self.sums[name] + value if name in self.sums else value
      self.count += 1

  def mean(self) -> dict[str, np.ndarray]:
    return {name: total / self.count for name, total in self.sums.items()}

  def metadata(self) -> dict[str, Any]:
    return {
      "epoch_metric_count": self.count,
      "epoch_metric_sums": {name: total.tolist() for name, total in self.sums.items()},
    }

  @classmethod
  def from_metadata(cls, saved: dict[str, Any]) -> "EpochMetrics":
    """The sums a checkpoint carries (none for an epoch-end checkpoint or an older run)."""
    sums = saved.get("epoch_metric_sums") or {}
    return cls({k: np.asarray(v, np.float64) for k, v in sums.items()}, saved.get(
      "epoch_metric_count", 0))
