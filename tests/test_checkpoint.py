"""Checkpoints: every-N-epochs saves, mismatch errors, NaN never saved (a killed run's exact
resume: ``test_interruptions``)."""

from __future__ import annotations

import json
import shutil

import orbax.checkpoint as ocp
import pytest

from deinforeg_jax import checkpoint
from deinforeg_jax.reporting import NonFiniteLossError
from deinforeg_jax.train import train_and_evaluate
from helpers import TINY_RUNS, assert_trees_equal, saved_state, tiny_config


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
