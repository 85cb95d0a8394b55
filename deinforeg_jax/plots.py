"""Figures of the experiment grids (matplotlib, Agg backend, PNG).

* ``accuracy_vs_noise``: test accuracy (mean ± std over seeds) against the
  label-noise rate, one line per rule, one panel per dataset;
* ``grad_norm_vs_depth``: per-layer gradient norm (log scale) against layer
  depth, one line per rule, at initialisation and averaged over the last epoch;
* ``block_accuracy_over_training``: per-exit test accuracy against the epoch,
  one panel per rule;
* ``learning_curves``: best-exit test accuracy against the epoch, mean ± std over
  seeds, one line per rule, one panel per noise rate.

Each function reads the files a run writes (``metrics.jsonl``,
``grad_norms.json``) or the grid's per-cell summaries, and returns the path of
the PNG it wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from deinforeg_jax import safe_files


def read_epoch_records(path: str) -> list[dict[str, Any]]:
  """The per-epoch records of a run's ``metrics.jsonl`` (event lines skipped)."""
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if "epoch" in r]  # event lines (e.g. a resume with changes) skipped


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  with safe_files.atomic_writer(path, binary=True) as f:
    fig.savefig(f, dpi=110, format=os.path.splitext(path)[1][1:] or "png")
  plt.close(fig)
  return path


def accuracy_vs_noise(summaries: Sequence[Mapping[str, Any]], path: str, metric: str) -> str:
  """Plot ``metric`` (a fraction) against ``noise_rate`` from per-cell summaries.

  Each summary has ``dataset``, ``rule``, ``noise_rate``, ``seed`` and ``metric``.
  """
  datasets = sorted({s["dataset"] for s in summaries})
  fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
  for ax, dataset in zip(axes[0], datasets):
    cells = [s for s in summaries if s["dataset"] == dataset]
    for rule in sorted({s["rule"] for s in cells}):
      rates = sorted({s["noise_rate"] for s in cells if s["rule"] == rule})
      values = [
        [100 * s[metric] for s in cells if s["rule"] == rule and s["noise_rate"] == r]
        for r in rates
      ]
      mean = np.array([np.mean(v) for v in values])
      std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
      ax.errorbar(rates, mean, yerr=std, marker="o", capsize=3, label=rule)
    ax.set_title(dataset)
    ax.set_xlabel("symmetric label noise (%)")
    ax.set_ylabel(f"test accuracy (%) [{metric}]")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
  return _save(fig, path)


def learning_curves(summaries: Sequence[Mapping[str, Any]], path: str) -> str:
  """Plot best-exit test accuracy per epoch, mean ± std over seeds, one line per rule.

  One panel per noise rate; each summary has ``rule``, ``noise_rate`` and ``curve``
  (``epoch`` [E], ``test_accuracy`` [E, exits]); seeds of one rule share the epochs.
  """
  rates = sorted({s["noise_rate"] for s in summaries})
  fig, axes = plt.subplots(1, len(rates), figsize=(5 * len(rates), 3.8), squeeze=False)
  for ax, rate in zip(axes[0], rates):
    cells = [s for s in summaries if s["noise_rate"] == rate]
    for rule in sorted({s["rule"] for s in cells}):
      curves = [s["curve"] for s in cells if s["rule"] == rule]
      length = min(len(c["epoch"]) for c in curves)
      best = 100 * np.array([np.max(c["test_accuracy"][:length], axis=1) for c in curves])
      epochs = curves[0]["epoch"][:length]
      (line,) = ax.plot(epochs, best.mean(0), label=f"{rule} (n={len(curves)})")
      if len(curves) > 1:
        spread = best.std(0, ddof=1)
        ax.fill_between(
          epochs, best.mean(0) - spread, best.mean(0) + spread, color=line.get_color(), alpha=0.2
        )
    ax.set_title(f"{rate}% label noise")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
  axes[0][0].set_ylabel("best-exit test accuracy (%)")
  return _save(fig, path)


def grad_norm_vs_depth(runs: Mapping[str, str], path: str) -> str:
  """Plot per-layer gradient norms of each run (``{rule: workdir}``) against depth.

  Reads ``grad_norms.json`` (layers, norms at initialisation) and the last
  ``train_grad_norm`` of ``metrics.jsonl`` (the mean over the last epoch).
  """
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
  for rule, workdir in runs.items():
    with open(os.path.join(workdir, "grad_norms.json")) as f:
      init = json.load(f)["init"]
    last = read_epoch_records(os.path.join(workdir, "metrics.jsonl"))[-1]["train_grad_norm"]
    for ax, norms in zip(axes, (init, last)):
      ax.semilogy(np.arange(1, len(norms) + 1), np.maximum(norms, 1e-30), marker=".", label=rule)
  for ax, title in zip(
    axes, ("at initialisation (first step)", "during training (last epoch mean)")
  ):
    ax.set_title(title)
    ax.set_xlabel("encoder layer (input → output)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right")
  axes[0].set_ylabel("‖∂L/∂W‖₂")
  return _save(fig, path)


def block_accuracy_over_training(runs: Mapping[str, str], path: str) -> str:
  """Plot every exit's test accuracy per epoch, one panel per run (``{rule: workdir}``)."""
  fig, axes = plt.subplots(1, len(runs), figsize=(4 * len(runs), 3.5), squeeze=False, sharey=True)
  for ax, (rule, workdir) in zip(axes[0], runs.items()):
    records = read_epoch_records(os.path.join(workdir, "metrics.jsonl"))
    epochs = [r["epoch"] for r in records]
    accuracy = np.array([r["test_accuracy"] for r in records]) * 100
    for k in range(accuracy.shape[1]):
      ax.plot(epochs, accuracy[:, k], marker=".", label=f"exit {k}")
    ax.set_title(rule)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
  axes[0][0].set_ylabel("test accuracy (%)")
  return _save(fig, path)
