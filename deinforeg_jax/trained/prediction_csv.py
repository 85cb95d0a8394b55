"""The CSV that ``launch.predict`` writes: one row per input.

Columns: ``id`` (the input's id, ``trained.inputs``), ``label``, ``class_name``, ``probability``
(of that label, 6 decimals), ``exit`` (the exit index used) and ``exit_block`` (its block).
"""

from __future__ import annotations

import csv
import os

from deinforeg_jax import safe_files
from deinforeg_jax.trained.model import Prediction
from deinforeg_jax.trained.preprocessing import InputError

COLUMNS = ("id", "label", "class_name", "probability", "exit", "exit_block")


def check_path(path: str) -> None:
  """Refuses an output path that is a folder (before any work is done)."""
  if os.path.isdir(path):
    raise InputError(
      f"--out={path} is a folder: give the CSV file to write, e.g. "
      f"--out={os.path.join(path, 'predictions.csv')}."
    )


def write_csv(path: str, ids: list[str], prediction: Prediction) -> None:
  """One row per id (``COLUMNS``), written atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with safe_files.atomic_writer(path, newline="") as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for row in zip(
      ids,
      prediction.labels,
      prediction.names,
      prediction.confidence,
      prediction.exits,
      prediction.blocks,
    ):
      i, label, name, probability, exit_index, block = row
      probability = f"{float(probability):.6f}"
      writer.writerow([i, int(label), name, probability, int(exit_index), int(block)])
