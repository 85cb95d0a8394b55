"""What a grid reports: each cell's summary, the markdown table and the plots.

A cell's summary holds its axes, accuracies, train time and per-epoch curves, so the table
(``mean ± std`` over seeds per dataset, noise rate and rule; converged cells; Welch's win /
tie / loss) and the learning curves are rebuilt from the summaries alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from deinforeg_jax import plots
from deinforeg_jax.studies import welch
from deinforeg_jax.studies.grid import flatten


def learning_curve(workdir: str) -> dict[str, list]:
  """Per-epoch ``epoch``, ``test_accuracy`` [epochs, exits] and ``train_accuracy`` of a run."""
  records = plots.read_epoch_records(os.path.join(workdir, "metrics.jsonl"))
  return {key: [r[key] for r in records] for key in ("epoch", "test_accuracy", "train_accuracy")}


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


def _metric_values(summaries, dataset: str, rule: str, rate, metric: str) -> list[float]:
  """``metric`` of every seed's summary of one (dataset, rule, rate)."""
  return [
    s[metric]
    for s in summaries
    if (s["dataset"], s["rule"], s["noise_rate"]) == (dataset, rule, int(rate))
  ]


def _variant_lines(grid) -> list[str]:
  """One line per rule or label with ``rule_overrides``: the fields they set."""
  overrides = grid.get("rule_overrides", {})
  lines = []
  for rule in grid.rules:
    if rule in overrides:
      fields = flatten(json.loads(json.dumps(overrides[rule].to_dict())))
      fields = dict(sorted(fields.items(), key=lambda field: field[0] != "rule"))  # rule first
      lines.append(f"- `{rule}`: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
  return lines + [""] if lines else []


def _metric_rows(grid, summaries, dataset: str, metric: str) -> list[str]:
  """Markdown header and one ``mean ± std`` row per noise rate of ``metric``."""
  lines = ["| noise | " + " | ".join(grid.rules) + " |", "|---" * (len(grid.rules) + 1) + "|"]
  for rate in grid.noise_rates:
    row = [f"{int(rate)}%"]
    for rule in grid.rules:
      row.append(_mean_std(_metric_values(summaries, dataset, rule, rate, metric)))
    lines.append("| " + " | ".join(row) + " |")
  return lines


def _wins_ties_losses(grid, dataset: str, summaries, ours: str, metric: str) -> list[str]:
  """Markdown rows: rule ``ours`` against every other rule, per noise rate, and totals."""
  others = [r for r in grid.rules if r != ours]
  lines = [
    (
      f"Win / tie / loss of **{ours}** on {dataset} (`{metric}`, Welch's "
      "two-sided t-test over seeds, p < 0.05):"
    ),
    "",
    "| noise | " + " | ".join(f"vs {r}" for r in others) + " |",
    "|---" * (len(others) + 1) + "|",
  ]
  outcomes = {r: [] for r in others}
  for rate in grid.noise_rates:
    row = [f"{int(rate)}%"]
    mine = _metric_values(summaries, dataset, ours, rate, metric)
    for rule in others:
      theirs = _metric_values(summaries, dataset, rule, rate, metric)
      outcome, p = welch.compare(mine, theirs)
      outcomes[rule].append(outcome)
      row.append(outcome if outcome == "–" else f"{outcome} (p={p:.2g})")
    lines.append("| " + " | ".join(row) + " |")
  lines.append(
    "| W/T/L | " + " | ".join(welch.wins_ties_losses(o) for o in outcomes.values()) + " |"
  )
  return lines + [""]


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
