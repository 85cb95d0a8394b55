"""Export a trained run as a serialized JAX function (``jax.export``) and its description.

python -m launch.export --workdir=runs/digits --out=digits.jaxexport

Writes ``OUT``: ``jax.export`` bytes of ``f(x) -> logits`` (``x`` the preprocessed inputs
``[b, *input_shape]``, ``logits`` ``[K, b, C]``, every exit), lowered for ``--platforms``, and
beside it ``OUT`` with ``.json`` for its extension: shapes, preprocessing, class names, exits
(``deinforeg_jax.trained.export``).  Serving needs only ``jax``:
``jax.export.deserialize(bytearray(open(OUT, "rb").read())).call(x)``
(docs/using_a_trained_model.md).
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from deinforeg_jax import trained as trained_lib
from deinforeg_jax.trained import export
from launch import cli


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  args = flags.FLAGS
  if not args["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs at INFO
  if not args.workdir or not args.out:
    raise app.UsageError("--workdir and --out are required.")
  export.check_target(args.out, args.platforms)
  trained = trained_lib.load(args.workdir)
  out, path = export.export(trained, args.out, args.platforms)
  print(f"{trained.describe()}\nwrote {out} ({os.path.getsize(out):,} bytes) and {path}")


def define_flags() -> None:
  """The command's flags (defined when it runs, so importing this module defines none)."""
  flags.DEFINE_string("workdir", None, "The run to export (launch.train's --workdir).")
  flags.DEFINE_string("out", None, "Where to write the serialized function.")
  flags.DEFINE_list(
    "platforms", ["cpu", "cuda", "tpu"], "Platforms to lower for (the caller's must be one)."
  )


def run():
  """Entry point of the ``deinforeg-export`` console script (exit codes: ``launch.cli``)."""
  define_flags()
  cli.run(main)


if __name__ == "__main__":
  run()
