"""TensorBoard event files: written without TensorFlow, read back by TensorBoard's own reader.

The event file is a view of ``metrics.jsonl``: the same epoch values under one tag each, plus
the epoch's throughput (``reporting.SPEED_TAGS``) and the adaptive-exit report.  A fresh start clears a stale
``metrics.jsonl`` and stale events; a resume rebuilds the event file so no step appears twice.
"""

from __future__ import annotations

import json
import os
import types

import jax
import numpy as np
import pytest
from helpers import run_launcher, tiny_config, train_command

# TensorBoard's own reader (the test extra installs tensorboard; TensorFlow is not needed).
from tensorboard import context
from tensorboard.backend.event_processing import (
  data_provider,
  event_accumulator,
  event_file_loader,
  plugin_event_multiplexer,
)
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

from deinforeg_jax import reporting, tensorboard_events

NUM_BLOCKS = 2
TERMS = ("loss", "invariance", "variance", "covariance", "ce", "accuracy")
REPORT = {
  "accuracy": 0.75,
  "mean_exit_block": 0.5,
  "compute_fraction": 0.625,
  "patience": 1,
  "cosine_threshold": 0.8,
  "exit_mode": "sample",
  "patience_reset": True,
  "exit_fractions": [0.5, 0.5],
  "exit_blocks": [0, 1],
}


def read_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """Every scalar tag TensorBoard finds in ``workdir``: ``[(step, value), ...]`` in file order
  (no purging, no sampling: a duplicated step would show)."""
  accumulator = event_accumulator.EventAccumulator(
    str(workdir), size_guidance={event_accumulator.SCALARS: 0}, purge_orphaned_data=False
  )
  accumulator.Reload()
  return {
    tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
    for tag in accumulator.Tags()[event_accumulator.SCALARS]
  }


def pop_speed(scalars) -> list[tuple[int, float]]:
  """Remove the throughput tags (``reporting.SPEED_TAGS``) from ``scalars``; the steps/s."""
  speeds = {tag: scalars.pop(tag) for tag in reporting.SPEED_TAGS if tag in scalars}
  return speeds["train/steps_per_s"]


def expected_from_metrics(workdir) -> dict[str, list[tuple[int, float]]]:
  """The tags and values ``metrics.jsonl``'s epoch lines should show in TensorBoard."""
  expected: dict[str, list[tuple[int, float]]] = {}

  def add(tag, step, value):
    expected.setdefault(tag, []).append((step, float(np.float32(value))))

  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in map(json.loads, f):
      if "event" in line:
        continue
      add("train/learning_rate", line["step"], line["learning_rate"])
      for k, accuracy in enumerate(line["test_accuracy"]):
        add(f"test/block_{k:02d}/accuracy", line["step"], accuracy)
      for key, value in line.items():
        if not key.startswith("train_"):
          continue
        name = key[len("train_"):]
        if name == "grad_norm":
          for i, norm in enumerate(value):
            add(f"train/grad_norm/layer_{i:02d}", line["step"], norm)
        elif isinstance(value, list):
          for k, v in enumerate(value):
            add(f"train/block_{k:02d}/{name}", line["step"], v)
        else:
          add(f"train/{name}", line["step"], value)
  return expected


def epoch_summary(seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  summary = {term: rng.uniform(0.1, 2.0, NUM_BLOCKS).astype(np.float32) for term in TERMS}
  summary["total_loss"] = np.float32(summary["loss"].sum())
  return summary


def write_epochs(log: reporting.RunLog, epochs, steps_per_epoch: int = 10, seed: int = 0):
  """``log.epoch`` for each 0-based epoch in ``epochs``, after a second of train time each."""
  for epoch in epochs:
    log.add_train_time(1.0 + epoch)
    rng = np.random.default_rng(seed + 100 * epoch)
    log.epoch(epoch, (epoch + 1) * steps_per_epoch, epoch_summary(seed + epoch),
              rng.uniform(0, 1, NUM_BLOCKS), 0.1 / (epoch + 1))


def metrics_epochs(workdir) -> list[int]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [line["epoch"] for line in map(json.loads, f) if "event" not in line]


def only_event_file(workdir) -> str:
  files = [n for n in os.listdir(workdir) if "tfevents" in n]
  assert len(files) == 1, files
  return os.path.join(workdir, files[0])


# ------------------------------------------------------------------ the event file format


def test_crc32c_matches_the_standard_check_value_and_tensorboards_own():
  assert tensorboard_events.crc32c(b"123456789") == 0xE3069283  # CRC-32C check value
  for data in (b"", b"a", bytes(range(256)) * 3):
    assert tensorboard_events.masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)


def test_writer_round_trip_through_tensorboards_reader(tmp_path):
  writer = tensorboard_events.EventFileWriter(str(tmp_path))
  writer.add(3, {"train/block_00/loss": 1.5, "test/block_00/accuracy": 0.25}, wall_time=100.0)
  writer.add(2**40, {"train/block_00/loss": -0.1}, wall_time=101.5)
  writer.add(4, {})  # nothing to write: no event

  events = list(event_file_loader.EventFileLoader(writer.path).Load())
  assert events[0].file_version == "brain.Event:2"
  assert [(e.step, e.wall_time) for e in events[1:]] == [(3, 100.0), (2**40, 101.5)]
  assert read_scalars(tmp_path) == {
    "train/block_00/loss": [(3, 1.5), (2**40, float(np.float32(-0.1)))],
    "test/block_00/accuracy": [(3, 0.25)],
  }
  ours = tensorboard_events.read_events(writer.path)
  assert [(e.step, e.scalars) for e in ours[1:]] == [
    (3, {"train/block_00/loss": 1.5, "test/block_00/accuracy": 0.25}),
    (2**40, {"train/block_00/loss": float(np.float32(-0.1))}),
  ]


def test_a_record_cut_by_a_kill_ends_the_readable_part(tmp_path):
  writer = tensorboard_events.EventFileWriter(str(tmp_path))
  writer.add(1, {"a": 1.0})
  writer.add(2, {"a": 2.0})
  content = open(writer.path, "rb").read()
  with open(writer.path, "wb") as f:
    f.write(content[:-3])  # the last record's checksum cut short
  records, complete = tensorboard_events.read_records(writer.path)
  assert not complete and len(records) == 2  # the header and step 1
  with open(writer.path, "wb") as f:
    f.write(content[:-1] + bytes([content[-1] ^ 1]))  # a damaged checksum
  records, complete = tensorboard_events.read_records(writer.path)
  assert not complete and [tensorboard_events.decode_event(r).step for r in records] == [0, 1]


# ------------------------------------------------------------------ RunLog's sinks


def test_event_file_shows_what_metrics_jsonl_holds_plus_speed_and_adaptive_report(tmp_path):
  log = reporting.RunLog(str(tmp_path), tiny_config())
  log.start_fresh()
  write_epochs(log, range(3))
  log.set_adaptive_inference(REPORT)
  log.finish(np.array([0.5, 0.6]), 30, types.SimpleNamespace(name="digits"))

  scalars = read_scalars(tmp_path)
  speed = pop_speed(scalars)
  adaptive = {tag: scalars.pop(tag) for tag in list(scalars) if tag.startswith("adaptive/")}
  assert scalars == expected_from_metrics(tmp_path)
  assert {"train/block_00/invariance", "train/block_01/covariance", "train/total_loss",
          "test/block_01/accuracy", "train/learning_rate"} <= set(scalars)
  assert speed == [(10, 10.0), (20, 5.0), (30, float(np.float32(10 / 3)))]  # steps / train s
  assert adaptive == {
    "adaptive/accuracy": [(30, 0.75)],
    "adaptive/mean_exit_block": [(30, 0.5)],
    "adaptive/compute_fraction": [(30, 0.625)],
    "adaptive/block_00/exit_fraction": [(30, 0.5)],
    "adaptive/block_01/exit_fraction": [(30, 0.5)],
  }
  assert metrics_epochs(tmp_path) == [1, 2, 3]  # no timing or report lines in metrics.jsonl


def test_tensorboard_logdir_of_workdirs_shows_one_run_per_workdir(tmp_path):
  """What ``tensorboard --logdir runs/`` serves: the data provider behind its scalars page."""
  for name, seed in (("a", 0), ("b", 1)):
    log = reporting.RunLog(str(tmp_path / "runs" / name), tiny_config())
    log.start_fresh()
    write_epochs(log, range(2), seed=seed)
  multiplexer = plugin_event_multiplexer.EventMultiplexer()
  multiplexer.AddRunsFromDirectory(str(tmp_path / "runs"))
  multiplexer.Reload()
  provider = data_provider.MultiplexerDataProvider(multiplexer, str(tmp_path / "runs"))
  scalars = provider.read_scalars(
    context.RequestContext(), experiment_id="", plugin_name="scalars", downsample=1000
  )
  assert sorted(scalars) == ["a", "b"]
  for name in ("a", "b"):
    shown = {tag: [(d.step, d.value) for d in data] for tag, data in scalars[name].items()}
    pop_speed(shown)
    assert shown == expected_from_metrics(tmp_path / "runs" / name)


def test_grad_norms_get_one_tag_per_layer_and_nan_stays_nan(tmp_path):
  log = reporting.RunLog(str(tmp_path), tiny_config())
  log.start_fresh()
  summary = {"accuracy": np.array([0.5, np.nan]), "total_loss": np.float32(1.0),
             "grad_norm": np.array([1.0, 2.0, 3.0])}
  log.epoch(0, 5, summary, np.array([0.1, 0.2]), 0.1)
  scalars = read_scalars(tmp_path)
  assert scalars["train/grad_norm/layer_02"] == [(5, 3.0)]
  assert scalars["train/block_00/accuracy"] == [(5, 0.5)]
  assert np.isnan(scalars["train/block_01/accuracy"][0][1])  # null in metrics.jsonl


def test_fresh_start_clears_stale_metrics_and_events(tmp_path):
  """A run killed before its first checkpoint left epoch 1; the rerun starts from step 0."""
  stale = reporting.RunLog(str(tmp_path), tiny_config())
  stale.start_fresh()
  write_epochs(stale, [0], seed=7)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"epoch": 2, "st')  # and was killed writing epoch 2
  old_file = str(tmp_path / "events.out.tfevents.1700000000.earlier.1")
  os.rename(only_event_file(tmp_path), old_file)  # an attempt from another time and process

  log = reporting.RunLog(str(tmp_path), tiny_config())
  log.start_fresh()
  write_epochs(log, range(3))
  assert metrics_epochs(tmp_path) == [1, 2, 3]
  assert only_event_file(tmp_path) != old_file
  scalars = read_scalars(tmp_path)
  assert [step for step, _ in pop_speed(scalars)] == [10, 20, 30]
  assert scalars == expected_from_metrics(tmp_path)
  assert all([step for step, _ in values] == [10, 20, 30] for values in scalars.values())


@pytest.mark.parametrize("torn", [False, True])
def test_resume_rebuilds_the_event_file_without_duplicate_steps(tmp_path, torn):
  """Three epochs logged, the checkpoint at epoch 2: the rerun trains epoch 3 again."""
  first = reporting.RunLog(str(tmp_path), tiny_config())
  first.start_fresh()
  write_epochs(first, range(3), seed=1)
  first.set_adaptive_inference(REPORT)
  first.finish(np.array([0.5, 0.6]), 30, types.SimpleNamespace(name="digits"))
  before = read_scalars(tmp_path)
  if torn:  # killed in the middle of writing an event
    with open(only_event_file(tmp_path), "ab") as f:
      f.write(tensorboard_events.frame(b"\x10\x28")[:-2])

  log = reporting.RunLog(str(tmp_path), tiny_config())
  log.resume({"step": 20, "train_time_s": 3.0},
             {"optim.base_lr": (0.1, 0.2)})  # an allowed change: an event line, no scalar
  write_epochs(log, [2], seed=50)  # epoch 3 again, other values

  assert metrics_epochs(tmp_path) == [1, 2, 3]
  only_event_file(tmp_path)
  scalars = read_scalars(tmp_path)
  assert not any(tag.startswith("adaptive/") for tag in scalars)  # the rerun writes it again
  speed = pop_speed(scalars)
  assert speed[:2] == before["train/steps_per_s"][:2]  # kept from the first run
  assert speed[2] == (30, float(np.float32(10 / 3.0)))  # 10 steps in 3 s of train time
  assert scalars == expected_from_metrics(tmp_path)  # the new epoch-3 values, once
  assert all([step for step, _ in values] == [10, 20, 30] for values in scalars.values())
  assert scalars["train/total_loss"][:2] == before["train/total_loss"][:2]
  assert scalars["train/total_loss"][2] != before["train/total_loss"][2]


def test_only_process_zero_writes_files(tmp_path, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  log = reporting.RunLog(str(tmp_path), tiny_config())
  log.start_fresh()
  write_epochs(log, range(2))
  log.resume({"step": 10})
  log.set_adaptive_inference(REPORT)
  log.finish(np.array([0.5, 0.6]), 20, types.SimpleNamespace(name="digits"))
  assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ end to end


def test_launch_train_over_a_stale_attempt_writes_exact_metrics_and_events(tmp_path):
  """``launch.train`` on a workdir where a killed attempt left epoch 1 and no checkpoint."""
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  with open(workdir / "metrics.jsonl", "w") as f:
    f.write(json.dumps({"epoch": 1, "step": 22, "learning_rate": 9.0}) + "\n")
  tensorboard_events.EventFileWriter(str(workdir)).add(22, {"train/learning_rate": 9.0})
  proc = run_launcher(*train_command(workdir), timeout=600)  # two epochs
  assert proc.returncode == 0, proc.stderr[-3000:]

  assert metrics_epochs(workdir) == [1, 2]
  only_event_file(workdir)
  scalars = read_scalars(workdir)
  throughput = {tag: [step for step, _ in scalars[tag]] for tag in reporting.SPEED_TAGS[1:4]}
  assert throughput == dict.fromkeys(reporting.SPEED_TAGS[1:4], [22, 44])  # every epoch
  assert "train/mfu" not in scalars  # no peak known for the CPU
  assert [step for step, _ in pop_speed(scalars)] == [22, 44]
  with open(workdir / "results.json") as f:
    report = json.load(f)["adaptive_inference"]
  assert scalars.pop("adaptive/accuracy") == [(44, float(np.float32(report["accuracy"])))]
  assert scalars.pop("adaptive/compute_fraction")[0][0] == 44
  adaptive = [tag for tag in scalars if tag.startswith("adaptive/")]
  for tag in adaptive:
    scalars.pop(tag)
  assert len(adaptive) == 1 + len(report["exit_blocks"])  # mean exit block, exit fractions
  assert scalars == expected_from_metrics(workdir)
  assert "train/block_03/invariance" in scalars and scalars["train/learning_rate"][0][1] != 9.0
