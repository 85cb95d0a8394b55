"""Disk and filesystem errors: one line naming the path and the cause, the run stops at the
failed save, the last good checkpoint stays usable, and no lock is left behind.

A full disk is injected as ``OSError(ENOSPC)`` in Orbax's metadata write of one step (the
save path every checkpoint takes); a file-size limit (``RLIMIT_FSIZE``) and a workdir that
is a file are real.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest
from helpers import TINY_RUNS, launch_env
from test_checkpoint import saved_state, tiny_config
from test_faults import saved_steps

from deinforeg_jax import checkpoint, train
from deinforeg_jax.workdir_lock import LOCK_NAME, WorkdirError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_saving_every_2_steps(use_async: bool):
  config = tiny_config(num_epochs=1)
  config.train.max_steps = 6
  config.checkpoint.every_steps = 2
  config.checkpoint.keep = 1  # the previous checkpoint is the only one: it must survive
  config.checkpoint.use_async = use_async
  return config


def disk_full_at(monkeypatch, step: int) -> list[int]:
  """Makes the save of ``step`` fail with ENOSPC; returns the steps whose saves were tried."""
  original = ocp.JsonCheckpointHandler._save_fn
  tried = []

  async def save_fn(self, item, directory):
    tried.append(item["step"])
    if item["step"] == step:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "metadata"))
    return await original(self, item, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", save_fn)
  return tried


@TINY_RUNS
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_full_disk_stops_the_run_at_the_failed_save_and_keeps_the_last_good_checkpoint(
  tmp_path, monkeypatch, use_async
):
  workdir = str(tmp_path / "run")
  tried = disk_full_at(monkeypatch, 4)
  with pytest.raises(checkpoint.CheckpointWriteError) as failed:
    train.train_and_evaluate(config_saving_every_2_steps(use_async), workdir)
  message = str(failed.value)
  assert message == (
    f"cannot save the checkpoint of step 4 to {workdir}/checkpoints/4: No space left on device "
    "(ENOSPC); free space on that filesystem or use another --workdir. The run stops; the last "
    f"good checkpoint, step 2 in {workdir}/checkpoints, is kept and the same command resumes "
    "from it once that is fixed."
  )
  assert failed.value.errno == errno.ENOSPC and isinstance(failed.value, OSError)
  assert tried == [2, 4]  # nothing saved (or tried) after the failed save
  assert saved_steps(workdir) == [2]
  assert not os.path.exists(os.path.join(workdir, LOCK_NAME))
  if not use_async:  # the failure is known at once: no step after it was trained
    metrics = os.path.join(workdir, "metrics.jsonl")
    lines = open(metrics).read().split("\n") if os.path.exists(metrics) else []
    assert [json.loads(line)["step"] for line in lines if line] == []

  _, step = saved_state(workdir)  # the last good checkpoint reads and resumes
  assert step == 2
  monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", _ORIGINAL_SAVE_FN)
  train.train_and_evaluate(config_saving_every_2_steps(use_async), workdir)
  assert saved_state(workdir)[1] == 6
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["6"]  # no partial step


_ORIGINAL_SAVE_FN = ocp.JsonCheckpointHandler._save_fn


def test_an_async_failure_is_raised_by_check_once_written_and_again_by_every_later_call(
  tmp_path, monkeypatch
):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  disk_full_at(monkeypatch, 1)
  saver = checkpoint.RunCheckpointer(str(tmp_path), keep=1, use_async=True, info=print)
  state = {"w": jnp.arange(4.0)}
  saver.save(state, {"step": 0})
  saver.wait()
  saver.save(state, {"step": 1})
  while saver._manager.is_saving_in_progress():  # the background write fails
    time.sleep(0.01)
  with pytest.raises(checkpoint.CheckpointWriteError, match=r"step 1 to .*ENOSPC.*step 0 in"):
    saver.check()
  for again in (saver.check, saver.wait, lambda: saver.save(state, {"step": 2})):
    with pytest.raises(checkpoint.CheckpointWriteError, match="step 1"):
      again()
  saver.close()  # already reported: closes quietly
  assert saved_steps(str(tmp_path)) == [0]


def launch(workdir: str, file_size_limit: str = "unlimited") -> subprocess.CompletedProcess:
  """``launch.train`` on ``workdir`` (one step) under ``ulimit -f <file_size_limit>``."""
  command = (
    f"ulimit -f {file_size_limit}; exec {sys.executable} -m launch.train --workdir={workdir} "
    "--config.train.max_steps=1 --config.parallel.num_devices=1"
  )
  return subprocess.run(
    ["bash", "-c", command],
    cwd=REPO,
    env=launch_env(1),
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )


def test_the_launcher_says_in_one_line_that_the_workdir_is_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  proc = launch(str(path))
  assert proc.returncode == 1
  assert proc.stderr.strip() == (
    f"error: cannot use {path} as the workdir: it is a file, not a folder; give --workdir a "
    "folder (it is created if missing)"
  )


def test_the_launcher_says_in_one_line_that_a_file_size_limit_stopped_it(tmp_path):
  workdir = tmp_path / "run"
  proc = launch(str(workdir), file_size_limit="0")  # not even the lock file can be written
  assert proc.returncode == 1
  assert proc.stderr.strip() == (
    f"error: cannot write {workdir}/{LOCK_NAME}: File too large (EFBIG); a file-size limit was "
    "reached (ulimit -f): raise it or use another --workdir"
  )
  assert os.listdir(workdir) == []  # no lock, nothing else


def test_a_checkpoint_folder_that_cannot_be_made_is_a_workdir_error(tmp_path):
  (tmp_path / "checkpoints").write_text("a file where the folder goes")
  with pytest.raises(WorkdirError, match=rf"cannot create the checkpoint folder {tmp_path}/"):
    checkpoint.RunCheckpointer(str(tmp_path))
