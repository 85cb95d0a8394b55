"""Every launcher, run as a user runs it, answers a user's mistake with one line and no traceback.

A mistake (a bad config field, a changed resume, a diverging run, a damaged dataset, a bad input
file, a busy grid root ...) is one line ``error: <message>`` on stderr and exit 1; SIGTERM is one
line and exit 75 (``launch.experiments`` too), after which the same command continues; a signal
after the work completed cannot turn a finished run into exit 143 (``launch.cli``).  The bad
inputs run in one driver process that forks a child per command (``helpers.run_launchers``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import run_launchers, start_launcher

from deinforeg_jax import preemption, train
from deinforeg_jax.data import prepare
from deinforeg_jax.workdir_lock import WorkdirLock
from launch.configs import default

# A finished run of two steps, as the command line gives it (``--config.<field>=<value>``).
RUN = {
  "model.width": 0.125,
  "model.projector": "32-32",
  "train.num_epochs": 1,
  "train.max_steps": 2,
  "parallel.num_devices": 1,
  "checkpoint.use_async": False,
}
RUN_FLAGS = [f"--config.{field}={value}" for field, value in RUN.items()]
# The config checks of the issue: the flag and what its one line says.
CONFIG_CHECKS = {
  "batch_size": ("--config.data.batch_size=-5", "config.data.batch_size=-5 must be a positive"),
  "rule": ("--config.rule=nonsense", "config.rule='nonsense' must be one of"),
  "vgg_blocks": ("--config.model.vgg_blocks=garbage", "vgg_blocks='garbage' does not parse"),
  "base_lr": ("--config.optim.base_lr=nan", "config.optim.base_lr=nan must be a positive finite"),
  "num_blocks": ("--config.model.num_blocks=99", "config.model.num_blocks=99 is out of range"),
  "optimizer": ("--config.optim.name=rmsprop", "config.optim.name='rmsprop' must be one of"),
  "keep": ("--config.checkpoint.keep=0", "config.checkpoint.keep=0 must be a positive integer"),
  # Checked where the field is used (ConfigError), not by validate_config:
  "pipeline_schedule": (
    "--config.parallel.mode=pipeline --config.parallel.pipeline_schedule=zigzag",
    "config.parallel.pipeline_schedule='zigzag' is unknown",
  ),
}

# One cell; with two epochs, the tiny launched run's programs (``helpers.TINY_TRAIN_FLAGS``).
GRID = '''
from launch.configs import default
from launch.configs.experiments import make_grid


def get_config():
  base = default.get_config()
  base.model.width = 0.25
  base.model.projector = "32-32"
  base.train.num_epochs = {epochs}
  base.checkpoint.every_steps = 5
  base.checkpoint.use_async = False
  base.parallel.num_devices = 1
  return make_grid(base, ("deinforeg",), ("digits",), (0,), seeds=(0,))
'''
CELL = os.path.join("digits", "deinforeg", "noise0", "seed0")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  config = default.get_config()
  for field, value in RUN.items():
    section, name = field.split(".")
    config[section][name] = value
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  train.train_and_evaluate(config, workdir)
  return workdir


def _write_grid(path, epochs: int) -> str:
  path.write_text(GRID.format(epochs=epochs))
  return str(path)


def _train_command(workdir) -> list[str]:
  return ["launch.train", f"--workdir={workdir}", *RUN_FLAGS]


def _bad_inputs(tmp_path, finished_run) -> dict[str, tuple[list[str], int, str]]:
  """``{case: (command, exit code, words of its one error line)}``."""
  rng = np.random.default_rng(0)
  arrays = {
    "x_train": rng.integers(0, 255, (64, 8, 8, 1), np.uint8),
    "y_train": np.arange(64) % 4,
    "x_test": rng.integers(0, 255, (16, 8, 8, 1), np.uint8),
    "y_test": np.arange(16) % 4,
  }
  np.savez(tmp_path / "data.npz", **arrays)
  prepare.prepare_npz("damaged", str(tmp_path / "tfds"), str(tmp_path / "data.npz"))
  (record_file,) = glob.glob(str(tmp_path / "tfds/damaged/1.0.0/damaged-train.array_record*"))
  os.truncate(record_file, 3000)
  np.savez(tmp_path / "empty.npz", x=np.zeros((0, 8, 8, 1), np.uint8))
  np.savez(tmp_path / "nan.npz", x=np.full((2, 8, 8, 1), np.nan, np.float32))
  whole = (tmp_path / "data.npz").read_bytes()
  (tmp_path / "truncated.npz").write_bytes(whole[: len(whole) // 2])
  (tmp_path / "folder").mkdir()
  shutil.copytree(finished_run, tmp_path / "changed")  # each run its own workdir (its lock)
  predict = ["launch.predict", f"--workdir={finished_run}", f"--out={tmp_path / 'p.csv'}"]
  grid = ["launch.experiments", f"--grid={_write_grid(tmp_path / 'grid.py', 1)}"]
  checks = {
    case: ([*_train_command(tmp_path / case), *flag.split()], 1, words)
    for case, (flag, words) in CONFIG_CHECKS.items()
  }
  return {
    **checks,
    "unknown_field": (
      [*_train_command(tmp_path / "unknown_field"), "--config.trian.num_epochs=2"],
      1,
      "--config.trian.num_epochs: the config has no field 'trian'. Did you mean \"train\"",
    ),
    "changed_resume": (
      [*_train_command(tmp_path / "changed"), "--config.optim.base_lr=0.5"],
      1,
      "config.optim.base_lr: saved 0.2, now 0.5",
    ),
    "diverging": (
      [*_train_command(tmp_path / "diverging"), "--config.optim.base_lr=1e30",
       "--config.optim.schedule=constant"],
      1,
      "there is no checkpoint yet, so the same command starts afresh",
    ),
    "damaged_records": (
      [*_train_command(tmp_path / "damaged_records"), "--config.data.name=damaged",
       f"--config.data.data_dir={tmp_path / 'tfds'}"],
      1,
      f"{record_file}: the train split of damaged is damaged",
    ),
    "no_grow_source": (
      [*_train_command(tmp_path / "grown"), f"--config.grow.from_workdir={tmp_path / 'none'}"],
      1,
      f"config.grow.from_workdir='{tmp_path / 'none'}'",
    ),
    "busy_root": ([*grid, f"--root={tmp_path / 'busy'}"], 1, "is in use by pid"),
    "grid_field": (
      [*grid, f"--root={tmp_path / 'grid'}", "--grid.base.trian=1"],
      1,
      "--grid.base.trian: the config has no field 'trian'.",
    ),
    "truncated_npz": (
      [*predict, f"--input={tmp_path / 'truncated.npz'}"], 1, "is not a readable .npz archive"
    ),
    "empty_npz": ([*predict, f"--input={tmp_path / 'empty.npz'}"], 1, "empty.npz holds no inputs"),
    "nan_pixels": ([*predict, f"--input={tmp_path / 'nan.npz'}"], 1, "NaN or infinite pixels"),
    "predict_out_folder": (
      [*predict, f"--input={tmp_path / 'empty.npz'}", f"--out={tmp_path / 'folder'}"],
      1,
      "is a folder: give the CSV file",
    ),
    "evaluate_model_field": (
      ["launch.evaluate", f"--workdir={finished_run}", "--config.model.width=2"],
      1,
      "evaluate takes only --config.data.* and --config.inference.*",
    ),
    "export_out_folder": (
      ["launch.export", f"--workdir={finished_run}", f"--out={tmp_path / 'folder'}"],
      1,
      "is a folder: give the file to write",
    ),
    "prepare_truncated_npz": (
      ["launch.prepare_data", "--name=x", f"--data_dir={tmp_path}",
       f"--npz={tmp_path / 'truncated.npz'}"],
      1,
      "truncated.npz is not a readable .npz archive",
    ),
    "aot_input_shape": (["launch.aot", "--topology=v5e:2x2", "--input_shape=a,b"], 1, ""),
    "finished": (_train_command(finished_run), 0, ""),
  }


def test_every_bad_input_is_one_error_line_and_no_traceback(tmp_path, finished_run):
  cases = _bad_inputs(tmp_path, finished_run)
  with WorkdirLock(str(tmp_path / "busy" / CELL)):  # another grid is running that cell
    launched = run_launchers({case: command for case, (command, _, _) in cases.items()}, tmp_path)
  wrong = {}
  for case, (_, code, words) in cases.items():
    got = launched[case]
    errors = [line for line in got.stderr.splitlines() if line.startswith("error: ")]
    if (
      "Traceback" in got.stdout + got.stderr
      or got.code != code
      or len(errors) != (code == 1)
      or code and words not in errors[0]
    ):
      wrong[case] = (got.code, (got.stdout + got.stderr)[-1500:])
  assert not wrong, wrong
  assert "already finished" in launched["finished"].stdout
  assert launched["finished"].sigterm_at_exit == "ignored"  # Python's exit cannot make it 143
  assert "is intact" not in launched["diverging"].stderr  # there is no checkpoint
  assert "\\" not in launched["unknown_field"].stderr


def _wait_for(pattern: str, process: subprocess.Popen, timeout: float = 240) -> None:
  deadline = time.time() + timeout
  while not glob.glob(pattern):
    assert process.poll() is None and time.time() < deadline, process.communicate()
    time.sleep(0.02)


def test_sigterm_stops_a_grid_with_exit_75_in_one_line_and_the_same_command_finishes(tmp_path):
  command = ("launch.experiments", f"--grid={_write_grid(tmp_path / 'grid.py', 2)}",
             f"--root={tmp_path / 'root'}")
  grid = start_launcher(*command)
  _wait_for(str(tmp_path / "root" / CELL / "checkpoints" / "[0-9]*"), grid)
  grid.send_signal(signal.SIGTERM)
  out, err = grid.communicate(timeout=240)
  assert grid.returncode == 75, out + err
  assert "Traceback" not in out + err, out + err
  assert "SIGTERM received in epoch" in out.splitlines()[-1], out
  assert "Run the same command again" in out.splitlines()[-1], out

  again = start_launcher(*command)
  out, err = again.communicate(timeout=300)
  assert again.returncode == 0, out + err
  assert "resuming from the checkpoint at step" in out
  assert os.path.exists(tmp_path / "root" / "cells" / "digits__deinforeg__noise0__seed0.json")


def test_a_signal_after_a_runs_last_safe_point_reaches_the_handler_it_replaced():
  """A run that completes after SIGTERM arrived passes the signal on to the handler it replaced
  (``launch.cli``'s in a grid, which then stops before its next cell): it is never lost."""
  received = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
  try:
    with preemption.StopRequests("unused") as stop:
      signal.raise_signal(signal.SIGTERM)
      assert stop.signal_name == "SIGTERM" and received == []
    assert received == [signal.SIGTERM]
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_prepare_data_overwrite_removes_the_incomplete_dataset(tmp_path):
  rng = np.random.default_rng(0)
  np.savez(
    tmp_path / "data.npz",
    x_train=rng.integers(0, 255, (3000, 32, 32, 3), np.uint8),
    y_train=np.arange(3000) % 10,
    x_test=rng.integers(0, 255, (100, 32, 32, 3), np.uint8),
    y_test=np.arange(100) % 10,
  )
  data_dir = tmp_path / "tfds"
  old = prepare.prepare_npz("big", str(data_dir), str(tmp_path / "data.npz"))
  before = sorted(os.listdir(old.dataset_dir))
  process = start_launcher(
    "launch.prepare_data", "--name=big", f"--data_dir={data_dir}",
    f"--npz={tmp_path / 'data.npz'}", "--overwrite",
  )
  _wait_for(str(data_dir / ".big.incomplete-*"), process)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=120)
  assert process.returncode == 75, out + err
  assert "Traceback" not in out + err
  assert out.splitlines()[-1] == (
    "SIGTERM received: stopped before finishing: the incomplete dataset was removed and an "
    "existing one is unchanged. Run the same command again."
  )
  assert sorted(os.listdir(data_dir)) == ["big"]  # no .big.incomplete-* left
  assert sorted(os.listdir(old.dataset_dir)) == before
