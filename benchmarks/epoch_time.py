"""A real run's epoch, end to end, against the isolated time of its train step.

  python -m benchmarks.epoch_time --config=launch/configs/cifar10_vgg.py \\
      --config.data.name=cifar10_20k --config.data.data_dir=DIR --steps=40 \\
      --workdir=runs/epoch_time

First times the run's compiled train step alone (``--step_reps`` steps after one warm-up,
on one synthetic batch of the run's shapes, state on the run's mesh), then trains ``--steps``
steps (``config.train.max_steps``; 0 = the config's whole epochs) through
``train.train_and_evaluate``, the launcher's path (data pipeline, augmentation, progress
bar, checkpoints, evaluation of the whole test set, adaptive-exit report), in a fresh
``<workdir>/run``. Prints one JSON line:

* ``loop_over_steps = train_time_s / (steps * median_step_s)``: what the loop adds to the
  steps themselves (1.00 = nothing; the project's bar is 1.05);
* ``eval_time_s`` (every evaluation, including compiling the eval step once) and
  ``wall_time_s`` (start to ``results.json``: setup, compiling, training, evaluation);
* ``steps_per_s`` of the run and of the isolated step.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics

from absl import app, flags
from ml_collections import config_flags

from benchmarks import step_time
from deinforeg_jax import parallel, train
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data import load_dataset

config_flags.DEFINE_config_file(
  "config",
  os.path.join(os.path.dirname(__file__), "..", "launch", "configs", "default.py"),
  "The run's config (same --config flags as launch.train).",
  lock_config=True,
)
_STEPS = flags.DEFINE_integer("steps", 40, "train steps of the run (config.train.max_steps)")
_STEP_REPS = flags.DEFINE_integer("step_reps", 5, "timed steps of the isolated train step")
_WORKDIR = flags.DEFINE_string("workdir", None, "the run goes to <workdir>/run", required=True)


def isolated_step_times(config, info, reps: int) -> list[float]:
  """Seconds per call of the run's compiled train step (``step_time.StepRunner``) on one
  synthetic batch of the run's shapes, after one warm-up call."""
  mesh = parallel.make_data_mesh(config.parallel.num_devices)
  shapes = (info.input_shape, info.num_classes)
  batch = parallel.shard_batch(
    step_time.synthetic_batches(1, config.data.batch_size, 0, *shapes)[0], mesh
  )
  runner = step_time.StepRunner(config, reps + 1, mesh, batch, *shapes)
  return [runner.timed_step(batch) for _ in range(reps + 1)][1:]


def main(argv):
  del argv
  config = flags.FLAGS.config.copy_and_resolve_references()
  if _STEPS.value:
    config.train.max_steps = _STEPS.value
  validate_config(config)
  if config.data.kind != "image":
    raise app.UsageError("epoch_time times image runs (the isolated step uses image batches).")
  info = load_dataset(config.data).info
  step_times = isolated_step_times(config, info, _STEP_REPS.value)
  workdir = os.path.join(os.path.expanduser(_WORKDIR.value), "run")
  shutil.rmtree(workdir, ignore_errors=True)  # a fresh run each time: no resume
  results = train.train_and_evaluate(config, workdir)
  median = statistics.median(step_times)
  print(
    json.dumps(
      {
        "benchmark": "epoch_time",
        "dataset": results["dataset"],
        "arch": config.model.arch,
        "rule": config.rule,
        "width": config.model.width,
        "batch_size": config.data.batch_size,
        "devices": parallel.make_data_mesh(config.parallel.num_devices).size,
        "steps": results["steps"],
        "median_step_s": median,
        "step_times_s": step_times,
        "train_time_s": results["train_time_s"],
        "loop_over_steps": results["train_time_s"] / (results["steps"] * median),
        "eval_time_s": results["eval_time_s"],
        "wall_time_s": results["wall_time_s"],
        "steps_per_s": results["steps_per_s"],
        "isolated_steps_per_s": 1.0 / median,
        "host_load_1m": os.getloadavg()[0],
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
