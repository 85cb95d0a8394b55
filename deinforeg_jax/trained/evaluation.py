"""Evaluating a trained run on the test split of its own or another prepared dataset.

``evaluate(trained, data_cfg, exit)`` runs every exit over ``data_cfg``'s test split with the
run's own preprocessing (its mean/std, rescaled when the dataset stores pixels in other units,
or its vocabulary) and returns the report that ``write_report`` writes to ``out_dir``:

* ``<dataset>.json``: per-exit accuracy, the adaptive-exit report (``results.json``'s
  ``adaptive_inference``), the accuracy and confusion matrix at ``exit``;
* ``<dataset>_confusion.png``: that confusion matrix.

Only the fields ``config_fields.evaluate_may_override`` names (``config.data.*``,
``config.inference.*``) may differ from the run's saved config (``apply_overrides``): the model
is the run's own.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from deinforeg_jax import config_fields, inference, safe_files, steps
from deinforeg_jax.data import DatasetInfo, eval_batches, load_dataset, text, tfds_source
from deinforeg_jax.data.registry import split_labels
from deinforeg_jax.user_errors import UserError

def check_overrides(overrides: dict[str, Any]) -> None:
  """Refuses a ``--config.<field>`` override that evaluate may not take."""
  refused = sorted(f for f in overrides if not config_fields.evaluate_may_override(f))
  if refused:
    raise UserError(
      f"--config.{refused[0]}: evaluate takes only --config.data.* and --config.inference.* "
      "overrides (the model is the run's own)."
    )


def apply_overrides(config, overrides: dict[str, Any]) -> None:
  """Sets each ``{"data.name": value, ...}`` field of ``config`` (checked first)."""
  check_overrides(overrides)
  for field, value in overrides.items():
    *path, name = field.split(".")
    section = config
    for part in path:
      section = section[part]
    section[name] = value


def evaluation_data(trained, data_cfg):
  """``(test source, DatasetInfo)`` of ``data_cfg``'s test split, normalised as the run."""
  pre = trained.preprocessing
  if pre.kind == "text":
    splits, _ = tfds_source.read_text_splits(data_cfg.name, data_cfg.data_dir)
    texts, labels = splits["test"]
    tokens = pre.texts(texts) if texts else np.zeros((0, *pre.input_shape), np.int32)
    info = DatasetInfo(
      name=data_cfg.name,
      input_shape=pre.input_shape,
      num_classes=int(np.max(labels, initial=-1)) + 1,
      num_train=0,
      num_test=len(labels),
      mean=(),
      std=(),
      pixel_max=1.0,
      kind="text",
    )
    return text.TextSplit(tokens, labels), info
  data_cfg.label_noise.kind, data_cfg.label_noise.rate = "none", 0
  data = load_dataset(data_cfg)
  info = data.info
  if tuple(info.input_shape) != tuple(pre.input_shape):
    raise UserError(
      f"dataset {info.name!r} has inputs {list(info.input_shape)}, the model takes "
      f"{list(pre.input_shape)} (height, width, channels): evaluate it on a dataset of that size."
    )
  ratio = pre.pixel_max / info.pixel_max  # run units per unit of this dataset
  info = dataclasses.replace(
    info,
    mean=tuple(m / ratio for m in pre.mean),
    std=tuple(s / ratio for s in pre.std),
    class_names=(),
  )
  return data.test, info


def evaluate(trained, data_cfg, exit="best") -> dict[str, Any]:  # pylint: disable=redefined-builtin
  """The report (module docstring) of ``trained`` on ``data_cfg``'s test split; ``exit``:
  ``"best"``, ``"adaptive"`` or an exit index, the exit of the confusion matrix."""
  test, info = evaluation_data(trained, data_cfg)
  labels = split_labels(test)
  if labels.size and (labels.min() < 0 or labels.max() >= trained.num_classes):
    raise UserError(
      f"dataset {data_cfg.name!r} has labels up to {int(labels.max())}, the model predicts "
      f"{trained.num_classes} classes (0..{trained.num_classes - 1}): its classes do not fit."
    )
  info = dataclasses.replace(info, num_classes=trained.num_classes)

  def batches():
    return eval_batches(test, info, global_batch_size=trained.config.data.eval_batch_size)

  kept = trained._programs  # pylint: disable=protected-access  # one compiled program
  cached = inference.exit_logits(
    trained.model, trained.variables, batches(), steps.model_inputs, kept
  )
  report = inference.adaptive_report(
    trained.model,
    trained.variables,
    batches(),
    steps.model_inputs,
    trained.config.inference,
    cached=cached,
    kept=kept,
  )
  chosen = trained.resolve_exit(exit)
  confusion = np.zeros((trained.num_classes, trained.num_classes), np.int64)
  for item in cached:
    prediction = trained.prediction(item["logits"], chosen, mask=item["mask"])
    real = item["mask"] > 0
    np.add.at(confusion, (item["label"][real], prediction.labels[real]), 1)
  total = int(confusion.sum())
  return {
    "workdir": trained.workdir,
    "step": trained.step,
    "dataset": data_cfg.name,
    "data_dir": data_cfg.data_dir,
    "split": "test",
    "num_examples": total,
    "exit_blocks": trained.exit_blocks,
    "per_exit_accuracy": inference.exit_accuracy(cached).tolist(),
    "best_exit": trained.best_exit,
    "best_exit_source": trained.best_exit_source,
    "adaptive_inference": report,
    "exit": exit if chosen == "adaptive" or exit == "best" else int(chosen),
    "accuracy": float(np.trace(confusion) / max(total, 1)),
    "class_names": list(trained.class_names),
    "confusion_matrix": confusion.tolist(),
    "notes": list(trained.notes),
  }


def plot_confusion(matrix, class_names, title: str, path: str) -> str:
  """A confusion-matrix PNG (rows: true class, columns: predicted class)."""
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  matrix = np.asarray(matrix)
  n = len(matrix)
  size = min(3.0 + 0.45 * n, 16.0)
  fig, ax = plt.subplots(figsize=(size + 1.0, size))
  image = ax.imshow(matrix, cmap="Blues")
  fig.colorbar(image, ax=ax, fraction=0.046)
  if n <= 30:
    ax.set_xticks(range(n), class_names, rotation=90)
    ax.set_yticks(range(n), class_names)
  if n <= 20:
    for (i, j), value in np.ndenumerate(matrix):
      color = "white" if value > matrix.max() / 2 else "black"
      ax.text(j, i, str(value), ha="center", va="center", color=color, fontsize=8)
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  ax.set_title(title, fontsize=9)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.tight_layout()
  with safe_files.atomic_writer(path, binary=True) as f:
    fig.savefig(f, dpi=110, format="png")
  plt.close(fig)
  return path


def write_report(report: dict[str, Any], out_dir: str) -> tuple[str, str]:
  """``<out_dir>/<dataset>.json`` and ``<dataset>_confusion.png``; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  name = report["dataset"].replace(os.sep, "_")
  json_path = os.path.join(out_dir, f"{name}.json")
  safe_files.write_atomic(json_path, json.dumps(report, indent=1))
  title = (
    f"{report['dataset']} test, exit {report['exit']}: accuracy {report['accuracy']:.4f} "
    f"(step {report['step']})"
  )
  png = plot_confusion(
    report["confusion_matrix"],
    report["class_names"],
    title,
    os.path.join(out_dir, f"{name}_confusion.png"),
  )
  return json_path, png


def summary(report: dict[str, Any]) -> str:
  """The lines ``launch.evaluate`` prints: accuracy per exit, adaptive exit, chosen exit."""
  accuracies = " ".join(
    f"[{b}] {a:.4f}" for b, a in zip(report["exit_blocks"], report["per_exit_accuracy"])
  )
  lines = [
    f"{report['dataset']}: {report['num_examples']} test examples; accuracy per exit block "
    f"{accuracies}"
  ]
  adaptive = report["adaptive_inference"]
  if adaptive:
    lines.append(
      f"adaptive exit (patience {adaptive['patience']}, cosine > {adaptive['cosine_threshold']}"
      f", {adaptive['exit_mode']}): accuracy {adaptive['accuracy']:.4f}, mean exit block "
      f"{adaptive['mean_exit_block']:.2f}, {adaptive['compute_fraction']:.1%} of full-depth FLOPs"
    )
  lines.append(f"exit {report['exit']}: accuracy {report['accuracy']:.4f}")
  return "\n".join(lines)
