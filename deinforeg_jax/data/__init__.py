"""Runtime data: sources, batching, augmentation, text encoding, label noise, registry.

Writing datasets (``launch.prepare_data``) lives in ``deinforeg_jax.data.prepare``, which
nothing here imports.
"""

from deinforeg_jax.data.augment import make_augment
from deinforeg_jax.data.digits import load_digits
from deinforeg_jax.data.label_noise import apply_label_noise
from deinforeg_jax.data.loader import (
  ArraySplit,
  DatasetInfo,
  RecordSource,
  eval_batches,
  steps_per_epoch,
  train_batches,
  validate_labels,
)
from deinforeg_jax.data.registry import LoadedData, load_dataset

__all__ = [
  "ArraySplit",
  "DatasetInfo",
  "LoadedData",
  "RecordSource",
  "apply_label_noise",
  "eval_batches",
  "load_dataset",
  "load_digits",
  "make_augment",
  "steps_per_epoch",
  "train_batches",
  "validate_labels",
]
