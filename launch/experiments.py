"""Run an experiment grid: rules x datasets x label-noise rates x seeds, under a budget.

  python -m launch.experiments --grid=launch/configs/experiments/noise_cifar.py \\
      --root=runs/noise_cifar --grid.base.data.data_dir=$HOME/tfds
  python -m launch.experiments --grid=launch/configs/experiments/paper_vision.py \\
      --root=/shared/paper_vision --executor=ray --ray_address=auto

The grid config's fields, the cell layout under ``--root``, the table and the plots are
described in ``deinforeg_jax/studies``; ``--executor=ray`` runs the cells as Ray tasks
(``deinforeg_jax/studies/ray_executor.py``, docs/cluster.md).  Rerunning the same command
resumes the grid; ``--report_only`` rebuilds table and plots from the cells' summaries alone.
This file is intentionally kept short: the logic is in ``deinforeg_jax.studies``.
"""

from __future__ import annotations

import os

from launch import cli  # absl and ml_collections only: quick

if __name__ == "__main__":
  cli.remember_signals()  # a SIGTERM during the imports below (seconds): exit 75 before a cell

from absl import app, flags, logging  # noqa: E402

from deinforeg_jax.studies import executors, ray_executor  # noqa: E402
from deinforeg_jax.studies import grid as grids  # noqa: E402
from deinforeg_jax.studies.runner import run_grid  # noqa: E402

cli.define_config("grid", None, help_string="Grid config (ml_collections file).")
_ROOT = flags.DEFINE_string("root", None, "Output directory of the grid.", required=True)
_DRY_RUN = flags.DEFINE_bool(
  "dry_run", False, "Print the cells, where they would train and their cost; train nothing."
)
_REPORT_ONLY = flags.DEFINE_bool(
  "report_only", False, "Train nothing; write table and plots from the finished cells."
)
_EXECUTOR = flags.DEFINE_enum(
  "executor", "local", ["local", "ray"],
  "local: the cells one after another in this process; ray: each cell a Ray task "
  "(pip install \"deinforeg-jax[cluster]\"; --root on storage every node sees).",
)
_RAY_ADDRESS = flags.DEFINE_string(
  "ray_address", None, "--executor=ray: the cluster (auto, HOST:PORT); unset: a local Ray "
  "instance sized to this machine.",
)
_RAY_MAX_RETRIES = flags.DEFINE_integer(
  "ray_max_retries", 3, "--executor=ray: restarts of a cell whose worker or node died.",
  lower_bound=0,
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if flags.FLAGS.grid is None:
    raise app.UsageError("--grid=launch/configs/experiments/<name>.py is required.")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  grid = flags.FLAGS.grid
  # Cells of one rule and dataset compile the same programs: each cell reads those an earlier
  # one wrote to its config.train.compile_cache (deinforeg_jax/compile_cache.py).
  root, executor = _ROOT.value, executors.LocalExecutor()
  if _EXECUTOR.value == "ray":
    root = os.path.abspath(root)  # the workers' working directory is not ours
    executor = ray_executor.RayExecutor(
      _RAY_ADDRESS.value, grids.cell_resources(grid), max_retries=_RAY_MAX_RETRIES.value,
      metric=grid.metric, stop_requested=cli.pending_signal,
    )
  run_grid(
    grid, root, executor=executor, dry_run=_DRY_RUN.value, report_only=_REPORT_ONLY.value,
    stop_requested=cli.pending_signal,
  )


def run():
  """Entry point of the ``deinforeg-experiments`` console script (exit codes: ``launch.cli``;
  SIGTERM stops the grid in its current cells, which save a checkpoint: exit 75, and the same
  command continues)."""
  cli.run(main, on_signal="remember")


if __name__ == "__main__":
  run()
