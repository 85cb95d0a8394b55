"""A grid's cells: their order, names, workdirs and run configs.

A cell is one point of ``datasets x rules x noise_rates x seeds``, as a dict
``{"dataset", "rule", "noise_rate", "seed"}``.  Its run config is ``grid.base`` with the
dataset's and the rule's overrides set, then the cell's axes.  An entry of ``grid.rules`` may be
a variant label (no dots) whose ``grid.rule_overrides.<label>`` sets the real ``rule`` with
other fields, e.g. ``{"rule": "deinforeg", "optim": {"name": "lars"}}``; the label names the
cell like a rule.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import ml_collections

from deinforeg_jax import rules


# One cell's Ray resources unless the grid sets ``cell_resources`` (``ray_executor``).
DEFAULT_RESOURCES = {"CPU": 1.0}


class GridError(ValueError):
  """The grid config, or a finished cell's saved config, does not fit (the message says how)."""


@dataclasses.dataclass(frozen=True)
class CellRun:
  """One cell as an executor trains it: ``config`` in ``workdir``, its summary in
  ``summary_path``."""

  cell: dict[str, Any]  # the axes: dataset, rule, noise_rate, seed
  name: str
  config: ml_collections.ConfigDict
  workdir: str
  summary_path: str


def cells(grid) -> Iterator[dict[str, Any]]:
  """Cells in run order: seed-major, so a grid cut short by its budget has whole seeds."""
  for seed in grid.seeds:
    for dataset in grid.datasets:
      for rate in grid.noise_rates:
        for rule in grid.rules:
          yield {"dataset": dataset, "rule": rule, "noise_rate": int(rate), "seed": int(seed)}


def cell_name(cell: Mapping[str, Any]) -> str:
  """``<dataset>__<rule>__noise<rate>__seed<seed>``: the name of the cell's summary file."""
  return f"{cell['dataset']}__{cell['rule']}__noise{cell['noise_rate']}__seed{cell['seed']}"


def cell_workdir(root: str, cell: Mapping[str, Any]) -> str:
  """``<root>/<dataset>/<rule>/noise<rate>/seed<seed>``."""
  return os.path.join(
    root, cell["dataset"], cell["rule"], f"noise{cell['noise_rate']}", f"seed{cell['seed']}"
  )


def apply_overrides(config, overrides, where: str) -> None:
  """Set nested ``overrides`` (dicts of fields) on ``config``; unknown fields are an error."""
  for key, value in overrides.items():
    if key not in config:
      raise GridError(
        f"{where}.{key} is not a field of the run config; check the spelling against "
        "launch/configs/default.py."
      )
    if hasattr(value, "items"):
      apply_overrides(config[key], value, f"{where}.{key}")
    else:
      config[key] = value


def cell_config(grid, cell: Mapping[str, Any]):
  """The run config of one cell: ``grid.base`` + dataset and rule overrides + the cell's axes.

  ``cell["rule"]`` is the rule, or a variant label whose overrides set the rule.
  """
  config = copy.deepcopy(grid.base)
  label = cell["rule"]
  with config.unlocked():
    overrides = grid.get("dataset_overrides", {})
    if cell["dataset"] in overrides:
      apply_overrides(
        config, overrides[cell["dataset"]], f"grid.dataset_overrides.{cell['dataset']}"
      )
    config.rule = label
    overrides = grid.get("rule_overrides", {})
    if label in overrides:
      apply_overrides(config, overrides[label], f"grid.rule_overrides.{label}")
    if config.rule not in rules.RULES:
      raise GridError(
        f"grid.rules has {label!r}: neither a rule ({', '.join(rules.RULES)}) nor a variant "
        f"label with grid.rule_overrides.{label}.rule set to one."
      )
    config.data.name = cell["dataset"]
    config.seed = cell["seed"]
    noise = config.data.label_noise
    noise.kind = grid.noise_kind if cell["noise_rate"] > 0 else "none"
    noise.rate = cell["noise_rate"]
    noise.seed = cell["seed"]
  return config


def cell_runs(grid, root: str) -> list[CellRun]:
  """Every cell of ``grid`` in run order; its summary is ``<root>/cells/<name>.json``."""
  return [
    CellRun(
      cell,
      cell_name(cell),
      cell_config(grid, cell),
      cell_workdir(root, cell),
      os.path.join(root, "cells", cell_name(cell) + ".json"),
    )
    for cell in cells(grid)
  ]


def cell_resources(grid) -> dict[str, float]:
  """The grid's ``cell_resources``: a mapping (``{"GPU": 1}``) or ``"GPU=1,CPU=4"`` (what a
  ``--grid.cell_resources=...`` flag can give); ``DEFAULT_RESOURCES`` without it."""
  value = grid.get("cell_resources", None) or DEFAULT_RESOURCES
  if isinstance(value, str):
    try:
      value = {k.strip(): float(v) for k, v in (item.split("=") for item in value.split(","))}
    except ValueError:
      raise GridError(
        f"grid.cell_resources={value!r}: write NAME=AMOUNT pairs joined by commas, e.g. "
        "\"GPU=1\" or \"CPU=4,GPU=1\"."
      ) from None
  return {str(name): float(amount) for name, amount in dict(value).items()}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """``{"a.b": leaf}`` of nested mappings; tuples become lists, as JSON gives them back."""
  if isinstance(tree, Mapping):
    flat = {}
    for key, value in tree.items():
      flat.update(flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def check_same_config(saved: Mapping[str, Any], config, where: str) -> None:
  """Refuse a finished cell whose saved config differs from the grid's (first field named)."""
  old, new = flatten(saved), flatten(json.loads(json.dumps(config.to_dict())))
  for key in sorted(set(old) | set(new)):
    if old.get(key, "<absent>") != new.get(key, "<absent>"):
      raise GridError(
        f"{where} was finished with a different config: {key}={old.get(key, '<absent>')!r} "
        f"there, {new.get(key, '<absent>')!r} in this grid. Use a new --root, or delete that "
        "directory to rerun it."
      )
