"""Evaluate a trained run (finished or interrupted) on its own or another prepared dataset.

python -m launch.evaluate --workdir=runs/digits                     # the run's own test split
python -m launch.evaluate --workdir=W --config.data.name=mnist_local --config.data.data_dir=D
python -m launch.evaluate --workdir=W --config.inference.patience=2 --exit=adaptive

Reads the latest checkpoint (``deinforeg_jax.trained``; nothing in the run is changed), runs
every exit over the test split of ``config.data`` (the run's saved config with the
``--config.data.*`` / ``--config.inference.*`` overrides given) with the run's own preprocessing,
and writes to ``--out_dir`` (default ``W/evaluation``) ``<dataset>.json`` (per-exit accuracy, the
adaptive-exit report, the accuracy and confusion matrix at ``--exit``) and
``<dataset>_confusion.png`` (``deinforeg_jax.trained.evaluation``).

``--record_description`` only records the run's dataset description (mean/std, pixel range,
class names) in its checkpoints, read from its own dataset: a run saved before 2026-12-06
lacks it, and a trained model is built from its checkpoint alone
(``deinforeg_jax.trained.record_description``).
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from deinforeg_jax import trained as trained_lib
from deinforeg_jax.trained import evaluation
from launch import cli


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  if not args.workdir:
    raise app.UsageError("--workdir is required.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  evaluation.check_overrides(overrides)
  if args.record_description:
    rewritten = trained_lib.record_description(args.workdir, overrides.get("data.data_dir"))
    print(f"recorded the dataset description in {len(rewritten)} checkpoint(s): "
          + ", ".join(rewritten))
    return
  trained = trained_lib.load(args.workdir)
  evaluation.apply_overrides(trained.config, overrides)
  report = evaluation.evaluate(trained, trained.config.data, args.exit)
  out_dir = args.out_dir or os.path.join(trained.workdir, "evaluation")
  json_path, png = evaluation.write_report(report, out_dir)
  print(f"{trained.describe()}\n{evaluation.summary(report)}; wrote {json_path} and {png}")


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
