"""Disk and filesystem errors: one line naming the path and the cause, the run stops at the
failed save, the last good checkpoint stays usable, and no lock is left behind.

The full disks are real: a small tmpfs that a checkpoint fills (mounted here when the tests run
as root, skipped otherwise), and a file-size limit (``RLIMIT_FSIZE``), both under the real
``python -m launch.train``; there tensorstore, which writes Orbax's arrays, reports the error as
a ``ValueError``.  An ``OSError(ENOSPC)`` injected into Orbax's metadata write (the other way a
save fails) checks the in-process API: the exact message, nothing trained or saved after it.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import time
import warnings

import orbax.checkpoint as ocp
import pytest
from helpers import TINY_RUNS, run_launcher, saved_state, saved_steps, tiny_config, train_command

from deinforeg_jax import checkpoint, train
from deinforeg_jax.workdir_lock import LOCK_NAME, WorkdirError



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


@pytest.mark.parametrize(
  "message, code",
  [
    ("RESOURCE_EXHAUSTED: Error writing ...: No space left on device [os_error_code='28']", 28),
    ("OUT_OF_RANGE: Error writing ...: File too large [os_error_code='27']", errno.EFBIG),
    ('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database', errno.ENOSPC),  # by status
    ("OUT_OF_RANGE: Error reading ...: Requested byte range [0, 9) is not valid", None),
  ],
  ids=["errno", "efbig", "status", "damaged-read"],
)
def test_tensorstore_value_errors_are_read_as_the_os_errors_they_report(message, code):
  """Anywhere in the chain of what Orbax raises; a damaged file being read is no disk error."""
  try:
    try:
      raise ValueError(message)
    except ValueError as error:
      raise RuntimeError("a background save failed") from error
  except RuntimeError as error:
    cause = checkpoint._os_error(error)
  if code is None:
    assert cause is None
  else:
    assert (cause.errno, cause.strerror) == (code, os.strerror(code))


def launch(
  workdir, *flags: str, file_size_limit: int | None = None, tiny: bool = True
) -> subprocess.CompletedProcess:
  """``python -m launch.train`` of the tiny launched run (``helpers.train_command``; ``tiny=False``:
  of the default model on one device) into ``workdir``, one step unless ``flags`` say otherwise,
  stderr into stdout, under ``RLIMIT_FSIZE`` = ``file_size_limit`` bytes when
  given (Python ignores SIGXFSZ: a write past it fails with EFBIG instead of killing it)."""

  def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

  with warnings.catch_warnings():  # JAX's warning about fork: the child only calls setrlimit
    warnings.filterwarnings("ignore", r"os\.fork\(\) was called", RuntimeWarning)
    command = (
      train_command(workdir) if tiny
      else ["launch.train", f"--workdir={workdir}", "--config.parallel.num_devices=1"]
    )
    return run_launcher(
      *command, "--config.train.max_steps=1", *flags, stderr=subprocess.STDOUT,
      preexec_fn=None if file_size_limit is None else limit_file_size,
    )


def lines(out: str) -> list[str]:
  """What a terminal shows of ``out``: its lines, each as its last progress-bar redraw left it
  (tqdm redraws with a carriage return), empty ones left out."""
  return [line for line in out.split("\n") if line.strip(" \r")]


def error_line(out: str) -> str:
  """The ``error: ...`` line of ``out`` (after a progress bar on the same line, if any)."""
  assert "Traceback" not in out, out
  assert len(lines(out)) <= 3, out
  return out[out.index("error: ") :].split("\n")[0]



def test_asyncio_reports_of_abandoned_disk_error_futures_are_dropped_and_others_kept():
  """A tensorstore write's future that failed in C++ has no Python traceback; under load it
  can be the one asyncio reports as "never retrieved" after the run's one error line."""
  import logging

  def record(error):
    return logging.LogRecord(
      "asyncio", logging.ERROR, "base_events.py", 1, "Future exception was never retrieved",
      None, (type(error), error, error.__traceback__),
    )

  quiet = checkpoint._QuietAbandonedFutures()
  full = ValueError("RESOURCE_EXHAUSTED: Error writing x: No space left on device "
                    "[os_error_code='28']")
  assert not quiet.filter(record(full))  # no traceback: a tensorstore future
  try:
    raise ValueError("a bug, not a disk error")
  except ValueError as bug:
    assert quiet.filter(record(bug))
  try:  # a disk error raised in our own code (not Orbax's) is still reported
    raise full
  except ValueError as ours:
    assert quiet.filter(record(ours))

def test_the_launcher_says_in_one_line_that_the_workdir_is_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("x")
  proc = launch(path)
  assert proc.returncode == 1
  assert proc.stdout.strip() == (
    f"error: cannot use {path} as the workdir: it is a file, not a folder; give --workdir a "
    "folder (it is created if missing)"
  )


def test_the_launcher_says_in_one_line_that_a_file_size_limit_stopped_it(tmp_path):
  workdir = tmp_path / "run"
  proc = launch(workdir, file_size_limit=0)  # not even the lock file can be written
  assert proc.returncode == 1
  assert proc.stdout.strip() == (
    f"error: cannot write {workdir}/{LOCK_NAME}: File too large (EFBIG); a file-size limit was "
    "reached (ulimit -f): raise it or use another --workdir"
  )
  assert os.listdir(workdir) == []  # no lock, nothing else


def test_a_file_size_limit_that_a_checkpoint_file_passes_stops_the_launcher_in_one_line(tmp_path):
  """64 KiB: the lock, metrics and events fit, the tiny model's checkpoint files (up to 160-220
  KiB each, ~0.5 MiB in all) do not; tensorstore reports that as OUT_OF_RANGE (EFBIG)."""
  workdir = tmp_path / "run"
  proc = launch(
    workdir, "--config.train.max_steps=3", "--config.checkpoint.every_steps=1",
    file_size_limit=2**16,
  )
  assert proc.returncode == 1, proc.stdout
  assert error_line(proc.stdout) == (
    f"error: cannot save the checkpoint of step 1 to {workdir}/checkpoints/1: File too large "
    "(EFBIG); a file-size limit was reached (ulimit -f): raise it or use another --workdir. The "
    "run stops; no checkpoint of this run was saved before."
  )
  assert saved_steps(str(workdir)) == [] and not os.path.exists(workdir / LOCK_NAME)


@pytest.fixture
def tmpfs(tmp_path):
  """``resize(size)``: a tmpfs of ``size`` (mount's units: "15m") at ``tmp_path/"tmpfs"``,
  mounted by the first call and unmounted after the test.  Mounting needs root."""
  if os.geteuid() != 0:
    pytest.skip("a real full filesystem is a tmpfs mounted by the test, which needs root")
  point = tmp_path / "tmpfs"
  point.mkdir()
  mounted = []

  def resize(size: str):
    options = f"remount,size={size}" if mounted else f"size={size}"
    proc = subprocess.run(
      ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
      capture_output=True, text=True, check=False,
    )
    if proc.returncode and not mounted:
      pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    mounted.append(size)
    return point

  try:
    yield resize
  finally:
    if mounted:
      subprocess.run(["umount", str(point)], check=True)


@pytest.mark.parametrize("use_async", [True, False], ids=["async", "sync"])
def test_a_really_full_filesystem_stops_the_launcher_in_one_line_and_the_same_command_resumes(
  tmpfs, use_async
):
  """The default model's checkpoint is ~6 MiB (its parameters and LARS momentum): a 15 MiB tmpfs
  holds the two kept ones (steps 1 and 2), and the third fills it (not the tiny launched run:
  in a 1200 KiB tmpfs its ~0.5 MiB checkpoints failed 3 tries in 5, at another step or with
  tracebacks after the error line).  Once there is room, the same command resumes from step 2,
  the last good one."""
  workdir = tmpfs("15m") / "run"
  flags = (
    "--config.train.max_steps=5",  # step 3's failure is raised by the save of step 4 at the latest
    "--config.checkpoint.every_steps=1",
    f"--config.checkpoint.use_async={use_async}",
  )
  proc = launch(workdir, *flags, tiny=False)
  assert proc.returncode == 1, proc.stdout
  directory = workdir / "checkpoints"
  assert error_line(proc.stdout) == (
    f"error: cannot save the checkpoint of step 3 to {directory}/3: No space left on device "
    "(ENOSPC); free space on that filesystem or use another --workdir. The run stops; the last "
    f"good checkpoint, step 2 in {directory}, is kept and the same command resumes from it once "
    "that is fixed."
  )
  assert saved_steps(str(workdir)) == [1, 2] and not os.path.exists(workdir / LOCK_NAME)

  tmpfs("64m")
  proc = launch(workdir, *flags, tiny=False)
  assert proc.returncode == 0, proc.stdout
  assert "from step 2;" in proc.stdout and "Traceback" not in proc.stdout
  assert sorted(os.listdir(directory)) == ["4", "5"]  # the failed save's partial folder is gone
  assert json.loads((workdir / "results.json").read_text())["steps"] == 5


def test_a_checkpoint_folder_that_cannot_be_made_is_a_workdir_error(tmp_path):
  (tmp_path / "checkpoints").write_text("a file where the folder goes")
  with pytest.raises(WorkdirError, match=rf"cannot create the checkpoint folder {tmp_path}/"):
    checkpoint.RunCheckpointer(str(tmp_path))
