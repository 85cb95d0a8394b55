"""End-to-end: the ``launch.train`` command line on the embedded digits.

Runs in a subprocess with one CPU device (``helpers.launch_env``: the session's XLA flags
less ``conftest``'s eight devices), exactly as a user would start it from the repository root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from helpers import launch_env

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  env = launch_env(num_devices=1)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
  env["JAX_PLATFORMS"] = "cpu"
  return subprocess.run(
    [sys.executable, "-m", "launch.train", *args],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def test_launch_train_writes_results_and_metrics(tmp_path):
  workdir = tmp_path / "run"
  proc = _launch(f"--workdir={workdir}", "--config.train.num_epochs=1", "--config.model.width=0.25")
  assert proc.returncode == 0, proc.stderr[-3000:]

  with open(workdir / "results.json") as f:
    results = json.load(f)
  for key in (
    "rule",
    "best_test_accuracy",
    "per_block_test_accuracy",
    "best_block",
    "wall_time_s",
    "steps_per_s",
    "train_time_s",
    "eval_time_s",
  ):
    assert key in results, key
  assert results["rule"] == "deinforeg"
  per_block = results["per_block_test_accuracy"]
  assert len(per_block) == 4
  assert all(0.0 <= a <= 1.0 for a in per_block)
  assert 0.0 <= results["best_test_accuracy"] <= 1.0
  assert results["best_block"] == int(np.argmax(per_block))
  assert results["best_test_accuracy"] == max(per_block)
  # Accuracies are multiples of 1/360 (the digits test split).
  np.testing.assert_allclose(
    np.asarray(per_block) * 360, np.round(np.asarray(per_block) * 360), atol=1e-3
  )
  assert results["wall_time_s"] > 0
  assert results["steps_per_s"] > 0
  # Training and evaluation are timed apart; both happen within the run's wall time.
  assert 0 < results["train_time_s"] and 0 < results["eval_time_s"]
  assert results["train_time_s"] + results["eval_time_s"] < results["wall_time_s"]
  assert results["steps"] == 1437 // 64
  assert results["config"]["model"]["width"] == 0.25

  with open(workdir / "metrics.jsonl") as f:
    lines = [json.loads(line) for line in f]
  assert len(lines) == 1
  assert lines[0]["epoch"] == 1
  assert lines[0]["step"] == results["steps"]
  assert len(lines[0]["test_accuracy"]) == 4
  np.testing.assert_allclose(lines[0]["test_accuracy"], per_block, rtol=1e-6)
  assert np.all(np.isfinite(lines[0]["train_loss"]))


def test_launch_train_rejects_an_unknown_rule(tmp_path):
  workdir = tmp_path / "bad"
  proc = _launch(f"--workdir={workdir}", "--config.rule=nope", timeout=120)
  assert proc.returncode != 0
  assert "config.rule" in proc.stderr
  assert not (workdir / "results.json").exists()
