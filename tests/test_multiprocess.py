"""Two real ``launch.train`` processes on one machine: a multi-process job killed and resumed.

Each process has 2 CPU devices (``JAX_NUM_CPU_DEVICES=2``), the two join one 4-device
job through ``jax.distributed`` (gloo collectives, a free local port) exactly as on
several hosts: ``--config.parallel.distributed=True --coordinator_address=127.0.0.1:PORT
--num_processes=2 --process_id=I``.  A probe (``sitecustomize`` on the children's
``PYTHONPATH``, below) records the rows of every training batch a process reads and
every write of ``metrics.jsonl`` / ``results.json``, and holds both processes before
step 6 so that they are killed (SIGKILL) at a known point: after the checkpoint at
step 4, with step 5 trained and lost.  Restarted with the same flags, they resume
from step 4 and finish at ``train.max_steps=8``.

Checked: each process read exactly its half of every global batch (rows
``[p*32, (p+1)*32)`` of the single-process batch); only process 0 wrote the run files;
the checkpoint reads back in this (single) process; the final parameters and BatchNorm
statistics equal those of one process (this one, on 4 of its fake CPU devices) to
``RTOL``/``ATOL``, not bit for bit: the two-process job sums across processes through gloo, in
another order than XLA:CPU's all-reduce inside one process (a global sum of the same 64 rows
differed in 345 of 1,000 columns), so the global-batch statistics (similarity matrix,
variance/covariance, BatchNorm moments) differ in the last bits, and so do the updates made
from them.  The kill and resume add nothing: the killed and resumed job's final state equals
an uninterrupted two-process run bit for bit (checked by hand; a third job would make this
test too slow for 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from deinforeg_jax import checkpoint, parallel, train
from deinforeg_jax.data import load_dataset, train_batches
from helpers import launch_env
from launch.configs import default

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, EVERY, HOLD_AT, MAX_STEPS = 64, 4, 6, 8
TIMEOUT_S = 300
# Difference allowed between the two-process and the one-process parameters and BatchNorm
# statistics (assert_allclose).  Measured largest differences after 10 steps (the test's length
# before it was cut to 8): 7.7e-7 with XLA's optimisations, 1.1e-5 on a BatchNorm scale of 1.02
# (2.6e-6 on a bias of 1e-3) with JAX_DISABLE_MOST_OPTIMIZATIONS=1, which tests/conftest.py
# passes on to the launched processes (the default width); 3.0e-7 with the small model below.
RTOL, ATOL = 1e-4, 1e-5
# A small model (the default digits stack at 1/4 width): the processes, their data shares, the
# checkpoint and the cross-process sums are the point, and the default width's steps take
# several seconds each without XLA's optimisations on a loaded 2-core machine.
SMALL_MODEL = {"model.width": 0.25, "model.projector": "32-32"}
_DEVICE_FLAG = "--xla_force_host_platform_device_count"

PROBE = '''\
"""tests/test_multiprocess.py's probe, imported at start-up by every launch.train it starts."""
import builtins, hashlib, json, os, time

_DIR = os.environ["DEINFOREG_PROBE_DIR"]
_HOLD_AT = int(os.environ.get("DEINFOREG_PROBE_HOLD_AT", "0"))
_open = builtins.open


def _record(**entry):
  with _open(os.path.join(_DIR, f"{os.getpid()}.jsonl"), "a") as f:
    f.write(json.dumps(entry) + "\\n")


def _note_write(file):
  name = os.path.basename(str(file))
  if name in ("metrics.jsonl", "results.json"):
    import jax
    _record(write=name, process=jax.process_index())


def _watching_open(file, mode="r", *args, **kwargs):
  if set(mode) & set("wax+"):
    _note_write(file)
  return _open(file, mode, *args, **kwargs)


builtins.open = _watching_open

from deinforeg_jax import safe_files, train

# The project writes these files through safe_files (atomic replace, no-follow append).
_atomic_writer, _open_no_follow = safe_files.atomic_writer, safe_files.open_no_follow


def _watching_atomic_writer(path, *args, **kwargs):
  _note_write(path)
  return _atomic_writer(path, *args, **kwargs)


def _watching_open_no_follow(path, flags, *args, **kwargs):
  if flags & (os.O_WRONLY | os.O_RDWR):
    _note_write(path)
  return _open_no_follow(path, flags, *args, **kwargs)


safe_files.atomic_writer = _watching_atomic_writer
safe_files.open_no_follow = _watching_open_no_follow
from deinforeg_jax.data import steps_per_epoch

_train_batches = train.train_batches


def _watching_batches(split, info, **kw):
  first = kw["epoch"] * steps_per_epoch(info.num_train, kw["global_batch_size"])
  for step, batch in enumerate(_train_batches(split, info, **kw), first + kw["start_step"] + 1):
    if step == _HOLD_AT:  # stop for good before training this step; the test kills us
      _record(holding=step, process=kw["process_index"])
      while True:
        time.sleep(1)
    _record(step=step, process=kw["process_index"], processes=kw["process_count"],
            labels=batch["label"].tolist(),
            rows=[hashlib.sha1(row.tobytes()).hexdigest() for row in batch["image"]])
    yield batch


train.train_batches = _watching_batches
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int, probe_dir=None, hold_at: int = 0, cache=None) -> dict[str, str]:
  env = launch_env()  # a user's environment (no test-only compile settings)
  # XLA flags less the device count: JAX_NUM_CPU_DEVICES sets it here.
  flags = [f for f in env.pop("XLA_FLAGS", "").split() if not f.startswith(_DEVICE_FLAG)]
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
  env["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(probe_dir or ""), REPO_ROOT, env.get("PYTHONPATH")])
  )
  if probe_dir:
    env.update(DEINFOREG_PROBE_DIR=str(probe_dir), DEINFOREG_PROBE_HOLD_AT=str(hold_at))
  if cache:  # the restarted processes reuse the first ones' compiled programs
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def _launch(workdir, env, *flags: str, log=None) -> subprocess.Popen:
  args = [
    sys.executable, "-m", "launch.train", f"--workdir={workdir}",
    f"--config.train.max_steps={MAX_STEPS}", f"--config.checkpoint.every_steps={EVERY}",
    "--config.checkpoint.use_async=False",
    *(f"--config.{field}={value}" for field, value in SMALL_MODEL.items()), *flags,
  ]
  return subprocess.Popen(
    args, cwd=REPO_ROOT, env=env, stdout=log or subprocess.PIPE, stderr=subprocess.STDOUT,
    text=True,
  )


def _launch_job(workdir, env, tmp_path, name: str, *flags: str) -> list[subprocess.Popen]:
  """Processes 0 and 1 of one job, each logging to ``tmp_path/<name>_<i>.log``."""
  port = _free_port()
  return [
    _launch(
      workdir, env, "--config.parallel.distributed=True", f"--coordinator_address=127.0.0.1:{port}",
      "--num_processes=2", f"--process_id={i}", *flags,
      log=open(tmp_path / f"{name}_{i}.log", "w"),  # noqa: SIM115  # closed with the process
    )
    for i in range(2)
  ]


def _reference_config():
  """What ``_launch`` runs, for one process (this one) on 4 of its fake CPU devices."""
  config = default.get_config()
  config.train.max_steps = MAX_STEPS
  config.checkpoint.every_steps = EVERY
  config.checkpoint.use_async = False
  for field, value in SMALL_MODEL.items():
    section, name = field.split(".")
    config[section][name] = value
  config.parallel.num_devices = 4
  return config


def _finish(procs, tmp_path, name: str) -> list[str]:
  """Wait for ``procs``; their logs (failing with them if one failed)."""
  deadline = time.monotonic() + TIMEOUT_S
  for proc in procs:
    try:
      proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
      if proc.poll() is None:
        proc.kill()
  logs = [(tmp_path / f"{name}_{i}.log").read_text() for i in range(len(procs))]
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-4000:]
  return logs


def _probe_records(probe_dir) -> list[dict]:
  records = []
  for name in sorted(os.listdir(probe_dir)):
    if name.endswith(".jsonl"):
      with open(os.path.join(probe_dir, name)) as f:
        records += [json.loads(line) for line in f if line.endswith("\n")]
  return records


def _global_batches() -> dict[int, dict[str, list]]:
  """Step -> the labels and row digests of the single-process global batch it trains on."""
  data = load_dataset(default.get_config().data)
  batches = train_batches(data.train, data.info, global_batch_size=BATCH, seed=0, epoch=0)
  out = {}
  for step, batch in zip(range(1, MAX_STEPS + 1), batches):
    rows = [hashlib.sha1(row.tobytes()).hexdigest() for row in batch["image"]]
    out[step] = {"labels": batch["label"].tolist(), "rows": rows}
  return out


def test_two_processes_killed_and_resumed_equal_one_process(tmp_path):
  probe_dir, cache = tmp_path / "probe", tmp_path / "jax_cache"
  probe_dir.mkdir()
  (probe_dir / "sitecustomize.py").write_text(PROBE)
  multi, single = tmp_path / "multi", tmp_path / "single"

  # 1. Two processes until both hold before step 6 (checkpoint at 4 written), then SIGKILL.
  first = _launch_job(multi, _env(2, probe_dir, HOLD_AT, cache), tmp_path, "first")

  # The reference, meanwhile: one process (this one), 4 fake CPU devices, never interrupted.
  train.train_and_evaluate(_reference_config(), str(single))
  deadline = time.monotonic() + TIMEOUT_S
  try:
    while sum("holding" in r for r in _probe_records(probe_dir)) < 2:
      crashed = [p for p in first if p.poll() is not None]
      assert not crashed, (tmp_path / "first_0.log").read_text()[-4000:]
      assert time.monotonic() < deadline, f"the first job did not reach step {HOLD_AT} in time"
      time.sleep(0.2)
  finally:
    for proc in first:
      if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
      proc.wait()
  assert [p.returncode for p in first] == [-signal.SIGKILL] * 2
  assert checkpoint.read_metadata(str(multi))["step"] == EVERY  # the mid-run checkpoint
  assert not (multi / "results.json").exists()
  first_logs = [(tmp_path / f"first_{i}.log").read_text() for i in range(2)]
  for i, log in enumerate(first_logs):
    assert f"process {i} of 2 (coordinator 127.0.0.1:" in log
    assert "2 local of 4 devices; this process loads 1/2 of every global batch" in log

  # 2. The same command again (new port): resumes from step 4 and finishes.
  logs = _finish(_launch_job(multi, _env(2, probe_dir, 0, cache), tmp_path, "second"),
                 tmp_path, "second")
  assert all(f"resuming from the checkpoint at step {EVERY}" in log for log in logs), logs[0]

  # Every process read only its half of each global batch: steps 1-5, then 5-8 again.
  records = _probe_records(probe_dir)
  read = [r for r in records if "step" in r]
  expected = _global_batches()
  steps_read = {p: sorted(r["step"] for r in read if r["process"] == p) for p in (0, 1)}
  assert steps_read[0] == steps_read[1] == sorted([1, 2, 3, 4, 5] + [5, 6, 7, 8])
  half = BATCH // 2
  for r in read:
    rows = slice(r["process"] * half, (r["process"] + 1) * half)
    assert r["processes"] == 2 and len(r["rows"]) == half
    assert r["rows"] == expected[r["step"]]["rows"][rows], (r["process"], r["step"])
    assert r["labels"] == expected[r["step"]]["labels"][rows]

  # Only process 0 wrote metrics.jsonl and results.json.
  writes = [r for r in records if "write" in r]
  assert {r["write"] for r in writes} == {"metrics.jsonl", "results.json"}
  assert {r["process"] for r in writes} == {0}

  # One process reads the two-process checkpoint; it equals the one-process run up to the
  # order of the cross-process sums (see RTOL, ATOL).
  variables, metadata = checkpoint.read_variables(str(multi))
  reference_variables, reference_metadata = checkpoint.read_variables(str(single))
  assert metadata["step"] == reference_metadata["step"] == MAX_STEPS
  flat, tree = jax.tree_util.tree_flatten_with_path(variables)
  ref_flat, ref_tree = jax.tree_util.tree_flatten_with_path(reference_variables)
  assert tree == ref_tree and len(flat) > 10
  for (path, value), (_, ref_value) in zip(flat, ref_flat):
    np.testing.assert_allclose(value, ref_value, rtol=RTOL, atol=ATOL,
                               err_msg=jax.tree_util.keystr(path))
  lines = [json.loads(line) for line in open(multi / "metrics.jsonl")]
  reference_lines = [json.loads(line) for line in open(single / "metrics.jsonl")]
  assert len(lines) == len(reference_lines) == 1 and lines[0]["step"] == MAX_STEPS
  # Accuracies within one of the 360 test examples (train_loss averages only the steps
  # trained since the resume, so it is not compared).
  np.testing.assert_allclose(lines[0]["test_accuracy"], reference_lines[0]["test_accuracy"],
                             atol=1.01 / 360)
  results = json.loads((multi / "results.json").read_text())
  assert results["steps"] == MAX_STEPS


def test_shares_of_a_global_batch_tile_it():
  """``train_batches(process_index=p, process_count=2)``: rows ``[p*b, (p+1)*b)`` of each
  global batch, for both processes, at any start step (what the launcher passes)."""
  data = load_dataset(default.get_config().data)
  kwargs = {"global_batch_size": BATCH, "seed": 3, "epoch": 1, "start_step": 5}
  whole = list(train_batches(data.train, data.info, **kwargs))
  shares = [
    list(train_batches(data.train, data.info, process_index=p, process_count=2, **kwargs))
    for p in (0, 1)
  ]
  assert len(whole) == len(shares[0]) == len(shares[1]) == 1437 // BATCH - 5
  for t, batch in enumerate(whole):
    for key in ("image", "label"):
      np.testing.assert_array_equal(
        np.concatenate([shares[0][t][key], shares[1][t][key]]), batch[key]
      )


def test_pipeline_mode_across_processes_is_refused(tmp_path):
  procs = _launch_job(
    tmp_path / "run", _env(2), tmp_path, "pipeline", "--config.parallel.mode=pipeline"
  )
  for proc in procs:
    proc.wait(timeout=TIMEOUT_S)
  for i, proc in enumerate(procs):
    log = (tmp_path / f"pipeline_{i}.log").read_text()
    assert proc.returncode != 0, log[-3000:]
    assert "config.parallel.mode='pipeline' runs on the devices of one host" in log, log[-3000:]
  assert not (tmp_path / "run" / "results.json").exists()


def test_distributed_settings_are_checked_before_joining():
  with pytest.raises(ValueError, match="--process_id is set but config.parallel.distributed"):
    parallel.initialize_distributed(False, process_id=1)
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' must be a non-negative integer"):
    parallel.initialize_distributed(True, environ={"JAX_NUM_PROCESSES": "two"})
  parallel.initialize_distributed(False, environ={"JAX_NUM_PROCESSES": "2"})  # not a job: no-op
