"""Starting a run in a workdir that holds one: finished already, past its end, or resumable.

``already_finished`` answers before anything compiles: a run whose checkpoint is the end of
this very config returns its ``results.json`` and does nothing; a changed run is refused
(``checkpoint.RunCheckpointer.check_latest``) unless ``config.checkpoint.allow_changed`` lists
the change; a checkpoint past the end of the config is refused.
"""

from __future__ import annotations

import json
import os
from typing import Any

from deinforeg_jax import checkpoint
from deinforeg_jax.run import Run


def already_finished(run: Run, log, checkpointer, workdir: str) -> dict[str, Any] | None:
  """The results of a run that already ended with this very config (nothing is then trained,
  evaluated or written), else None; a changed run is refused here, before anything compiles."""
  if checkpointer.latest_step() is None:
    log.start_fresh()
    return None
  expected = checkpoint.make_metadata(run.config, run.abstract_state(), run.info)
  saved_step = checkpointer.check_latest(expected, allowed_changes(run.config))
  check_not_past_the_end(run, saved_step, workdir)
  finished = finished_results(run, workdir, saved_step)
  # Finished only if the final parameters read back verified, as ``load`` reads them; if not,
  # ``RunCheckpointer.restore`` sets that step aside and the run retrains from the previous one.
  if finished is None or checkpointer.damage(saved_step) is not None:
    return None
  log.info(
    f"already finished: the checkpoint at step {saved_step} is the end of this run and "
    f"{os.path.join(workdir, 'results.json')} holds its results (best block "
    f"{finished['best_block']}: test accuracy {finished['best_test_accuracy']:.4f}); "
    "nothing was trained, evaluated or written. To train longer, raise "
    "config.train.num_epochs with --config.checkpoint.allow_changed=train.num_epochs."
  )
  return finished


def allowed_changes(config) -> tuple[str, ...]:
  """The fields ``config.checkpoint.allow_changed`` lets a resume change."""
  return tuple(f for f in config.checkpoint.allow_changed.split(",") if f)


def finished_results(run: Run, workdir: str, step: int) -> dict | None:
  """The ``results.json`` of a run that already ended at ``step`` with this very config, or
  None (not at the end, no results written yet, or results of other settings: evaluate)."""
  path = os.path.join(workdir, "results.json")
  if step < run.total_steps or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  same_config = results.get("config") == json.loads(json.dumps(run.config.to_dict()))
  return results if results.get("steps") == step and same_config else None


def check_not_past_the_end(run: Run, step: int, workdir: str) -> None:
  """A resumed run must not already be past where ``config`` ends."""
  config, per_epoch = run.config, run.steps_per_epoch
  if step > run.total_steps:
    raise checkpoint.CheckpointMismatchError(
      f"the checkpoint in {workdir} is at step {step} ({step / per_epoch:.3g} epochs "
      f"of {per_epoch} steps done), past the end of this run (config.train.num_epochs="
      f"{config.train.num_epochs}, config.train.max_steps={config.train.max_steps}: "
      f"{run.total_steps} steps). Raise them to at least what is done (allowing the change with "
      "--config.checkpoint.allow_changed=train.num_epochs), or use a new --workdir."
    )
