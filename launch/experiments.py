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
training, learning curves (best exit per epoch, mean ± std over seeds), and (with
``base.train.log_grad_norms``) gradient norm vs depth.  Each summary carries its
per-epoch curves, so ``--report_only`` rebuilds table and plots from committed
summaries alone (no workdirs needed), and a grid can be extended later.

Optional grid fields: ``plateau_epochs`` / ``plateau_tol`` (a cell has *converged*
when its best-exit test accuracy in the last ``plateau_epochs`` epochs beat the best
of all earlier epochs by at most ``plateau_tol``; the table counts converged cells),
``compare_to`` (a rule, or several joined by commas: win / tie / loss against every
other rule by Welch's two-sided t-test over seeds, p < 0.05) and ``extra_metrics``
(more summary fields, each tabulated and compared like ``metric``).

Variants of a rule: an entry of ``rules`` may be a label (no dots) whose
``rule_overrides.<label>`` sets the real ``rule`` with other fields, e.g.
``rule_overrides.deinforeg_lars = {"rule": "deinforeg", "optim": {"name": "lars"}}``.
The label names the cell, its column and its comparisons like a rule; the table lists
each label's overrides.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from launch import cli  # absl and ml_collections only: quick

if __name__ == "__main__":
  cli.remember_signals()  # a SIGTERM during the imports below (seconds): exit 75 before a cell

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from scipy import stats  # noqa: E402

from deinforeg_jax import plots, rules, safe_files, user_errors  # noqa: E402
from deinforeg_jax.train import train_and_evaluate  # noqa: E402

cli.define_config("grid", None, help_string="Grid config (ml_collections file).")
_ROOT = flags.DEFINE_string("root", None, "Output directory of the grid.", required=True)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the cells and their state; train nothing.")
_REPORT_ONLY = flags.DEFINE_bool(
  "report_only", False, "Train nothing; write table and plots from the finished cells."
)


class GridError(ValueError):
  """The grid config, or a finished cell's saved config, does not fit (the message says how)."""


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
      raise GridError(
        f"{where}.{key} is not a field of the run config; check the spelling against "
        "launch/configs/default.py."
      )
    if hasattr(value, "items"):
      _apply_overrides(config[key], value, f"{where}.{key}")
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
      _apply_overrides(
        config, overrides[cell["dataset"]], f"grid.dataset_overrides.{cell['dataset']}"
      )
    config.rule = label
    overrides = grid.get("rule_overrides", {})
    if label in overrides:
      _apply_overrides(config, overrides[label], f"grid.rule_overrides.{label}")
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
      raise GridError(
        f"{where} was finished with a different config: {key}={old.get(key, '<absent>')!r} "
        f"there, {new.get(key, '<absent>')!r} in this grid. Use a new --root, or delete that "
        "directory to rerun it."
      )


def learning_curve(workdir: str) -> dict[str, list]:
  """Per-epoch ``epoch``, ``test_accuracy`` [epochs, exits] and ``train_accuracy`` of a run."""
  records = plots.read_epoch_records(os.path.join(workdir, "metrics.jsonl"))
  return {
    key: [r[key] for r in records] for key in ("epoch", "test_accuracy", "train_accuracy")
  }


def plateau_gain(curve: Mapping[str, list], epochs: int) -> float | None:
  """Best-exit test accuracy of the last ``epochs`` epochs minus the best before them.

  ``a_e = max_k test_accuracy[e][k]``; the gain is ``max(a[-epochs:]) - max(a[:-epochs])``,
  None when the curve has no more than ``epochs`` epochs.
  """
  best_exit = [max(accuracies) for accuracies in curve["test_accuracy"]]
  if len(best_exit) <= epochs:
    return None
  return max(best_exit[-epochs:]) - max(best_exit[:-epochs])


def summarize(cell: Mapping[str, Any], results: Mapping[str, Any], workdir: str) -> dict:
  """The per-run JSON: the cell's axes, the accuracies and times of its results, its curves."""
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
    "curve": learning_curve(workdir),
    "workdir": workdir,
  }


def _mean_std(values: list[float]) -> str:
  if not values:
    return "–"
  mean = 100 * np.mean(values)
  if len(values) == 1:
    return f"{mean:.1f} (n=1)"
  return f"{mean:.1f} ± {100 * np.std(values, ddof=1):.1f}"


def _metric_values(grid, summaries, dataset: str, rule: str, rate, metric=None) -> list[float]:
  """``metric`` (default ``grid.metric``) of every seed's summary of one (dataset, rule, rate)."""
  return [
    s[metric or grid.metric]
    for s in summaries
    if (s["dataset"], s["rule"], s["noise_rate"]) == (dataset, rule, int(rate))
  ]


def _variant_lines(grid) -> list[str]:
  """One line per rule or label with ``rule_overrides``: the fields they set."""
  overrides = grid.get("rule_overrides", {})
  lines = []
  for rule in grid.rules:
    if rule in overrides:
      fields = _flatten(json.loads(json.dumps(overrides[rule].to_dict())))
      fields = dict(sorted(fields.items(), key=lambda field: field[0] != "rule"))  # rule first
      lines.append(f"- `{rule}`: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
  return lines + [""] if lines else []


def _metric_rows(grid, summaries, dataset: str, metric: str) -> list[str]:
  """Markdown header and one ``mean ± std`` row per noise rate of ``metric``."""
  lines = ["| noise | " + " | ".join(grid.rules) + " |", "|---" * (len(grid.rules) + 1) + "|"]
  for rate in grid.noise_rates:
    row = [f"{int(rate)}%"]
    for rule in grid.rules:
      row.append(_mean_std(_metric_values(grid, summaries, dataset, rule, rate, metric)))
    lines.append("| " + " | ".join(row) + " |")
  return lines


def markdown_table(grid, summaries: list[dict[str, Any]]) -> str:
  """Per dataset: one row per noise rate, one column per rule, ``mean ± std`` (%) over seeds;
  the same for each of ``grid.extra_metrics``; win / tie / loss of each ``compare_to`` rule."""
  lines = [
    (
      f"Test accuracy (%), `{grid.metric}`, mean ± std (sample std) over seeds "
      f"{list(grid.seeds)}; `{grid.noise_kind}` label noise on the training split."
    ),
    "",
  ] + _variant_lines(grid)
  extra_metrics = list(grid.get("extra_metrics", ()))
  compared = [r.strip() for r in grid.get("compare_to", "").split(",") if r.strip()]
  for dataset in grid.datasets:
    lines += [f"**{dataset}**", ""] + _metric_rows(grid, summaries, dataset, grid.metric)
    times, converged = [], []
    plateau_epochs = grid.get("plateau_epochs", 0)
    for rule in grid.rules:
      done = [s for s in summaries if (s["dataset"], s["rule"]) == (dataset, rule)]
      times.append(f"{np.mean([s['train_time_s'] for s in done]):.0f} s" if done else "–")
      if plateau_epochs:
        gains = [plateau_gain(s["curve"], plateau_epochs) for s in done if "curve" in s]
        flat = sum(g is not None and g <= grid.plateau_tol for g in gains)
        converged.append(f"{flat}/{len(done)}")
    lines.append("| train time / run | " + " | ".join(times) + " |")
    if plateau_epochs:
      lines.append(
        f"| converged (last {grid.plateau_epochs} epochs gained ≤ "
        f"{100 * grid.plateau_tol:g} points) | " + " | ".join(converged) + " |"
      )
    lines.append("")
    for metric in extra_metrics:
      lines += [f"Test accuracy (%), `{metric}`, on {dataset}:", ""]
      lines += _metric_rows(grid, summaries, dataset, metric) + [""]
    for metric in [grid.metric] + extra_metrics:
      for rule in compared:
        lines += _wins_ties_losses(grid, dataset, summaries, rule, metric)
  return "\n".join(lines)


def compare(ours: list[float], theirs: list[float], alpha: float = 0.05) -> tuple[str, float]:
  """("win" | "tie" | "loss", p) of ``ours`` against ``theirs`` by Welch's two-sided t-test.

  A tie when p >= ``alpha``; ("–", nan) with fewer than two values on a side.  Two
  constant samples give p = 0 when their values differ and 1 when they are equal.
  """
  if len(ours) < 2 or len(theirs) < 2:
    return "–", float("nan")
  if np.ptp(ours) == 0 and np.ptp(theirs) == 0:  # t is undefined: decide by the values
    p = 0.0 if ours[0] != theirs[0] else 1.0
  else:
    p = float(stats.ttest_ind(ours, theirs, equal_var=False).pvalue)
  if p >= alpha:
    return "tie", p
  return ("win" if np.mean(ours) > np.mean(theirs) else "loss"), p


def _wins_ties_losses(
  grid, dataset: str, summaries: list[dict[str, Any]], ours: str, metric: str
) -> list[str]:
  """Markdown rows: rule ``ours`` against every other rule, per noise rate, and totals."""
  others = [r for r in grid.rules if r != ours]
  lines = [
    f"Win / tie / loss of **{ours}** on {dataset} (`{metric}`, Welch's "
    "two-sided t-test over seeds, p < 0.05):",
    "",
    "| noise | " + " | ".join(f"vs {r}" for r in others) + " |",
    "|---" * (len(others) + 1) + "|",
  ]
  totals = {r: {"win": 0, "tie": 0, "loss": 0} for r in others}
  for rate in grid.noise_rates:
    row = [f"{int(rate)}%"]
    mine = _metric_values(grid, summaries, dataset, ours, rate, metric)
    for rule in others:
      outcome, p = compare(mine, _metric_values(grid, summaries, dataset, rule, rate, metric))
      if outcome in totals[rule]:
        totals[rule][outcome] += 1
      row.append(outcome if outcome == "–" else f"{outcome} (p={p:.2g})")
    lines.append("| " + " | ".join(row) + " |")
  lines.append(
    "| W/T/L | "
    + " | ".join(f"{t['win']}/{t['tie']}/{t['loss']}" for t in totals.values())
    + " |"
  )
  return lines + [""]


def make_plots(root: str, grid, summaries: list[dict[str, Any]]) -> list[str]:
  """Write the grid's PNGs.  Learning curves come from the summaries; the per-run plots
  read each rule's first clean cell's workdir (first seed) and are skipped without it."""
  written = []
  if len(set(grid.noise_rates)) > 1 and summaries:
    written.append(
      plots.accuracy_vs_noise(summaries, os.path.join(root, "accuracy_vs_noise.png"), grid.metric)
    )
  for dataset in grid.datasets:
    done = [s for s in summaries if s["dataset"] == dataset]
    with_curves = [s for s in done if "curve" in s]
    if with_curves:
      path = os.path.join(root, f"learning_curves_{dataset}.png")
      written.append(plots.learning_curves(with_curves, path))
    runs = {}
    for rule in grid.rules:
      of_rule = [s for s in done if s["rule"] == rule]
      if of_rule:
        workdir = min(of_rule, key=lambda s: (s["noise_rate"], s["seed"]))["workdir"]
        if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
          runs[rule] = workdir
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


def _read_json_object(path: str) -> dict | None:
  """The JSON object in ``path``; None if it is missing, cut short, or not an object."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    return None
  return value if isinstance(value, dict) else None


def _finished_summary(cell, config, summary_path: str, workdir: str) -> dict | None:
  """The summary of a finished cell: ``summary_path``, or, when that file is unreadable
  (cut short by a kill on an older version, or edited), rebuilt from the run's
  ``results.json`` and written again; None when neither is readable (the cell is run again,
  resuming from its checkpoints).  A ``results.json`` of other settings is an error."""
  results_path = os.path.join(workdir, "results.json")
  results = _read_json_object(results_path)
  if results is not None:
    check_same_config(results["config"], config, workdir)
  summary = _read_json_object(summary_path)
  if summary is not None:
    return summary
  if results is None:
    print(f"note: {summary_path} is unreadable and {results_path} too: running the cell again "
          "(it resumes from its last checkpoint)", flush=True)
    return None
  summary = summarize(cell, results, workdir)
  safe_files.write_atomic(summary_path, json.dumps(summary, indent=1))
  print(f"note: {summary_path} was unreadable: rebuilt from {results_path}", flush=True)
  return summary


def run_grid(
  grid, root: str, dry_run: bool = False, report_only: bool = False
) -> list[dict[str, Any]]:
  """Train every unfinished cell (until the budget is spent); write table and plots.

  ``dry_run``: list the cells, write nothing.  ``report_only``: train nothing, write
  table and plots from the finished cells' summaries.
  """
  os.makedirs(os.path.join(root, "cells"), exist_ok=True)
  budget_s = 60.0 * grid.budget_minutes
  start = time.perf_counter()
  summaries, skipped = [], []
  for cell in cells(grid):
    workdir = cell_workdir(root, cell)
    summary_path = os.path.join(root, "cells", cell_name(cell) + ".json")
    config = cell_config(grid, cell)
    if os.path.exists(summary_path):
      summary = _finished_summary(cell, config, summary_path, workdir)
      if summary is not None:
        summaries.append({**summary, "workdir": workdir})  # the root may have moved
        print(f"[done]    {cell_name(cell)}", flush=True)
        continue
    elapsed = time.perf_counter() - start
    if dry_run or report_only or (budget_s and elapsed > budget_s):
      skipped.append(cell)
      state = "budget" if budget_s and elapsed > budget_s else "todo"
      print(f"[{state}]    {cell_name(cell)}", flush=True)
      continue
    if cli.pending_signal():  # arrived between cells (a cell's own run saves and stops)
      raise user_errors.Interrupted(
        f"{cli.pending_signal()} received before cell {cell_name(cell)} started: "
        f"{len(summaries)} finished cell(s) are saved in {os.path.join(root, 'cells')}. Run "
        "the same command again to continue."
      )
    print(f"[run]     {cell_name(cell)} in {workdir} ({elapsed / 60:.1f} min elapsed)", flush=True)
    results = train_and_evaluate(config, workdir)
    summary = summarize(cell, results, workdir)
    safe_files.write_atomic(summary_path, json.dumps(summary, indent=1))
    summaries.append(summary)
  if dry_run:
    return summaries
  table = markdown_table(grid, summaries)
  if skipped:
    if report_only:
      table += f"\n{len(skipped)} cell(s) not run yet.\n"
    else:
      table += (
        f"\n{len(skipped)} cell(s) not run: the budget of {grid.budget_minutes} min was spent.\n"
      )
  safe_files.write_atomic(os.path.join(root, "table.md"), table)
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
  run_grid(flags.FLAGS.grid, _ROOT.value, _DRY_RUN.value, _REPORT_ONLY.value)


def run():
  """Entry point of the ``deinforeg-experiments`` console script (exit codes: ``launch.cli``;
  SIGTERM stops the grid in its current cell, which saves a checkpoint: exit 75, and the same
  command continues)."""
  cli.run(main, on_signal="remember")


if __name__ == "__main__":
  run()
