"""Grids on a real Ray instance (``launch.experiments --executor=ray``,
``deinforeg_jax/studies/ray_executor.py``): the same summaries as a local grid, a worker killed
mid-cell, a cell that fails alone, SIGTERM to the driver.

One Ray head for the module, on loopback with 2 CPUs, stopped at the end; its workers inherit
this session's environment (quick compiles, the session's compilation cache), so their cells
compare bit for bit with the local grid run in this process.  A driver's workers are reused
from cell to cell (one JAX import each), so the cells of one driver share their programs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from helpers import REPO, short_config, start_launcher

from deinforeg_jax import user_errors
from deinforeg_jax.studies import grid as grids
from deinforeg_jax.studies import ray_executor, runner
from deinforeg_jax.studies.ray_executor import RayExecutor
from launch.configs.experiments import make_grid

pytestmark = pytest.mark.xdist_group("ray")

CELLS = [
  f"digits__{rule}__noise0__seed{seed}" for seed in (0, 1) for rule in ("deinforeg", "bp")
]
# What ``grid(seeds=(0,))`` builds, as a grid file for the launcher.
GRID_FILE = f"""
import sys
sys.path.insert(0, {os.path.join(REPO, "tests")!r})
from helpers import short_config
from launch.configs.experiments import make_grid

def get_config():
  return make_grid(short_config(3, every_steps=1), ("deinforeg", "bp"), ("digits",), seeds=(0,))
"""


def grid(rules=("deinforeg", "bp"), seeds=(0, 1)):
  """Cells of 3 steps of a tiny stack on digits, a checkpoint after every step."""
  return make_grid(short_config(3, every_steps=1), rules, ("digits",), seeds=seeds)


def reproducible(summaries):
  """The fields of each summary that a rerun reproduces bit for bit (not its time, nor the
  workdir, which is under another root)."""
  return {
    f"{s['dataset']}__{s['rule']}__noise{s['noise_rate']}__seed{s['seed']}": {
      k: v for k, v in s.items() if k not in ("train_time_s", "workdir")
    }
    for s in summaries
  }


def test_cell_resources_come_from_the_grid_and_fit_per_node():
  assert grids.cell_resources(grid()) == {"CPU": 1.0}
  paper = grid()
  paper.cell_resources = "CPU=4, GPU=1"
  assert grids.cell_resources(paper) == {"CPU": 4.0, "GPU": 1.0}
  assert ray_executor.cells_per_node({"CPU": 16.0, "GPU": 2.0}, {"CPU": 4, "GPU": 1}) == 2
  assert ray_executor.cells_per_node({"CPU": 6.0, "GPU": 4.0}, {"CPU": 4, "GPU": 1}) == 1
  assert ray_executor.cells_per_node({"CPU": 64.0}, {"GPU": 1}) == 0
  paper.cell_resources = "GPU:1"
  with pytest.raises(grids.GridError, match="write NAME=AMOUNT pairs joined by commas"):
    grids.cell_resources(paper)


def test_without_ray_the_ray_executor_names_the_extra_in_one_line(monkeypatch):
  monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
  with pytest.raises(user_errors.UserError) as missing:
    ray_executor.import_ray()
  assert user_errors.one_line(missing.value) == (ray_executor.RAY_MISSING, user_errors.EXIT_ERROR)
  assert 'pip install "deinforeg-jax[cluster]"' in ray_executor.RAY_MISSING


def test_a_node_that_cannot_see_the_root_says_why(tmp_path):
  path = str(tmp_path / ".shared-check-1234")
  host, problem = ray_executor._see_folder(str(tmp_path), path, "1234")
  assert problem.startswith(f"cannot read {path} written by the driver (")
  (tmp_path / ".shared-check-1234").write_text("1234")
  assert ray_executor._see_folder(str(tmp_path), path, "1234") == (host, None)
  assert (tmp_path / f".shared-check-1234.{host}").read_text() == "1234"


@pytest.fixture(scope="module")
def ray_address():
  """A Ray head on loopback with 2 CPUs for the module (workers on the CPU backend)."""
  ray = pytest.importorskip("ray")
  temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must be short
  before = os.environ.get("JAX_PLATFORMS")
  os.environ["JAX_PLATFORMS"] = "cpu"  # no TPU probe in the workers (libtpu is installed)
  handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  context = ray.init(
    num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp_dir
  )
  for sig, handler in handlers.items():  # ray.init replaces SIGTERM's
    signal.signal(sig, handler)
  try:
    yield context.address_info["gcs_address"]
  finally:
    ray.shutdown()
    if before is None:
      os.environ.pop("JAX_PLATFORMS", None)
    else:
      os.environ["JAX_PLATFORMS"] = before
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def local_summaries(tmp_path_factory):
  """The grid's cells run locally, one after another in this process."""
  return reproducible(runner.run_grid(grid(), str(tmp_path_factory.mktemp("local"))))


def test_a_ray_grid_gives_the_summaries_and_table_of_a_local_grid(
  ray_address, local_summaries, tmp_path, capsys
):
  summaries = runner.run_grid(grid(), str(tmp_path), executor=RayExecutor(ray_address))
  assert list(reproducible(summaries)) == CELLS
  assert reproducible(summaries) == local_summaries
  out = capsys.readouterr().out
  assert out.count("[start]") == 4 and out.count("[done]") == 4
  assert "[done]    digits__bp__noise0__seed1 on node " in out
  assert "done 4, running 0, failed 0, pending 0" in out
  assert "| 0% |" in (tmp_path / "table.md").read_text()


def _kill_the_worker_after_its_first_checkpoint(workdir: str, killed: list[int]) -> None:
  """kill -9 of the process that holds ``workdir`` once its step-1 checkpoint is written."""
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    if os.path.isdir(os.path.join(workdir, "checkpoints", "1")):
      try:
        with open(os.path.join(workdir, "run.lock")) as f:
          pid = json.load(f)["pid"]
      except (OSError, ValueError, KeyError):
        continue
      os.kill(pid, signal.SIGKILL)
      killed.append(pid)
      return
    time.sleep(0.005)


def test_a_worker_killed_mid_cell_is_retried_and_its_cell_resumes(
  ray_address, local_summaries, tmp_path, capsys
):
  workdir = os.path.join(tmp_path, "digits", "bp", "noise0", "seed0")
  killed = []
  killer = threading.Thread(
    target=_kill_the_worker_after_its_first_checkpoint, args=(workdir, killed)
  )
  killer.start()
  summaries = runner.run_grid(grid(seeds=(0,)), str(tmp_path), executor=RayExecutor(ray_address))
  killer.join()
  assert killed, "the cell ended before its worker could be killed"
  out = capsys.readouterr().out
  assert "[retry]   digits__bp__noise0__seed0: the worker was lost (" in out
  assert "attempt 2 of 4 resumes from its checkpoint" in out
  assert reproducible(summaries) == {name: local_summaries[name] for name in CELLS[:2]}


def test_a_cell_with_an_invalid_override_fails_alone_with_its_reason(
  ray_address, local_summaries, tmp_path, capsys
):
  broken = grid(rules=("deinforeg", "broken"), seeds=(0,))
  broken.rule_overrides.broken = {"rule": "bp", "optim": {"name": "adamw_typo"}}
  with pytest.raises(runner.CellsFailedError) as failed:
    runner.run_grid(broken, str(tmp_path), executor=RayExecutor(ray_address))
  reason = str(failed.value)
  assert reason.startswith("1 cell(s) failed (digits__broken__noise0__seed0: ")
  assert "optim.name" in reason and "adamw_typo" in reason
  out = capsys.readouterr().out
  assert "[failed]  digits__broken__noise0__seed0: " in out and "[retry]" not in out
  with open(tmp_path / "cells" / "digits__deinforeg__noise0__seed0.json") as f:
    (finished,) = reproducible([json.load(f)]).items()
  assert finished[1] == local_summaries[finished[0]]
  assert "1 cell(s) failed:\n- digits__broken__noise0__seed0: " in (
    tmp_path / "table.md"
  ).read_text()


def test_sigterm_to_the_driver_stops_the_cells_at_a_checkpoint_and_the_rerun_finishes(
  ray_address, local_summaries, tmp_path
):
  (tmp_path / "grid.py").write_text(GRID_FILE)
  root = tmp_path / "root"
  flags = (
    f"--grid={tmp_path / 'grid.py'}", f"--root={root}", "--executor=ray",
    f"--ray_address={ray_address}",
  )
  driver = start_launcher("launch.experiments", *flags, stderr=subprocess.STDOUT)
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(driver.stdout), daemon=True)
  reader.start()
  checkpoints = [root / "digits" / rule / "noise0" / "seed0" / "checkpoints" / "1"
                 for rule in ("deinforeg", "bp")]
  deadline = time.monotonic() + 180
  while not any(c.is_dir() for c in checkpoints) and time.monotonic() < deadline:
    time.sleep(0.01)
  driver.send_signal(signal.SIGTERM)
  driver.wait(timeout=300)
  reader.join()
  out = "".join(lines)
  assert driver.returncode == user_errors.EXIT_PREEMPTED, out
  assert re.search(r"SIGTERM received: stopped \d running cell\(s\) \(digits__", out), out
  assert "Run the same command again to continue." in out
  again = start_launcher("launch.experiments", *flags, stderr=subprocess.STDOUT)
  out = again.communicate(timeout=300)[0]
  assert again.returncode == 0, out
  summaries = [json.loads((root / "cells" / f"{name}.json").read_text()) for name in CELLS[:2]]
  assert reproducible(summaries) == {name: local_summaries[name] for name in CELLS[:2]}
