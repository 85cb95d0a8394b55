"""Checkpoints: exact resume after a kill, mismatch errors, NaN never saved."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from deinforeg_jax import checkpoint
from deinforeg_jax.reporting import NonFiniteLossError
from deinforeg_jax.train import train_and_evaluate
from helpers import TINY_RUNS, launch_env
from launch.configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
  "--config.model.width=0.25",
  "--config.model.projector=32-32",
  "--config.parallel.num_devices=1",
]


def tiny_config(num_epochs: int = 1):
  config = default.get_config()
  config.model.width = 0.125
  config.model.projector = "16-16"
  config.parallel.num_devices = 1
  config.train.num_epochs = num_epochs
  return config


def saved_state(workdir: str, step: int | None = None):
  """The raw state tree of a checkpoint (numpy arrays) and its step."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    step = manager.latest_step() if step is None else step
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))
  return restored["state"], step


def assert_trees_equal(a, b):
  flat_a, flat_b = (dict(checkpoint.flax.traverse_util.flatten_dict(t, sep="/")) for t in (a, b))
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=key)


def run_launcher(workdir: str, *extra: str, **popen_kwargs):
  """``launch.train`` on ``TINY`` (one device in use) in a process with as many fake CPU devices
  as this one: XLA:CPU's convolutions split their work by the threads each device gets, and a
  run compared bit for bit with one in this process must get the same split."""
  env = launch_env(num_devices=jax.device_count())
  cmd = [sys.executable, "-m", "launch.train", f"--workdir={workdir}", *TINY, *extra]
  return subprocess.Popen(
    cmd,
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **popen_kwargs,
  )


def test_killed_run_resumes_to_the_uninterrupted_parameters(tmp_path):
  """kill -9 after a mid-epoch checkpoint; the same command finishes with identical state."""
  args = (
    "--config.train.num_epochs=2",
    "--config.checkpoint.every_steps=10",
    "--config.checkpoint.use_async=False",
  )
  interrupted_dir = str(tmp_path / "interrupted")
  victim = run_launcher(interrupted_dir, *args)
  ckpt_dir = os.path.join(interrupted_dir, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline:  # wait for the first committed checkpoint (step 10)
    if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
      break
    assert victim.poll() is None, victim.stdout.read()
    time.sleep(0.05)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  _, killed_at = saved_state(interrupted_dir)
  assert 0 < killed_at < 44, "the kill must land before the end of the run"

  resumed = run_launcher(interrupted_dir, *args)
  # Meanwhile the uninterrupted reference, launched the same way (a user's environment).
  reference = run_launcher(str(tmp_path / "reference"), *args)
  resumed_out, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, resumed_out
  reference_out, _ = reference.communicate(timeout=300)
  assert reference.returncode == 0, reference_out
  assert f"resuming from the checkpoint at step {killed_at}" in resumed_out

  final, step = saved_state(interrupted_dir)
  expected, expected_step = saved_state(str(tmp_path / "reference"))
  assert step == expected_step == 44  # 2 epochs x 22 steps
  assert_trees_equal(final, expected)


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
  """A finished one-epoch run of ``tiny_config()``; tests resume copies of it."""
  workdir = str(tmp_path_factory.mktemp("one_epoch") / "run")
  train_and_evaluate(tiny_config(num_epochs=1), workdir)
  return workdir


@TINY_RUNS
def test_every_epochs_saves_every_nth_epoch_end_and_the_last_step(tmp_path):
  config = tiny_config(num_epochs=3)
  config.checkpoint.every_epochs = 2
  config.checkpoint.keep = 5
  config.checkpoint.use_async = False
  train_and_evaluate(config, str(tmp_path))
  with ocp.CheckpointManager(str(tmp_path / "checkpoints")) as manager:
    assert list(manager.all_steps()) == [44, 66]  # epochs 2 and 3 (the last) of 22 steps
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [22, 44, 66]  # every epoch logged


@TINY_RUNS
def test_checkpoint_from_a_different_model_is_refused(one_epoch_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(one_epoch_run, workdir)
  before, step = saved_state(workdir)
  grown = tiny_config(num_epochs=2)
  grown.model.projector = "16-8"
  with pytest.raises(
    checkpoint.CheckpointMismatchError,
    match=r"block 'block_00' does not match the checkpoint: parameter 'block_00/\S+' has shape "
    r"\[16\] in the checkpoint but \[8\] in the model",
  ):
    train_and_evaluate(grown, workdir)
  fewer = tiny_config(num_epochs=2)
  fewer.model.num_blocks = 3
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"block 'block_03'.*absent"):
    train_and_evaluate(fewer, workdir)
  other_optimizer = tiny_config(num_epochs=2)
  other_optimizer.optim.name = "adam"
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"optimizer 'lars'.*'adam'"):
    train_and_evaluate(other_optimizer, workdir)
  after, after_step = saved_state(workdir)
  assert after_step == step
  assert_trees_equal(before, after)


@TINY_RUNS
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(one_epoch_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(one_epoch_run, workdir)
  good, good_step = saved_state(workdir)
  diverging = tiny_config(num_epochs=2)
  diverging.optim.schedule = "constant"
  diverging.optim.base_lr = 1e30
  diverging.checkpoint.every_steps = 3
  diverging.checkpoint.allow_changed = "train.num_epochs,optim.schedule,optim.base_lr"
  with pytest.raises(NonFiniteLossError, match="non-finite training metrics in epoch 2"):
    train_and_evaluate(diverging, workdir)
  after, after_step = saved_state(workdir)
  assert after_step == good_step == 22
  assert_trees_equal(good, after)
