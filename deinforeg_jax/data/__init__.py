"""Datasets and the grain batching path shared by all of them."""

from deinforeg_jax.data.digits import load_digits
from deinforeg_jax.data.loader import (
    ArraySplit,
    DatasetInfo,
    RecordSource,
    eval_batches,
    steps_per_epoch,
    train_batches,
    validate_labels,
)

__all__ = [
    "ArraySplit",
    "DatasetInfo",
    "RecordSource",
    "eval_batches",
    "load_digits",
    "steps_per_epoch",
    "train_batches",
    "validate_labels",
]
