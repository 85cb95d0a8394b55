"""A damaged newest checkpoint outside training: ``load``/``launch.evaluate`` read the previous
intact step and say so in one warning line; with no intact step left, one error line; and a
finished run whose final checkpoint is damaged is not "already finished" (``load`` would refuse
it) but retrains from the previous step.  Runs are tiny (``helpers.short_config``).
"""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import (
  TINY_RUNS,
  assert_trees_equal,
  run_launcher,
  saved_state,
  saved_steps,
  short_config,
)

import deinforeg_jax
from deinforeg_jax import train
from deinforeg_jax.trained.loading import WorkdirError

pytestmark = TINY_RUNS


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished 4-step run with checkpoints at steps 2 and 4, and its final state."""
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  train.train_and_evaluate(short_config(4, every_steps=2), workdir)
  assert saved_steps(workdir) == [2, 4]
  return workdir, saved_state(workdir)[0]


def damaged_copy(finished_run, tmp_path, *steps: int) -> str:
  """A copy of the finished run with every array file of ``steps`` cut to a third (as a disk
  that filled or a copy that stopped part way leaves them)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run[0], workdir)
  for step in steps:
    state_dir = os.path.join(workdir, "checkpoints", str(step), "state")
    for folder in (os.path.join(state_dir, "d"), os.path.join(state_dir, "ocdbt.process_0", "d")):
      for name in os.listdir(folder) if os.path.isdir(folder) else ():
        path = os.path.join(folder, name)
        os.truncate(path, os.path.getsize(path) // 3)
  return workdir


def test_evaluate_reads_the_previous_intact_step_and_says_so_in_one_warning_line(
  finished_run, tmp_path
):
  workdir = damaged_copy(finished_run, tmp_path, 4)
  proc = run_launcher("launch.evaluate", f"--workdir={workdir}", f"--out_dir={tmp_path}")
  assert proc.returncode == 0, proc.stderr
  warning = proc.stderr.strip()
  assert "\n" not in warning and "Traceback" not in proc.stdout + proc.stderr
  assert warning.startswith(
    f"warning: the newest checkpoint of {workdir} is damaged (step 4 in {workdir}/checkpoints/4: "
  )
  assert warning.endswith("); read step 2, the newest intact one, instead")
  assert "(step 2," in proc.stdout.splitlines()[0]  # what was evaluated: TrainedModel.describe
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))  # a reader moves nothing


def test_load_returns_the_previous_intact_step_and_notes_the_damaged_one(
  finished_run, tmp_path, capsys
):
  workdir = damaged_copy(finished_run, tmp_path, 4)
  model = deinforeg_jax.load(workdir)
  assert model.step == 2
  warning = capsys.readouterr().err.strip()
  assert warning.startswith("warning: the newest checkpoint") and warning[9:] in model.notes
  step_2 = saved_state(workdir, 2)[0]
  assert_trees_equal(model.variables["params"], step_2["params"])


def test_load_with_no_intact_step_left_is_one_error_line_naming_each_step(finished_run, tmp_path):
  workdir = damaged_copy(finished_run, tmp_path, 2, 4)
  with pytest.raises(WorkdirError) as refused:
    deinforeg_jax.load(workdir)
  message = str(refused.value)
  assert "\n" not in message
  assert message.startswith(
    f"cannot load {workdir}: no checkpoint of {workdir} is intact: step 4 in "
    f"{workdir}/checkpoints/4: "
  )
  assert f"; step 2 in {workdir}/checkpoints/2: " in message


def test_a_finished_run_whose_final_checkpoint_is_damaged_retrains_from_the_previous_step(
  finished_run, tmp_path, capsys
):
  workdir = damaged_copy(finished_run, tmp_path, 4)
  capsys.readouterr()
  train.train_and_evaluate(short_config(4, every_steps=2), workdir)
  out = capsys.readouterr().out
  assert "already finished" not in out
  assert f"{workdir}/checkpoints/4: " in out and "trying the previous kept step" in out
  assert "resuming from the checkpoint at step 2" in out
  final, step = saved_state(workdir)
  assert step == 4
  assert_trees_equal(final, finished_run[1])  # as the run never damaged
  assert deinforeg_jax.load(workdir).step == 4

  train.train_and_evaluate(short_config(4, every_steps=2), workdir)  # now intact: finished
  assert "already finished: the checkpoint at step 4" in capsys.readouterr().out
