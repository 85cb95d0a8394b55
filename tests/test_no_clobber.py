"""Nothing outside the workdir is overwritten through a link, and nothing is left half-written.

Each file the project writes is tried with a symbolic link at its path pointing to a file
outside (``precious``): the lock and ``results.json`` through ``launch.train`` in a
subprocess, the others through the library calls that write them.  The link's target must
be unchanged.  Whole files (``results.json``, grid summaries) must survive a write that fails
before its rename (a kill or an error) as they were.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import types

import ml_collections
import numpy as np
import pytest
from helpers import run_launcher, tiny_config, train_command

from deinforeg_jax import reporting, safe_files, tensorboard_events
from deinforeg_jax.data import prepare
from deinforeg_jax.studies import grid as grids
from deinforeg_jax.studies import runner
from deinforeg_jax.trained import prediction_csv

PRECIOUS = "precious: not the project's to write\n"


@pytest.fixture
def precious(tmp_path):
  """A file outside every workdir, which no write may change."""
  path = tmp_path / "outside" / "precious.txt"
  path.parent.mkdir()
  path.write_text(PRECIOUS)
  return path


def _link(path, target) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  os.symlink(target, path)


def _launch_train(workdir) -> subprocess.CompletedProcess:
  return run_launcher(
    *train_command(workdir, "--config.train.max_steps=2", "--config.checkpoint.use_async=False")
  )


# ------------------------------------------------------------------ launch.train


def test_a_linked_run_lock_is_refused_in_one_line_and_its_target_is_untouched(tmp_path, precious):
  workdir = tmp_path / "run"
  _link(str(workdir / "run.lock"), precious)
  proc = _launch_train(workdir)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines() == [
    f"error: refusing to write {workdir / 'run.lock'}: it is a symbolic link (to {precious}), "
    "not a regular file; remove it (nothing was written through it) or use another folder"
  ]
  assert precious.read_text() == PRECIOUS
  assert os.path.islink(workdir / "run.lock")  # left for the user to look at


def test_linked_results_and_metrics_in_a_fresh_workdir_are_replaced_not_followed(
  tmp_path, precious
):
  workdir = tmp_path / "run"
  _link(str(workdir / "results.json"), precious)
  _link(str(workdir / "metrics.jsonl"), precious)
  proc = _launch_train(workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert precious.read_text() == PRECIOUS
  for name in ("results.json", "metrics.jsonl"):
    assert not os.path.islink(workdir / name), name
  assert json.loads((workdir / "results.json").read_text())["steps"] == 2
  assert [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")] == [2]


# ------------------------------------------------------------------ library writers


def test_appending_metrics_or_events_through_a_link_is_refused(tmp_path, precious):
  metrics = tmp_path / "metrics.jsonl"
  _link(str(metrics), precious)
  with pytest.raises(safe_files.UnsafeFileError, match="metrics.jsonl: it is a symbolic link"):
    reporting.MetricsFile(str(metrics)).write({"epoch": 1, "step": 2}, "epoch")

  writer = tensorboard_events.EventFileWriter(str(tmp_path / "tb"))
  os.remove(writer.path)
  _link(writer.path, precious)
  with pytest.raises(safe_files.UnsafeFileError, match="tfevents.* it is a symbolic link"):
    writer.add(3, {"train/total_loss": 1.5})
  assert precious.read_text() == PRECIOUS


def test_a_new_event_file_and_a_resumed_metrics_file_replace_links_at_their_paths(
  tmp_path, precious, monkeypatch
):
  monkeypatch.setattr(tensorboard_events.time, "time", lambda: 1_700_000_000.0)
  writer_path = tensorboard_events.EventFileWriter(str(tmp_path / "probe")).path
  events = tmp_path / os.path.basename(writer_path)  # the name the run's new file will take
  _link(str(events), precious)
  outside_metrics = tmp_path / "outside" / "metrics.jsonl"
  outside_metrics.write_text(json.dumps({"epoch": 1, "step": 5}) + "\n")
  _link(str(tmp_path / "metrics.jsonl"), outside_metrics)
  reporting.RunLog(str(tmp_path), tiny_config()).resume({"step": 5})  # rewrites both files
  assert precious.read_text() == PRECIOUS
  assert outside_metrics.read_text() == json.dumps({"epoch": 1, "step": 5}) + "\n"
  assert not os.path.islink(events)
  assert tensorboard_events.read_records(str(events))[1]  # a complete event file of its own
  assert not os.path.islink(tmp_path / "metrics.jsonl")


def test_predicts_out_replaces_a_link_and_writes_the_csv(tmp_path, precious):
  out = tmp_path / "predictions.csv"
  _link(str(out), precious)
  prediction = types.SimpleNamespace(
    labels=[3], names=["three"], confidence=[0.75], exits=[1], blocks=[2]
  )
  prediction_csv.write_csv(str(out), ["a.png"], prediction)
  assert precious.read_text() == PRECIOUS
  assert out.read_text().splitlines() == [
    "id,label,class_name,probability,exit,exit_block", "a.png,3,three,0.750000,1,2"
  ]


def _two_cell_grid():
  """Two seeds of one tiny cell (the fields ``run_grid`` reads)."""
  grid = ml_collections.ConfigDict()
  grid.base = tiny_config(num_blocks=2)
  grid.rules, grid.datasets, grid.noise_rates = ("deinforeg",), ("digits",), (0,)
  grid.seeds = (0, 1)
  grid.noise_kind, grid.metric, grid.budget_minutes = "symmetric", "best_test_accuracy", 0.0
  grid.dataset_overrides = ml_collections.ConfigDict()
  grid.rule_overrides = ml_collections.ConfigDict()
  return grid


def test_grid_summaries_replace_links_whether_dangling_or_not(tmp_path, precious, monkeypatch):
  grid = _two_cell_grid()
  cells = list(grids.cells(grid))
  results = {}
  for cell in cells:
    config = grids.cell_config(grid, cell)
    results[grids.cell_workdir(str(tmp_path), cell)] = {
      "best_test_accuracy": 0.5, "per_block_test_accuracy": [0.4, 0.5], "best_block": 1,
      "best_epoch_test_accuracy": 0.5, "label_noise": None, "steps": 11, "train_time_s": 1.0,
      "config": config.to_dict(),
    }
  for workdir in results:
    os.makedirs(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"epoch": 1, "test_accuracy": [0.4, 0.5], "train_accuracy": [1, 1]}))
  finished = grids.cell_workdir(str(tmp_path), cells[0])
  with open(os.path.join(finished, "results.json"), "w") as f:
    json.dump(results[finished], f)
  summary = {cell["seed"]: tmp_path / "cells" / (grids.cell_name(cell) + ".json")
             for cell in cells}
  _link(str(summary[0]), precious)  # exists: read as a summary, found unreadable, rebuilt
  _link(str(summary[1]), tmp_path / "outside" / "created.json")  # dangling: the cell runs
  monkeypatch.setattr(runner, "train_and_evaluate", lambda config, workdir: results[workdir])
  runner.run_grid(grid, str(tmp_path))
  assert precious.read_text() == PRECIOUS
  assert not os.path.exists(tmp_path / "outside" / "created.json")
  for seed, path in summary.items():
    assert not os.path.islink(path)
    assert json.loads(path.read_text())["seed"] == seed


# ------------------------------------------------------------------ no half-written files


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_results_json_survives_a_failure_before_the_rename_as_it_was(
  tmp_path, monkeypatch, failing
):
  log = reporting.RunLog(str(tmp_path), tiny_config())
  log.start_fresh()
  old = '{"steps": 10, "best_test_accuracy": 0.5}'
  (tmp_path / "results.json").write_text(old)

  def killed(*args):
    raise OSError(errno.EIO, "simulated failure in the middle of the write")

  monkeypatch.setattr(safe_files.os, failing, killed)
  with pytest.raises(OSError, match="simulated failure"):
    log.finish(np.array([0.5, 0.6]), 20, types.SimpleNamespace(name="digits"))
  monkeypatch.undo()
  assert (tmp_path / "results.json").read_text() == old
  assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []  # temporary removed


def test_open_no_follow_refuses_a_named_pipe_instead_of_blocking(tmp_path):
  fifo = tmp_path / "run.lock"
  os.mkfifo(fifo)
  with pytest.raises(safe_files.UnsafeFileError, match="run.lock: it is a named pipe"):
    safe_files.open_for_append(str(fifo))


def test_overwriting_a_prepared_dataset_that_is_a_link_leaves_the_links_target(
  tmp_path, precious
):
  dataset_dir = tmp_path / "tfds" / "linked" / "1.0.0"
  _link(str(dataset_dir), precious.parent)
  rng = np.random.default_rng(0)
  npz = tmp_path / "data.npz"
  np.savez(
    npz, x_train=rng.integers(0, 256, (8, 4, 4, 1), np.uint8), y_train=np.arange(8) % 2,
    x_test=rng.integers(0, 256, (4, 4, 4, 1), np.uint8), y_test=np.arange(4) % 2,
  )
  prepare.prepare_npz("linked", str(tmp_path / "tfds"), str(npz), overwrite=True)
  assert sorted(os.listdir(precious.parent)) == ["precious.txt"]
  assert precious.read_text() == PRECIOUS
  assert not os.path.islink(dataset_dir) and "dataset_info.json" in os.listdir(dataset_dir)
