"""End-to-end: the ``launch.train`` command line on the embedded digits, and the console
scripts (``deinforeg-train`` ...) that ``setup.cfg`` declares.

Runs in a subprocess with one CPU device (``helpers.run_launcher``: the session's XLA flags
less ``conftest``'s eight devices), exactly as a user would start it from the repository root.
"""

from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import launch_env, run_launcher, train_command

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_launch_train_writes_results_and_metrics(tmp_path):
  workdir = tmp_path / "run"
  # The first of the tiny launched run's two epochs.
  proc = run_launcher(*train_command(workdir, f"--config.train.max_steps={1437 // 64}"))
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
  proc = run_launcher("launch.train", f"--workdir={workdir}", "--config.rule=nope", timeout=120)
  assert proc.returncode != 0
  assert "config.rule" in proc.stderr
  assert not (workdir / "results.json").exists()


# Each console script and a flag of its own that ``--helpfull`` must list.
SCRIPT_FLAGS = {
  "deinforeg-train": "workdir",
  "deinforeg-prepare-data": "npz",
  "deinforeg-experiments": "grid",
  "deinforeg-aot": "topology",
  "deinforeg-evaluate": "workdir",
  "deinforeg-predict": "input",
  "deinforeg-export": "out",
}


def _declared_scripts() -> dict[str, str]:
  """``setup.cfg``'s console scripts: name -> ``module:function``."""
  parser = configparser.ConfigParser()
  parser.read(os.path.join(REPO_ROOT, "setup.cfg"))
  lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
  return {name.strip(): target.strip() for name, target in (line.split("=") for line in lines)}


def test_console_scripts_are_declared_and_installed():
  """Every declared script runs a launch module's ``run()``, and the installed package (the
  README's ``pip install -e``) carries exactly these scripts."""
  declared = _declared_scripts()
  assert set(declared) == set(SCRIPT_FLAGS)
  for name, target in declared.items():
    module, function = target.split(":")
    assert module.startswith("launch.") and function == "run", (name, target)
    assert os.path.exists(os.path.join(REPO_ROOT, *module.split(".")) + ".py"), (name, module)
  installed = {
    ep.name: ep.value
    for ep in importlib.metadata.entry_points(group="console_scripts")
    if ep.name.startswith("deinforeg-")
  }
  assert installed == declared, "the installed package is stale: pip install -e ."


@pytest.mark.parametrize("name", sorted(SCRIPT_FLAGS))
def test_console_script_runs_its_module(name, tmp_path):
  """The installed script starts its own launch module from any directory: absl's --helpfull
  lists that module's flags (and exits 1, as absl does after help)."""
  script = os.path.join(os.path.dirname(sys.executable), name)
  assert os.path.exists(script), f"{script} is not installed: pip install -e ."
  env = launch_env(num_devices=1)  # no PYTHONPATH: the installed package, not the tree
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [script, "--helpfull"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    check=False,
  )
  module = _declared_scripts()[name].split(":")[0]
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert f"\n{module}:\n" in proc.stdout, proc.stdout[-3000:]
  assert f"--{SCRIPT_FLAGS[name]}" in proc.stdout.split(f"\n{module}:\n", 1)[1]
