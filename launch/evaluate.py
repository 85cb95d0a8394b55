"""Evaluate a trained run (finished or interrupted) on its own or another prepared dataset.

python -m launch.evaluate --workdir=runs/digits                     # the run's own test split
python -m launch.evaluate --workdir=W --config.data.name=mnist_local --config.data.data_dir=D
python -m launch.evaluate --workdir=W --config.inference.patience=2 --exit=adaptive

Reads the latest checkpoint (``deinforeg_jax.trained``; nothing in the run is changed),
runs every exit over the test split of ``config.data`` (the run's saved config with the
``--config.data.*`` / ``--config.inference.*`` overrides given), with the run's own
preprocessing (its mean/std, rescaled when the dataset stores pixels in other units, or
its vocabulary), and writes to ``--out_dir`` (default ``W/evaluation``):

* ``<dataset>.json``: per-exit accuracy, the adaptive-exit report (``results.json``'s
  ``adaptive_inference``), the accuracy and confusion matrix at ``--exit``;
* ``<dataset>_confusion.png``: that confusion matrix.

``--record_description`` only records the run's dataset description (mean/std, pixel range,
class names) in its checkpoints, read from its own dataset: a run saved before 2026-12-06
lacks it, and a trained model is built from its checkpoint alone
(``deinforeg_jax.trained.record_description``).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from deinforeg_jax import inference, safe_files, steps
from deinforeg_jax import trained as trained_lib
from deinforeg_jax.data import DatasetInfo, eval_batches, load_dataset, text, tfds_source
from deinforeg_jax.data.registry import split_labels
from launch import cli

OVERRIDABLE = ("data.", "inference.")

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
    raise cli.UserError(
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


def evaluate(trained, data_cfg, exit="best"):  # pylint: disable=redefined-builtin
  """The report (module docstring) of ``trained`` on ``data_cfg``'s test split."""

  test, info = evaluation_data(trained, data_cfg)
  labels = split_labels(test)
  if labels.size and (labels.min() < 0 or labels.max() >= trained.num_classes):
    raise cli.UserError(
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


def write_report(report: dict, out_dir: str) -> tuple[str, str]:
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  if not args.workdir:
    raise app.UsageError("--workdir is required.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  refused = sorted(f for f in overrides if not f.startswith(OVERRIDABLE))
  if refused:
    raise cli.UserError(
      f"--config.{refused[0]}: evaluate takes only --config.data.* and --config.inference.* "
      "overrides (the model is the run's own)."
    )
  if args.record_description:
    rewritten = trained_lib.record_description(args.workdir, overrides.get("data.data_dir"))
    print(f"recorded the dataset description in {len(rewritten)} checkpoint(s): "
          + ", ".join(rewritten))
    return
  trained = trained_lib.load(args.workdir)
  for field, value in overrides.items():
    *path, name = field.split(".")
    section = trained.config
    for part in path:
      section = section[part]
    section[name] = value
  report = evaluate(trained, trained.config.data, args.exit)
  out_dir = args.out_dir or os.path.join(trained.workdir, "evaluation")
  json_path, png = write_report(report, out_dir)
  accuracies = " ".join(
    f"[{b}] {a:.4f}" for b, a in zip(report["exit_blocks"], report["per_exit_accuracy"])
  )
  print(f"{trained.describe()}\n{report['dataset']}: {report['num_examples']} test examples; "
        f"accuracy per exit block {accuracies}")
  adaptive = report["adaptive_inference"]
  if adaptive:
    print(
      f"adaptive exit (patience {adaptive['patience']}, cosine > {adaptive['cosine_threshold']}"
      f", {adaptive['exit_mode']}): accuracy {adaptive['accuracy']:.4f}, mean exit block "
      f"{adaptive['mean_exit_block']:.2f}, {adaptive['compute_fraction']:.1%} of full-depth FLOPs"
    )
  print(f"exit {report['exit']}: accuracy {report['accuracy']:.4f}; wrote {json_path} and {png}")


def define_flags() -> None:
  """The command's flags (defined when it runs, so importing this module defines none)."""
  cli.define_config(
    "config",
    help_string="Only --config.data.* / --config.inference.* overrides are read.",
    lock_config=True,
  )
  flags.DEFINE_string("workdir", None, "The trained run (launch.train's --workdir).")
  flags.DEFINE_string(
    "exit", "best", "Exit of the confusion matrix: 'best', 'adaptive' or an exit index."
  )
  flags.DEFINE_string("out_dir", "", "Where to write the report ('' = WORKDIR/evaluation).")
  flags.DEFINE_bool(
    "record_description",
    False,
    "Only record the run's dataset description (mean/std/pixel_max/class names), read from its "
    "dataset (in --config.data.data_dir if given), in its checkpoints: a run saved before "
    "2026-12-06 loads only then.",
  )


def run():
  """Entry point of the ``deinforeg-evaluate`` console script (exit codes: ``launch.cli``)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
