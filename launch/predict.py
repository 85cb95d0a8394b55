"""Classify new inputs with a trained run and write a CSV.

python -m launch.predict --workdir=runs/digits --input=DIR --out=preds.csv
python -m launch.predict --workdir=W --input=images.npz --exit=adaptive --out=preds.csv
python -m launch.predict --workdir=W_text --input=texts.jsonl --out=preds.csv

``--input``: an image folder, an ``.npz`` with key ``x`` or ``images`` (raw pixels), or JSON
Lines (``.jsonl``/``.jsonl.gz``) for a text run (``deinforeg_jax.trained.inputs``); inputs go
through the run's own preprocessing.  ``--exit``: ``best`` (default), ``adaptive`` or an exit
index.  CSV columns: ``id`` (relative path, array index or the line's ``id``), ``label``,
``class_name``, ``probability`` (of that label), ``exit``, ``exit_block``
(``deinforeg_jax.trained.prediction_csv``).
"""

from __future__ import annotations

import numpy as np
from absl import app, flags, logging

from deinforeg_jax import trained as trained_lib
from deinforeg_jax.trained import inputs, prediction_csv
from launch import cli


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  if not args["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs at INFO
  if not args.workdir or not args.input:
    raise app.UsageError("--workdir and --input are required.")
  prediction_csv.check_path(args.out)
  trained = trained_lib.load(args.workdir)
  ids, raw = inputs.read_input(args.input, trained)
  prediction = trained.predict(raw, exit=args.exit, batch_size=args.batch_size or None)
  prediction_csv.write_csv(args.out, ids, prediction)
  counts = np.bincount(prediction.exits, minlength=trained.num_exits)
  print(
    f"{trained.describe()}\n{len(ids)} inputs, exit={args.exit} (exits used: "
    f"{counts.tolist()}); wrote {args.out}"
  )


def define_flags() -> None:
  """The command's flags (defined when it runs, so importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "The trained run (launch.train's --workdir).")
  flags.DEFINE_string("input", None, "Image folder, .npz (x or images) or .jsonl text.")
  flags.DEFINE_string("out", "predictions.csv", "The CSV to write.")
  flags.DEFINE_string("exit", "best", "'best', 'adaptive' or an exit index.")
  flags.DEFINE_integer("batch_size", 0, "Rows per call (0: the run's eval batch size).")


def run():
  """Entry point of the ``deinforeg-predict`` console script (exit codes: ``launch.cli``)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
