"""Dataset names of ``config.data.name`` -> in-memory splits and their ``DatasetInfo``."""

from __future__ import annotations

from deinforeg_jax.data.digits import load_digits
from deinforeg_jax.data.loader import ArraySplit, DatasetInfo, validate_labels

EMBEDDED = {"digits": load_digits}


def load_dataset(data_cfg) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
  """Train split, test split and info for ``config.data`` (labels are range-checked)."""
  if data_cfg.name not in EMBEDDED:
    raise ValueError(
        f"config.data.name={data_cfg.name!r} is not available: this version reads the embedded "
        f"datasets {sorted(EMBEDDED)}; TFDS datasets from a prepared config.data.data_dir come "
        "with the data-pipeline release (see README, 'Data').")
  train, test, info = EMBEDDED[data_cfg.name](seed=data_cfg.split_seed)
  validate_labels(train.labels, info.num_classes, split_name=f"{info.name}/train")
  validate_labels(test.labels, info.num_classes, split_name=f"{info.name}/test")
  return train, test, info
