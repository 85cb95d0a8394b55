"""Fault injection: only good, verified state is saved and restored; changed runs are refused.

Each case reproduces a fault a careful user can cause (a NaN or exploding update, a
damaged checkpoint, a resumed run with other settings, two runs on one workdir, a log
cut by a kill, SIGTERM) and asserts what the run does instead: a message that names the
problem, and saved state that stays good.  Runs are tiny (digits, width 1/8, a few
steps via ``config.train.max_steps``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import (
  TINY_RUNS,
  assert_trees_equal,
  run_launcher,
  saved_state,
  saved_steps,
  short_config,
  tiny_config,
)

from deinforeg_jax import checkpoint, preemption, train
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.reporting import NonFiniteLossError, RunLog
from deinforeg_jax.workdir_lock import WorkdirLock, WorkdirLockedError
from launch.configs import default

pytestmark = TINY_RUNS


def metrics_lines(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]  # every line must be valid JSON


# ------------------------------------------------------------------ only good state is saved


def test_exploding_update_at_step_one_is_never_saved(tmp_path):
  """lr 1e30: the first update leaves parameters whose own loss is not finite."""
  workdir = str(tmp_path / "run")
  config = short_config(4, every_steps=1, optim__base_lr=1e30, optim__schedule="constant")
  with pytest.raises(NonFiniteLossError, match=r"step 1 \(epoch 1\)|non-finite training metrics"):
    train.train_and_evaluate(config, workdir)
  assert saved_steps(workdir) == []  # no checkpoint of a blown-up state
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    metrics_lines(workdir)


def test_exploding_update_keeps_the_previous_good_checkpoint_and_names_the_block(tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(short_config(2, every_steps=1), workdir)
  good, good_step = saved_state(workdir)
  config = short_config(
    4,
    every_steps=1,
    optim__base_lr=1e30,
    optim__schedule="constant",
    checkpoint__allow_changed="optim.base_lr,optim.schedule",
  )
  with pytest.raises(NonFiniteLossError) as error:
    train.train_and_evaluate(config, workdir)
  message = str(error.value)
  assert "step 3" in message and "checkpoint at step 2 stays the latest" in message
  assert "block_0" in message or "loss of the updated parameters" in message
  after, after_step = saved_state(workdir)
  assert after_step == good_step == 2
  assert_trees_equal(good, after)


def test_check_step_names_the_first_non_finite_block():
  from deinforeg_jax import steps  # pylint: disable=import-outside-toplevel

  check = {
    "total_loss": np.float32(1.0),
    "finite": {"block_00": True, "block_01": False, "block_02": False, "optimizer state": True},
  }
  assert steps.state_problem(check) == "non-finite values in block_01 (and 1 more)"
  check["finite"]["block_01"] = check["finite"]["block_02"] = True
  assert steps.state_problem(check) == ""
  check["total_loss"] = np.float32(np.inf)
  assert "loss of the updated parameters is inf" in steps.state_problem(check)


def test_nan_in_metrics_is_written_as_null(tmp_path):
  log = RunLog(str(tmp_path), tiny_config())
  log.epoch(0, 5, {"accuracy": np.array([0.5, np.nan]), "total_loss": np.float32(np.inf)},
            np.array([0.1, 0.2]), 0.1)
  (line,) = metrics_lines(str(tmp_path))
  assert line["train_accuracy"] == [0.5, None] and line["train_total_loss"] is None


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("optim.base_lr", float("nan"), "config.optim.base_lr=nan must be a positive finite"),
    ("optim.end_lr", float("inf"), "config.optim.end_lr=inf must be a finite number >= 0"),
    ("loss.ce_weight", float("nan"), "config.loss.ce_weight=nan must be a finite"),
    ("seed", -1, "config.seed=-1 must be an integer >= 0"),
    ("checkpoint.keep", 0, "config.checkpoint.keep=0 must be a positive integer"),
    ("checkpoint.keep", -1, "config.checkpoint.keep=-1 must be a positive integer"),
    ("checkpoint.allow_changed", "optim.nope", "allow_changed names 'optim.nope'"),
  ],
)
def test_bad_numbers_and_checkpoint_settings_are_refused_before_compiling(field, value, message):
  config = tiny_config()
  section, name = field.rsplit(".", 1) if "." in field else ("", field)
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    validate_config(config)


# ------------------------------------------------------------------ verified checkpoints


@pytest.fixture(scope="module")
def reference_and_partial(tmp_path_factory):
  """A 6-step reference run's final state, and a run stopped at step 4 (checkpoints 2, 4)."""
  root = tmp_path_factory.mktemp("damage")
  train.train_and_evaluate(short_config(6, every_steps=2), str(root / "reference"))
  train.train_and_evaluate(short_config(4, every_steps=2), str(root / "partial"))
  assert saved_steps(str(root / "partial")) == [2, 4]
  return saved_state(str(root / "reference"))[0], str(root / "partial")


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "delete", "checksum"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_and_ends_right(
  tmp_path, reference_and_partial, damage, capsys
):
  expected, partial = reference_and_partial
  workdir = str(tmp_path / "run")
  shutil.copytree(partial, workdir)
  step_dir = os.path.join(workdir, "checkpoints", "4")
  # Every OCDBT data file of the step (the process's and the merged ones) is damaged: which file
  # holds which array, and which files are still read after Orbax merges the manifests, differs
  # between machines (CI once resumed from a step whose per-process files were all damaged).
  state_dir = os.path.join(step_dir, "state")
  data_dirs = [os.path.join(state_dir, "d"), os.path.join(state_dir, "ocdbt.process_0", "d")]
  paths = [os.path.join(d, name) for d in data_dirs if os.path.isdir(d) for name in os.listdir(d)]
  for path in paths:
    if damage == "overwrite":  # 16 random bytes in every 256
      rng = np.random.default_rng(0)
      with open(path, "r+b") as f:
        for offset in range(128, os.path.getsize(path), 256):
          f.seek(offset)
          f.write(rng.bytes(16))
    elif damage == "truncate":
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 3)
    elif damage == "delete":
      os.remove(path)
  if damage == "checksum":  # arrays intact, one recorded checksum differs: verification must see it
    path = os.path.join(step_dir, "metadata", "metadata")
    with open(path) as f:
      metadata = json.load(f)
    name = sorted(metadata["checksums"])[0]
    metadata["checksums"][name] = (metadata["checksums"][name] + 1) % 2**32
    with open(path, "w") as f:  # with a matching metadata digest: the arrays are what is checked
      json.dump(checkpoint.with_metadata_digest(metadata), f)

  capsys.readouterr()
  train.train_and_evaluate(short_config(6, every_steps=2), workdir)
  out = capsys.readouterr().out
  assert f"{step_dir}:" in out and "trying the previous kept step" in out
  if damage == "checksum":
    assert "does not match its saved checksum" in out
  assert os.path.isdir(os.path.join(workdir, "corrupt_checkpoints", "4"))  # kept, not deleted
  final, step = saved_state(workdir)
  assert step == 6
  assert_trees_equal(final, expected)


def test_checksums_detect_a_changed_word_and_verification_accepts_the_intact_state():
  state = {"params": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, "step": np.int32(3)}
  before = checkpoint.checksums(state)
  assert set(before) == {"params/w", "step"}
  changed = {"params": {"w": state["params"]["w"].copy()}, "step": np.int32(3)}
  changed["params"]["w"][1, 2] = np.nextafter(np.float32(6.0), np.float32(7.0))
  assert checkpoint.checksums(changed)["params/w"] != before["params/w"]
  swapped = {"params": {"w": state["params"]["w"][::-1].copy()}, "step": np.int32(3)}
  assert checkpoint.checksums(swapped)["params/w"] != before["params/w"]
  assert checkpoint.checksums(state) == before



def _reference_checksum(array) -> int:
  """``Σ_i w_i · (2654435761·i | 1) mod 2**32`` over the array's uint32 words, in numpy."""
  array = np.asarray(array)
  if array.dtype.itemsize in (4, 8):
    words = array.reshape(-1).view(np.uint32)
  else:
    words = array.reshape(-1).view({2: np.uint16, 1: np.uint8}[array.dtype.itemsize])
  words = words.astype(np.uint64)
  weights = (np.arange(words.size, dtype=np.uint64) * 2654435761 % 2**32) | 1
  return int(np.sum(words * weights % 2**32) % 2**32)


def test_checksums_are_the_position_weighted_word_sums_on_host_and_on_device(monkeypatch):
  """Host arrays are summed in numpy (in chunks of ``_HOST_CHUNK_WORDS``), others by a device
  program that sums arrays above and below ``_SMALL_WORDS`` differently; every path gives the
  documented sum (so a checkpoint verifies whichever path wrote it)."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(0)
  state = {
    "big": rng.normal(size=(70, 65)).astype(np.float32),  # 4550 words > _SMALL_WORDS
    "small": rng.normal(size=(3, 5)).astype(np.float32),
    "scalar": np.int32(-7),
    "half": rng.normal(size=(9,)).astype(ml_dtypes.bfloat16),
    "bytes": rng.integers(0, 255, size=(5000,)).astype(np.uint8),
    "empty": np.zeros((0, 4), np.float32),
  }
  assert state["big"].size > checkpoint._SMALL_WORDS >= state["small"].size
  expected = {k: _reference_checksum(v) for k, v in state.items()}
  assert checkpoint.checksums(state) == expected  # numpy values: the host path
  device_sums = checkpoint._checksum_leaves(list(state.values()))
  assert dict(zip(state, (int(v) for v in device_sums))) == expected
  # 64-bit host values are summed as JAX holds them (x64 off: 32-bit), like the device path.
  wide = {"f64": rng.normal(size=(5000,)), "i64": np.arange(7, dtype=np.int64), "int": 3}
  wide_device = checkpoint._checksum_leaves(list(wide.values()))
  assert checkpoint.checksums(wide) == dict(zip(wide, (int(v) for v in wide_device)))
  monkeypatch.setattr(checkpoint, "_HOST_CHUNK_WORDS", 1000)  # "big" and "bytes" span chunks
  assert checkpoint.checksums(state) == expected


def test_all_finite_sees_a_nan_or_inf_in_any_array_and_never_overflows():
  import jax  # pylint: disable=import-outside-toplevel

  from deinforeg_jax import steps  # pylint: disable=import-outside-toplevel

  all_finite = jax.jit(steps.all_finite)
  big = np.full((80, 60), np.finfo(np.float32).max, np.float32)  # Σ x overflows; finite
  tree = {"big": big, "small": np.ones((7,), np.float32), "count": np.int32(3)}
  assert bool(all_finite(tree))
  assert bool(all_finite({"count": np.int32(1)}))  # nothing floating-point
  for name, index in [("big", (79, 59)), ("big", (0, 0)), ("small", (6,))]:
    for bad in (np.nan, np.inf, -np.inf):
      damaged = {**tree, name: tree[name].copy()}
      damaged[name][index] = bad
      assert not bool(all_finite(damaged)), (name, index, bad)


# ------------------------------------------------------------------ the run's identity


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("identity") / "run")
  train.train_and_evaluate(short_config(3), workdir)
  return workdir


@pytest.mark.parametrize(
  "change",
  [
    {"data__batch_size": 32},
    {"data__split_seed": 1},
    {"seed": 1},
    {"loss__ce_weight": 0.01},
    {"data__augment": "crop_flip"},
  ],
  ids=lambda c: next(iter(c)),
)
def test_resume_with_other_settings_is_refused_by_field(finished_run, change):
  (key, value), = change.items()
  config = short_config(3)
  if "__" in key:
    section, name = key.split("__")
    config[section][name] = value
    field = f"{section}.{name}"
  else:
    config[key] = value
    field = key
  before = metrics_lines(finished_run)
  with pytest.raises(checkpoint.CheckpointMismatchError, match=rf"config\.{field}: saved .*, now") as error:
    train.train_and_evaluate(config, finished_run)
  assert f"--config.checkpoint.allow_changed={field}" in str(error.value)
  assert metrics_lines(finished_run) == before


def test_label_noise_change_is_refused(finished_run):
  config = short_config(3)
  config.data.label_noise.kind, config.data.label_noise.rate = "symmetric", 20
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"data\.label_noise\.kind.*data\.label_noise\.rate"):
    train.train_and_evaluate(config, finished_run)


def test_an_allowed_change_is_accepted_and_recorded(finished_run, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)  # 3 steps
  config = short_config(5, optim__base_lr=0.1, checkpoint__allow_changed="optim.base_lr")
  results = train.train_and_evaluate(config, workdir)
  assert results["steps"] == 5
  events = [line for line in metrics_lines(workdir) if "event" in line]
  assert events == [
    {"event": "resumed_with_changes", "step": 3, "changed": {"optim.base_lr": {"saved": 0.2, "now": 0.1}}}
  ]


def test_fewer_steps_than_already_done_gets_a_clear_message(finished_run):
  config = short_config(2, checkpoint__allow_changed="train.max_steps")
  with pytest.raises(ValueError, match=r"at step 3 .*past the end of this run .*2 steps"):
    train.train_and_evaluate(config, finished_run)


# ------------------------------------------------------------------ one run per workdir


def test_a_second_run_on_a_held_workdir_is_refused_and_a_dead_holder_is_taken_over(tmp_path):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    os.makedirs(workdir)
    with open(os.path.join(workdir, "run.lock"), "w") as f:
      json.dump({"pid": holder.pid, "host": os.uname().nodename, "started": 0}, f)
    with pytest.raises(WorkdirLockedError, match=rf"in use by pid {holder.pid} on host"):
      train.train_and_evaluate(short_config(2), workdir)
    assert not os.path.exists(os.path.join(workdir, "metrics.jsonl"))  # nothing was touched
  finally:
    holder.kill()
    holder.wait()
  notes = []
  with WorkdirLock(workdir, info=notes.append):  # the holder is gone: its lock is stale
    assert json.load(open(os.path.join(workdir, "run.lock")))["pid"] == os.getpid()
  assert "no longer running" in notes[0]
  assert not os.path.exists(os.path.join(workdir, "run.lock"))  # released


# ------------------------------------------------------------------ torn log, ~, flags


def test_resume_skips_a_metrics_line_cut_by_a_kill(finished_run, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)  # 3 steps
  with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
    f.write('{"epoch": 2, "step": 5, "test_acc')  # a kill in the middle of a write
  capsys.readouterr()
  train.train_and_evaluate(short_config(4, checkpoint__allow_changed=""), workdir)
  assert "skipped line 2" in capsys.readouterr().out
  assert [line["step"] for line in metrics_lines(workdir)] == [3, 4]


def test_tilde_in_the_workdir_is_the_home_directory(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  train.train_and_evaluate(short_config(1), "~/tilde_run")
  assert os.path.exists(tmp_path / "tilde_run" / "results.json")
  assert not os.path.exists("~")


def test_unknown_config_field_is_a_one_line_error():
  proc = run_launcher(
    "launch.train", "--workdir=/nonexistent/x", "--config.optim.lr=1", timeout=120
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().startswith("error: --config.optim.lr: the config has no field 'lr'.")
  assert "--config.optim.lr" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ preemption


def test_sigterm_saves_at_the_step_it_arrived_and_the_resumed_run_is_bit_identical(
  tmp_path, monkeypatch, reference_and_partial
):
  expected = reference_and_partial[0]  # 6 steps uninterrupted (saving every 2, which changes nothing)

  workdir = str(tmp_path / "run")
  calls = []
  original = train.ProgressBar.update

  def update(self, metrics):
    calls.append(1)
    if len(calls) == 3:  # during the run, after step 3 has been dispatched
      signal.raise_signal(signal.SIGTERM)
    original(self, metrics)

  monkeypatch.setattr(train.ProgressBar, "update", update)
  with pytest.raises(
    preemption.Preempted, match="SIGTERM received in epoch 1: saved a checkpoint at step 3, the last"
  ) as stopped:
    train.train_and_evaluate(short_config(6), workdir)
  assert stopped.value.saved_step == 3
  assert saved_steps(workdir) == [3]
  monkeypatch.setattr(train.ProgressBar, "update", original)
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

  train.train_and_evaluate(short_config(6), workdir)
  final, step = saved_state(workdir)
  assert step == 6
  assert_trees_equal(final, expected)


def test_a_field_added_later_reads_as_its_earlier_behaviour_in_an_older_checkpoint():
  now = default.get_config().to_dict()
  older = copy.deepcopy(now)
  for field in checkpoint.fields_added_later(now):
    section, name = field.split(".")
    del older[section][name]
  # An older checkpoint kept Flax's biased BatchNorm running variance, no longer the default.
  assert checkpoint.changed_fields(older, now) == {"model.bn_running_var": ("biased", "unbiased")}
  now["model"]["bn_running_var"] = "biased"
  assert checkpoint.changed_fields(older, now) == {}
  now["model"]["init"] = "torch"
  assert checkpoint.changed_fields(older, now) == {"model.init": ("flax", "torch")}
