"""Checkpoints: exact resume after a kill, mismatch errors, NaN never saved."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import orbax.checkpoint as ocp
import pytest

from deinforeg_jax import checkpoint
from deinforeg_jax.reporting import NonFiniteLossError
from deinforeg_jax.train import train_and_evaluate
from helpers import TINY_RUNS, assert_trees_equal, saved_state, start_train, tiny_config


def test_killed_run_resumes_to_the_uninterrupted_parameters(tmp_path):
  """kill -9 after a mid-epoch checkpoint; the same command finishes with identical state."""
  args = ("--config.checkpoint.every_steps=10", "--config.checkpoint.use_async=False")
  interrupted_dir = str(tmp_path / "interrupted")
  victim = start_train(interrupted_dir, *args)
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

  resumed = start_train(interrupted_dir, *args)
  # Meanwhile the uninterrupted reference, launched the same way (a user's environment).
  reference = start_train(str(tmp_path / "reference"), *args)
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
  """A finished one-epoch run of ``tiny_config(num_epochs=1)``; tests resume copies of it."""
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
  grown.model.projector = "32-8"
  with pytest.raises(
    checkpoint.CheckpointMismatchError,
    match=r"block 'block_00' does not match the checkpoint: parameter 'block_00/\S+' has shape "
    r"\[32\] in the checkpoint but \[8\] in the model",
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
