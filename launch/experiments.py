"""Run an experiment grid: rules x datasets x label-noise rates x seeds, under a budget.

  python -m launch.experiments --grid=launch/configs/experiments/noise_cifar.py \\
      --root=runs/noise_cifar --grid.base.data.data_dir=$HOME/tfds

A grid config (``launch/configs/experiments/*.py``) holds ``base`` (an ordinary run
config: backbone, optimizer and epoch budget, the same for every cell), the axes
``rules``, ``datasets``, ``noise_rates`` (percent, ``noise_kind`` noise; 0 = clean)
and ``seeds``, optional per-dataset and per-rule overrides (nested dicts of run-
config fields), ``metric`` (the summary field tabulated) and ``budget_minutes``
(no new cell starts once the grid has run that long; 0 = no limit).

Every cell trains in ``<root>/<dataset>/<rule>/noise<rate>/seed<seed>`` and gets
one summary ``<root>/cells/<dataset>__<rule>__noise<rate>__seed<seed>.json``.
Rerunning the same command resumes: a cell with a summary is skipped, and an
unfinished cell continues from its checkpoints.  A finished cell whose config
differs from the grid's is refused with the first differing field.  At the end
``<root>/table.md`` holds mean ± std over seeds per (dataset, noise rate, rule),
and PNG plots lie beside it: accuracy vs noise rate, per-exit test accuracy over
training, and (with ``base.train.log_grad_norms``) gradient norm vs depth.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from deinforeg_jax import plots
from deinforeg_jax.train import train_and_evaluate

config_flags.DEFINE_config_file("grid", None, "Grid config (ml_collections file).")
_ROOT = flags.DEFINE_string("root", None, "Output directory of the grid.", required=True)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the cells and their state; train nothing.")


def cells(grid) -> Iterator[dict[str, Any]]:
  """Cells in run order: seed-major, so a grid cut short by its budget has whole seeds."""
  for seed in grid.seeds:
    for dataset in grid.datasets:
      for rate in grid.noise_rates:
        for rule in grid.rules:
          yield {"dataset": dataset, "rule": rule, "noise_rate": int(rate), "seed": int(seed)}


def cell_name(cell: Mapping[str, Any]) -> str:
  return f"{cell['dataset']}__{cell['rule']}__noise{cell['noise_rate']}__seed{cell['seed']}"


def cell_workdir(root: str, cell: Mapping[str, Any]) -> str:
  return os.path.join(
    root, cell["dataset"], cell["rule"], f"noise{cell['noise_rate']}", f"seed{cell['seed']}"
  )


def _apply_overrides(config, overrides, where: str) -> None:
  """Set nested ``overrides`` (dicts of fields) on ``config``; unknown fields are an error."""
  for key, value in overrides.items():
    if key not in config:
      raise ValueError(
        f"{where}.{key} is not a field of the run config; check the spelling against "
        "launch/configs/default.py."
      )
    if hasattr(value, "items"):
      _apply_overrides(config[key], value, f"{where}.{key}")
    else:
      config[key] = value


def cell_config(grid, cell: Mapping[str, Any]):
  """The run config of one cell: ``grid.base`` + dataset and rule overrides + the cell's axes."""
  config = copy.deepcopy(grid.base)
  with config.unlocked():
    overrides = grid.get("dataset_overrides", {})
    if cell["dataset"] in overrides:
      _apply_overrides(
        config, overrides[cell["dataset"]], f"grid.dataset_overrides.{cell['dataset']}"
      )
    overrides = grid.get("rule_overrides", {})
    if cell["rule"] in overrides:
      _apply_overrides(config, overrides[cell["rule"]], f"grid.rule_overrides.{cell['rule']}")
    config.rule = cell["rule"]
    config.data.name = cell["dataset"]
    config.seed = cell["seed"]
    noise = config.data.label_noise
    noise.kind = grid.noise_kind if cell["noise_rate"] > 0 else "none"
    noise.rate = cell["noise_rate"]
    noise.seed = cell["seed"]
  return config


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    flat = {}
    for key, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
  return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def check_same_config(saved: Mapping[str, Any], config, where: str) -> None:
  """Refuse a finished cell whose saved config differs from the grid's (first field named)."""
  old, new = _flatten(saved), _flatten(json.loads(json.dumps(config.to_dict())))
  for key in sorted(set(old) | set(new)):
    if old.get(key, "<absent>") != new.get(key, "<absent>"):
      raise ValueError(
        f"{where} was finished with a different config: {key}={old.get(key, '<absent>')!r} "
        f"there, {new.get(key, '<absent>')!r} in this grid. Use a new --root, or delete that "
        "directory to rerun it."
      )


def summarize(cell: Mapping[str, Any], results: Mapping[str, Any], workdir: str) -> dict:
  """The per-run JSON: the cell's axes plus the accuracies and times of its results."""
  return {
    **cell,
    "best_test_accuracy": results["best_test_accuracy"],
    "last_exit_test_accuracy": results["per_block_test_accuracy"][-1],
    "per_block_test_accuracy": results["per_block_test_accuracy"],
    "best_block": results["best_block"],
    "best_epoch_test_accuracy": results["best_epoch_test_accuracy"],
    "label_noise": results["label_noise"],
    "steps": results["steps"],
    "train_time_s": results["train_time_s"],
    "workdir": workdir,
  }


def _mean_std(values: list[float]) -> str:
  if not values:
    return "–"
  mean = 100 * np.mean(values)
  if len(values) == 1:
    return f"{mean:.1f} (n=1)"
  return f"{mean:.1f} ± {100 * np.std(values, ddof=1):.1f}"


def markdown_table(grid, summaries: list[dict[str, Any]]) -> str:
  """Per dataset: one row per noise rate, one column per rule, ``mean ± std`` (%) over seeds."""
  lines = [
    (
      f"Test accuracy (%), `{grid.metric}`, mean ± std (sample std) over seeds "
      f"{list(grid.seeds)}; `{grid.noise_kind}` label noise on the training split."
    ),
    "",
  ]
  for dataset in grid.datasets:
    lines += [f"**{dataset}**", "", "| noise | " + " | ".join(grid.rules) + " |"]
    lines.append("|---" * (len(grid.rules) + 1) + "|")
    for rate in grid.noise_rates:
      row = [f"{int(rate)}%"]
      for rule in grid.rules:
        values = [
          s[grid.metric]
          for s in summaries
          if (s["dataset"], s["rule"], s["noise_rate"]) == (dataset, rule, int(rate))
        ]
        row.append(_mean_std(values))
      lines.append("| " + " | ".join(row) + " |")
    times = []
    for rule in grid.rules:
      spent = [s["train_time_s"] for s in summaries if (s["dataset"], s["rule"]) == (dataset, rule)]
      times.append(f"{np.mean(spent):.0f} s" if spent else "–")
    lines += ["| train time / run | " + " | ".join(times) + " |", ""]
  return "\n".join(lines)


def make_plots(root: str, grid, summaries: list[dict[str, Any]]) -> list[str]:
  """Write the grid's PNGs; per-run plots use each rule's first clean cell (first seed)."""
  written = []
  if len(set(grid.noise_rates)) > 1 and summaries:
    written.append(
      plots.accuracy_vs_noise(summaries, os.path.join(root, "accuracy_vs_noise.png"), grid.metric)
    )
  for dataset in grid.datasets:
    runs = {}
    for rule in grid.rules:
      done = [s for s in summaries if (s["dataset"], s["rule"]) == (dataset, rule)]
      if done:
        runs[rule] = min(done, key=lambda s: (s["noise_rate"], s["seed"]))["workdir"]
    if not runs:
      continue
    written.append(
      plots.block_accuracy_over_training(runs, os.path.join(root, f"block_accuracy_{dataset}.png"))
    )
    with_norms = {
      r: w for r, w in runs.items() if os.path.exists(os.path.join(w, "grad_norms.json"))
    }
    if with_norms:
      written.append(
        plots.grad_norm_vs_depth(with_norms, os.path.join(root, f"grad_norm_{dataset}.png"))
      )
  return written


def run_grid(grid, root: str, dry_run: bool = False) -> list[dict[str, Any]]:
  """Train every unfinished cell (until the budget is spent); write table and plots."""
  os.makedirs(os.path.join(root, "cells"), exist_ok=True)
  budget_s = 60.0 * grid.budget_minutes
  start = time.perf_counter()
  summaries, skipped = [], []
  for cell in cells(grid):
    workdir = cell_workdir(root, cell)
    summary_path = os.path.join(root, "cells", cell_name(cell) + ".json")
    config = cell_config(grid, cell)
    if os.path.exists(summary_path):
      results_path = os.path.join(workdir, "results.json")
      if os.path.exists(results_path):
        with open(results_path) as f:
          check_same_config(json.load(f)["config"], config, workdir)
      with open(summary_path) as f:
        summaries.append({**json.load(f), "workdir": workdir})  # the root may have moved
      print(f"[done]    {cell_name(cell)}", flush=True)
      continue
    elapsed = time.perf_counter() - start
    if dry_run or (budget_s and elapsed > budget_s):
      skipped.append(cell)
      print(f"[{'todo' if dry_run else 'budget'}]    {cell_name(cell)}", flush=True)
      continue
    print(f"[run]     {cell_name(cell)} in {workdir} ({elapsed / 60:.1f} min elapsed)", flush=True)
    results = train_and_evaluate(config, workdir)
    summary = summarize(cell, results, workdir)
    with open(summary_path, "w") as f:
      json.dump(summary, f, indent=1)
    summaries.append(summary)
  if dry_run:
    return summaries
  table = markdown_table(grid, summaries)
  if skipped:
    table += (
      f"\n{len(skipped)} cell(s) not run: the budget of {grid.budget_minutes} min was spent.\n"
    )
  with open(os.path.join(root, "table.md"), "w") as f:
    f.write(table)
  print(table)
  for path in make_plots(root, grid, summaries):
    print(f"wrote {path}")
  return summaries


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if flags.FLAGS.grid is None:
    raise app.UsageError("--grid=launch/configs/experiments/<name>.py is required.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  # Cells of one rule and dataset compile the same programs: reuse them across cells.
  jax.config.update("jax_compilation_cache_dir", os.path.join(_ROOT.value, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  run_grid(flags.FLAGS.grid, _ROOT.value, _DRY_RUN.value)


if __name__ == "__main__":
  app.run(main)
