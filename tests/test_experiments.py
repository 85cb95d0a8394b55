"""Tests of experiment grids (``deinforeg_jax.studies``, run by ``launch/experiments.py``):
cells, the runner, its executor, the table, Welch's test and the plots."""

from __future__ import annotations

import copy
import importlib
import json
import os
import re
import shutil

import ml_collections
import numpy as np
import pytest
from helpers import tiny_config

from deinforeg_jax import user_errors
from deinforeg_jax.studies import executors, report, runner, welch
from deinforeg_jax.studies import grid as grids
from launch.configs.experiments import converged_mnist, noise_ablation_mnist


def _grid(rules=("deinforeg", "bp"), noise_rates=(0, 40), seeds=(0, 1)):
  grid = ml_collections.ConfigDict()
  base = tiny_config(num_blocks=2)
  base.train.num_epochs = 1
  base.data.batch_size = 128
  base.parallel.num_devices = 1
  base.checkpoint.use_async = False
  grid.base = base
  grid.rules = rules
  grid.datasets = ("digits",)
  grid.noise_rates = noise_rates
  grid.noise_kind = "symmetric"
  grid.seeds = seeds
  grid.metric = "best_test_accuracy"
  grid.budget_minutes = 0.0
  grid.dataset_overrides = ml_collections.ConfigDict()
  grid.rule_overrides = ml_collections.ConfigDict()
  return grid


class _FakeTrainer:
  """Stands in for ``train_and_evaluate``: writes results/metrics files instantly."""

  def __init__(self):
    self.calls = []

  def __call__(self, config, workdir):
    self.calls.append(workdir)
    os.makedirs(workdir, exist_ok=True)
    exits = 1 if config.rule == "bp" else config.model.num_blocks
    accuracy = [0.9 - config.data.label_noise.rate / 200 - 0.01 * config.seed] * exits
    results = {
      "rule": config.rule,
      "best_test_accuracy": accuracy[0],
      "per_block_test_accuracy": accuracy,
      "best_block": 0,
      "best_epoch_test_accuracy": accuracy[0],
      "label_noise": None,
      "steps": 11,
      "train_time_s": 2.0,
      "config": config.to_dict(),
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.writelines(
        json.dumps({"epoch": epoch, "test_accuracy": accuracy, "train_accuracy": accuracy}) + "\n"
        for epoch in (1, 2)
      )
    return results


@pytest.fixture
def fake_trainer(monkeypatch):
  trainer = _FakeTrainer()
  monkeypatch.setattr(runner, "train_and_evaluate", trainer)
  return trainer


def test_cells_are_seed_major_and_cell_configs_set_every_axis():
  grid = _grid()
  grid.rule_overrides = ml_collections.ConfigDict({"bp": {"optim": {"base_lr": 0.5}}})
  cells = list(grids.cells(grid))
  assert len(cells) == 8 and [c["seed"] for c in cells] == [0] * 4 + [1] * 4
  assert [(c["noise_rate"], c["rule"]) for c in cells[:4]] == [
    (0, "deinforeg"),
    (0, "bp"),
    (40, "deinforeg"),
    (40, "bp"),
  ]
  config = grids.cell_config(grid, cells[7])
  assert (config.rule, config.seed, config.data.name) == ("bp", 1, "digits")
  noise = config.data.label_noise
  assert (noise.kind, noise.rate, noise.seed) == ("symmetric", 40, 1)
  assert config.optim.base_lr == 0.5
  clean = grids.cell_config(grid, cells[0])
  assert clean.data.label_noise.kind == "none" and clean.optim.base_lr == grid.base.optim.base_lr


def test_an_unknown_override_field_is_named():
  grid = _grid()
  grid.dataset_overrides = ml_collections.ConfigDict({"digits": {"model": {"depth": 3}}})
  with pytest.raises(
    ValueError, match=r"grid\.dataset_overrides\.digits\.model\.depth is not a field"
  ):
    grids.cell_config(grid, next(grids.cells(grid)))


def test_markdown_table_gives_mean_and_sample_std_over_seeds():
  grid = _grid(rules=("deinforeg", "bp"), noise_rates=(0,), seeds=(0, 1))
  summaries = [
    {
      "dataset": "digits",
      "rule": "deinforeg",
      "noise_rate": 0,
      "best_test_accuracy": a,
      "train_time_s": 10.0,
    }
    for a in (0.90, 0.94)
  ] + [
    {
      "dataset": "digits",
      "rule": "bp",
      "noise_rate": 0,
      "best_test_accuracy": 0.5,
      "train_time_s": 4.0,
    }
  ]
  table = report.markdown_table(grid, summaries)
  std = 100 * np.std([0.90, 0.94], ddof=1)
  assert f"| 0% | 92.0 ± {std:.1f} | 50.0 (n=1) |" in table
  assert "| train time / run | 10 s | 4 s |" in table


def test_grid_writes_one_json_per_run_a_table_and_plots_and_skips_finished_cells(
  tmp_path, fake_trainer
):
  grid = _grid()
  summaries = runner.run_grid(grid, str(tmp_path))
  assert len(fake_trainer.calls) == len(summaries) == 8
  names = sorted(os.listdir(tmp_path / "cells"))
  assert names[0] == "digits__bp__noise0__seed0.json" and len(names) == 8
  table = (tmp_path / "table.md").read_text()
  assert "| 40% | 69.5 ± 0.7 | 69.5 ± 0.7 |" in table  # 0.9 - 0.2 - 0.01·seed over seeds 0, 1
  for png in ("accuracy_vs_noise.png", "block_accuracy_digits.png"):
    assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
  again = runner.run_grid(grid, str(tmp_path))
  assert len(fake_trainer.calls) == 8  # nothing retrained
  assert again == summaries


class _LastFirstExecutor:
  """Trains the cells last first, as a cluster executor may finish them in any order."""

  def __init__(self):
    self.started = []

  def run(self, runs, train_cell, may_start):
    for run in reversed(runs):
      if may_start(run):
        self.started.append(run.name)
        yield run, train_cell(run)


def test_an_executor_may_finish_cells_in_any_order_and_the_summaries_keep_the_run_order(
  tmp_path, fake_trainer
):
  grid = _grid(noise_rates=(0,))
  executor = _LastFirstExecutor()
  summaries = runner.run_grid(grid, str(tmp_path), executor=executor)
  names = [grids.cell_name(cell) for cell in grids.cells(grid)]
  assert executor.started == names[::-1]
  assert [grids.cell_name(s) for s in summaries] == names
  workdirs = [grids.cell_workdir(str(tmp_path), cell) for cell in grids.cells(grid)]
  assert fake_trainer.calls == workdirs[::-1]
  assert "| 0% | 89.5 ± 0.7 | 89.5 ± 0.7 |" in (tmp_path / "table.md").read_text()
  local = runner.run_grid(grid, str(tmp_path / "local"), executor=executors.LocalExecutor())
  assert [{**s, "workdir": None} for s in local] == [{**s, "workdir": None} for s in summaries]


class _OneFailsExecutor:
  """Reports the first cell failed, as a cluster executor does for a deterministic error."""

  def run(self, runs, train_cell, may_start):
    for run in runs:
      if may_start(run):
        failed = run is runs[0]
        yield run, executors.CellFailed("config.optim.name: bad") if failed else train_cell(run)


def test_a_failed_cell_is_reported_and_the_others_are_tabulated(tmp_path, fake_trainer):
  grid = _grid(rules=("deinforeg",), noise_rates=(0,))
  with pytest.raises(runner.CellsFailedError) as failed:
    runner.run_grid(grid, str(tmp_path), executor=_OneFailsExecutor())
  assert str(failed.value) == (
    "1 cell(s) failed (digits__deinforeg__noise0__seed0: config.optim.name: bad); the 1 finished "
    f"cell(s) are in {tmp_path / 'table.md'}. Fix the grid and run the same command again: "
    "finished cells are kept."
  )
  table = (tmp_path / "table.md").read_text()
  assert "| 0% | 89.0 (n=1) |" in table
  assert table.endswith(
    "1 cell(s) failed:\n- digits__deinforeg__noise0__seed0: config.optim.name: bad\n"
  )
  assert os.listdir(tmp_path / "cells") == ["digits__deinforeg__noise0__seed1.json"]


def test_the_cost_of_a_dry_run_is_measured_where_cells_finished_else_from_aot_flops(
  tmp_path, fake_trainer, capsys
):
  grid = _grid(noise_rates=(0,), seeds=(0,))
  grid.base.train.max_steps = 4
  runner.run_grid(grid, str(tmp_path))  # both cells (fake: 11 steps in 2 s each)
  os.remove(tmp_path / "cells" / "digits__bp__noise0__seed0.json")
  os.remove(tmp_path / "digits" / "bp" / "noise0" / "seed0" / "results.json")
  grid.seeds = (0, 1)
  grid.sustained_tflops = 2e-6
  capsys.readouterr()
  runner.run_grid(grid, str(tmp_path), dry_run=True)
  lines = capsys.readouterr().out.splitlines()
  start = lines.index("cost of the 3 unfinished cell(s), training steps only:")
  flops, measured, total = lines[start + 1:]  # groups in run order: bp (seed 0) first
  seconds = 2.0 / 11  # the finished deinforeg cell's train_time_s / steps
  assert measured == (
    f"  digits / deinforeg: 1 cell(s) x 4 steps: {4 * seconds / 3600:.3g} device-hours "
    f"(measured, {seconds:.3g} s/step x 1 device(s) (1 finished))"
  )
  match = re.fullmatch(
    r"  digits / bp: 2 cell\(s\) x 4 steps: (\S+) device-hours \(AOT FLOPs, (\S+) per step at "
    r"2e-06 TFLOP/s sustained\)", flops,
  )
  assert match and float(match[1]) == pytest.approx(2 * 4 * float(match[2]) / 2e6 / 3600, rel=1e-2)
  assert total.startswith("  total: ")


def test_a_stop_request_between_cells_stops_the_grid_before_the_next_cell(tmp_path, fake_trainer):
  grid = _grid(rules=("deinforeg",), noise_rates=(0,))
  requests = iter([None, "SIGTERM"])  # asked before each cell
  with pytest.raises(user_errors.Interrupted) as stopped:
    runner.run_grid(grid, str(tmp_path), stop_requested=lambda: next(requests))
  assert str(stopped.value) == (
    "SIGTERM received before cell digits__deinforeg__noise0__seed1 started: 1 finished "
    f"cell(s) are saved in {tmp_path / 'cells'}. Run the same command again to continue."
  )
  assert os.listdir(tmp_path / "cells") == ["digits__deinforeg__noise0__seed0.json"]
  assert len(runner.run_grid(grid, str(tmp_path))) == 2 and len(fake_trainer.calls) == 2


def test_plateau_gain_is_the_last_epochs_best_exit_over_the_earlier_best():
  curve = {"test_accuracy": [[0.5, 0.4], [0.6, 0.7], [0.7, 0.69], [0.705, 0.6]]}
  assert report.plateau_gain(curve, 2) == pytest.approx(0.705 - 0.7)
  assert report.plateau_gain(curve, 3) == pytest.approx(0.705 - 0.5)
  assert report.plateau_gain(curve, 4) is None  # nothing before the last 4 epochs


def test_compare_is_welchs_two_sided_t_test():
  assert welch.compare([0.90, 0.91, 0.92], [0.80, 0.81, 0.82])[0] == "win"
  assert welch.compare([0.80, 0.81, 0.82], [0.90, 0.91, 0.92])[0] == "loss"
  outcome, p = welch.compare([0.80, 0.90, 0.85], [0.82, 0.88, 0.84])
  assert outcome == "tie" and p > 0.5
  # Welch's t for [1, 2, 3] vs [3, 4, 5]: t = -2 / sqrt(2/3), 4 degrees of freedom, p = 0.0705.
  outcome, p = welch.compare([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
  assert outcome == "tie" and p == pytest.approx(0.0705, abs=1e-4)
  assert welch.compare([0.5, 0.5], [0.4, 0.4]) == ("win", 0.0)
  assert welch.compare([0.5, 0.5], [0.5, 0.5]) == ("tie", 1.0)
  assert welch.compare([0.5], [0.4, 0.4])[0] == "–"


def test_the_table_counts_converged_cells_and_gives_wins_ties_losses():
  grid = _grid(rules=("deinforeg", "bp", "al"), noise_rates=(0,), seeds=(0, 1, 2))
  grid.plateau_epochs, grid.plateau_tol, grid.compare_to = 1, 0.01, "deinforeg"

  def summary(rule, accuracy, last_gain):
    curve = {"test_accuracy": [[accuracy - last_gain], [accuracy]]}
    return {
      "dataset": "digits",
      "rule": rule,
      "noise_rate": 0,
      "best_test_accuracy": accuracy,
      "train_time_s": 1.0,
      "curve": curve,
    }

  summaries = (
    [summary("deinforeg", a, 0.0) for a in (0.90, 0.91, 0.92)]
    + [summary("bp", a, 0.05) for a in (0.80, 0.81, 0.82)]  # still climbing: not converged
    + [summary("al", a, 0.005) for a in (0.89, 0.92, 0.90)]
  )
  table = report.markdown_table(grid, summaries)
  assert "| converged (last 1 epochs gained ≤ 1 points) | 3/3 | 0/3 | 3/3 |" in table
  assert "| noise | vs bp | vs al |" in table
  row = next(line for line in table.splitlines() if line.startswith("| 0% | win"))
  assert row.split(" | ")[2].startswith("tie (p=")
  assert "| W/T/L | 1/0/0 | 0/1/0 |" in table


def test_report_only_rebuilds_table_and_curves_from_the_summaries_alone(tmp_path, fake_trainer):
  grid = _grid(noise_rates=(0,), seeds=(0,))
  runner.run_grid(grid, str(tmp_path))
  (tmp_path / "table.md").unlink()
  for rule in ("deinforeg", "bp"):  # committed summaries only: every workdir is gone
    shutil.rmtree(tmp_path / "digits" / rule)
  grid.seeds = (0, 1)
  summaries = runner.run_grid(grid, str(tmp_path), report_only=True)
  assert len(fake_trainer.calls) == 2 and len(summaries) == 2  # nothing trained
  assert summaries[0]["curve"]["epoch"] == [1, 2]
  table = (tmp_path / "table.md").read_text()
  assert "| 0% | 90.0 (n=1) | 90.0 (n=1) |" in table
  assert "2 cell(s) not run yet." in table
  assert (tmp_path / "learning_curves_digits.png").read_bytes()[:4] == b"\x89PNG"


def test_a_summary_cut_short_is_rebuilt_from_results_or_its_cell_run_again(
  tmp_path, fake_trainer, capsys
):
  grid = _grid(rules=("deinforeg",), noise_rates=(0,))
  first = runner.run_grid(grid, str(tmp_path))
  cells = tmp_path / "cells"
  for path in cells.iterdir():  # a kill during the write, on a version that wrote in place
    path.write_text(path.read_text()[:40])
  shutil.rmtree(tmp_path / "digits" / "deinforeg" / "noise0" / "seed1")  # its results too
  again = runner.run_grid(grid, str(tmp_path))
  assert fake_trainer.calls[2:] == [grids.cell_workdir(str(tmp_path), again[1])]
  assert again == first
  assert [json.loads(p.read_text()) for p in sorted(cells.iterdir())] == first
  out = capsys.readouterr().out
  seed0, seed1 = (cells / f"digits__deinforeg__noise0__seed{s}.json" for s in (0, 1))
  assert f"note: {seed0} was unreadable: rebuilt from " in out
  assert f"note: {seed1} is unreadable and " in out and "running the cell again" in out


def test_a_finished_cell_with_another_config_is_refused(tmp_path, fake_trainer):
  runner.run_grid(_grid(noise_rates=(0,), seeds=(0,)), str(tmp_path))
  changed = _grid(noise_rates=(0,), seeds=(0,))
  changed.base.train.num_epochs = 5
  with pytest.raises(ValueError, match=r"train\.num_epochs=1 there, 5 in this grid"):
    runner.run_grid(changed, str(tmp_path))


def test_the_budget_stops_new_cells_and_the_table_says_so(tmp_path, fake_trainer, monkeypatch):
  clock = iter(range(0, 10_000, 60))  # every reading of the clock is 60 s later
  monkeypatch.setattr(runner.time, "perf_counter", lambda: float(next(clock)))
  grid = _grid()
  grid.budget_minutes = 2.5  # 150 s: cells start at 60 s and 120 s, not at 180 s
  runner.run_grid(grid, str(tmp_path))
  assert len(fake_trainer.calls) == 2
  assert (
    "6 cell(s) not run: the budget of 2.5 min was spent." in (tmp_path / "table.md").read_text()
  )


def test_a_real_cell_records_noise_and_grad_norms_and_an_unfinished_cell_resumes(tmp_path):
  grid = _grid(rules=("deinforeg",), noise_rates=(40,), seeds=(0,))
  grid.base.train.log_grad_norms = True
  (first,) = runner.run_grid(grid, str(tmp_path))
  assert first["label_noise"]["rate"] == 40 and first["label_noise"]["changed_fraction"] > 0.2
  assert len(first["per_block_test_accuracy"]) == 2
  # Gradient norms: the 3 encoder layers of blocks "32,32,M;64,M", at init and per epoch.
  with open(os.path.join(first["workdir"], "grad_norms.json")) as f:
    saved = json.load(f)
  assert len(saved["layers"]) == len(saved["init"]) == 3
  assert all("/encoder/" in name for name in saved["layers"]) and min(saved["init"]) > 0
  with open(os.path.join(first["workdir"], "metrics.jsonl")) as f:
    assert len(json.loads(f.readline())["train_grad_norm"]) == 3
  assert (tmp_path / "grad_norm_digits.png").read_bytes()[:4] == b"\x89PNG"
  # Lose the summary and results (a run killed before finishing): the rerun resumes from
  # the final checkpoint, evaluates it and reproduces the same accuracy without training.
  os.remove(tmp_path / "cells" / "digits__deinforeg__noise40__seed0.json")
  os.remove(os.path.join(first["workdir"], "results.json"))
  with open(os.path.join(first["workdir"], "metrics.jsonl")) as f:
    epochs_before = f.read()
  (second,) = runner.run_grid(grid, str(tmp_path))
  assert second["per_block_test_accuracy"] == first["per_block_test_accuracy"]
  assert second["steps"] == first["steps"]
  with open(os.path.join(first["workdir"], "metrics.jsonl")) as f:
    assert f.read() == epochs_before


def test_variant_labels_set_the_rule_optimizer_and_ce_weight_of_each_ablation_cell():
  grid = noise_ablation_mnist.get_config()
  configs = {c["rule"]: grids.cell_config(grid, c) for c in grids.cells(grid)}
  got = {
    label: (c.rule, c.optim.name, c.optim.base_lr, c.optim.end_lr, c.loss.ce_weight)
    for label, c in configs.items()
  }
  assert got == {
    "deinforeg_lars": ("deinforeg", "lars", 0.2, 0.002, 0.001),
    "deinforeg_ce0p1": ("deinforeg", "adam", 1e-3, 1e-5, 0.1),
    "bp_lars": ("bp", "lars", 0.2, 0.002, 0.001),
    "deinforeg_ce0p01": ("deinforeg", "adam", 1e-3, 1e-5, 0.01),
    "deinforeg": ("deinforeg", "adam", 1e-3, 1e-5, 0.001),
    "bp": ("bp", "adam", 1e-3, 1e-5, 0.001),
  }
  lars = configs["deinforeg_lars"].optim
  assert (lars.weight_decay, lars.momentum, lars.eta, lars.schedule_per_epoch) == (
    1e-4,
    0.9,
    1e-3,
    True,
  )
  for config in configs.values():
    noise = config.data.label_noise
    assert (noise.kind, noise.rate, config.train.num_epochs) == ("symmetric", 40, 10)
    assert (config.model.width, config.data.batch_size, config.data.augment) == (0.5, 128, "none")


def test_the_ablations_adam_cells_are_the_converged_studys_own_cells():
  """The ``deinforeg`` and ``bp`` 40% cells were copied from studies/converged_mnist."""
  ablation, converged = noise_ablation_mnist.get_config(), converged_mnist.get_config()
  shared = [c for c in grids.cells(ablation) if c["rule"] in ("deinforeg", "bp")]
  assert len(shared) == 6
  for cell in shared:
    assert cell in list(grids.cells(converged))
    assert (
      grids.cell_config(ablation, cell).to_dict() == grids.cell_config(converged, cell).to_dict()
    )


def test_an_unknown_rule_label_is_named():
  grid = _grid(rules=("deinforeg_lars",))
  grid.rule_overrides = ml_collections.ConfigDict({"deinforeg_lars": {"optim": {"name": "sgd"}}})
  message = r"'deinforeg_lars': neither a rule .*grid\.rule_overrides\.deinforeg_lars\.rule"
  with pytest.raises(ValueError, match=message):
    grids.cell_config(grid, next(grids.cells(grid)))


def _config_before_variant_labels(grid, cell):
  """``cell_config`` as it was before variant labels: overrides, then the cell's axes."""
  config = copy.deepcopy(grid.base)
  with config.unlocked():
    for overrides, key in ((grid.dataset_overrides, "dataset"), (grid.rule_overrides, "rule")):
      if cell[key] in overrides:
        grids.apply_overrides(config, overrides[cell[key]], key)
    config.rule, config.data.name, config.seed = cell["rule"], cell["dataset"], cell["seed"]
    noise = config.data.label_noise
    noise.kind = grid.noise_kind if cell["noise_rate"] > 0 else "none"
    noise.rate, noise.seed = cell["noise_rate"], cell["seed"]
  return config


@pytest.mark.parametrize(
  "name", ["converged_mnist", "noise_cifar", "noise_digits", "noise_agnews", "deep_plain"]
)
def test_existing_grids_keep_their_cell_names_and_configs(name):
  grid = importlib.import_module(f"launch.configs.experiments.{name}").get_config()
  for cell in grids.cells(grid):
    assert grids.cell_name(cell) == (
      f"{cell['dataset']}__{cell['rule']}__noise{cell['noise_rate']}__seed{cell['seed']}"
    )
    assert grids.cell_config(grid, cell) == _config_before_variant_labels(grid, cell)


def test_a_known_converged_cell_keeps_its_config():
  grid = converged_mnist.get_config()
  cell = {"dataset": "mnist_local", "rule": "deinforeg", "noise_rate": 40, "seed": 2}
  config = grids.cell_config(grid, cell)
  assert grids.cell_name(cell) == "mnist_local__deinforeg__noise40__seed2"
  assert (config.rule, config.seed, config.data.name, config.data.batch_size) == (
    "deinforeg",
    2,
    "mnist_local",
    128,
  )
  assert (config.optim.name, config.optim.base_lr, config.optim.end_lr) == ("adam", 1e-3, 1e-5)
  assert (config.loss.ce_weight, config.model.width, config.train.num_epochs) == (0.001, 0.5, 10)
  noise = config.data.label_noise
  assert (noise.kind, noise.rate, noise.seed) == ("symmetric", 40, 2)


def test_a_dry_run_lists_the_ablation_cells_informative_variants_first(tmp_path, capsys):
  grid = noise_ablation_mnist.get_config()
  assert runner.run_grid(grid, str(tmp_path), dry_run=True) == []
  out = capsys.readouterr().out.splitlines()
  names = [line.split()[1] for line in out if line.startswith("[todo]")]
  assert len(names) == 18 and names[:3] == [
    "mnist_local__deinforeg_lars__noise40__seed0",
    "mnist_local__deinforeg_ce0p1__noise40__seed0",
    "mnist_local__bp_lars__noise40__seed0",
  ]
  assert not (tmp_path / "table.md").exists()


def test_the_table_lists_variants_and_compares_every_metric(tmp_path, fake_trainer):
  grid = _grid(rules=("deinforeg_ce", "deinforeg", "bp"), noise_rates=(40,), seeds=(0, 1))
  grid.rule_overrides = ml_collections.ConfigDict(
    {"deinforeg_ce": {"rule": "deinforeg", "loss": {"ce_weight": 0.1}}}
  )
  grid.compare_to = "deinforeg_ce,deinforeg"
  grid.extra_metrics = ("best_epoch_test_accuracy",)
  runner.run_grid(grid, str(tmp_path))
  assert {c.split("__")[1] for c in os.listdir(tmp_path / "cells")} == {
    "deinforeg_ce",
    "deinforeg",
    "bp",
  }
  with open(tmp_path / "digits" / "deinforeg_ce" / "noise40" / "seed0" / "results.json") as f:
    config = json.load(f)["config"]
  assert (config["rule"], config["loss"]["ce_weight"]) == ("deinforeg", 0.1)
  table = (tmp_path / "table.md").read_text()
  assert "- `deinforeg_ce`: rule=deinforeg, loss.ce_weight=0.1" in table
  assert "| noise | deinforeg_ce | deinforeg | bp |" in table
  assert "Test accuracy (%), `best_epoch_test_accuracy`, on digits:" in table
  for metric in ("best_test_accuracy", "best_epoch_test_accuracy"):
    for ours in ("deinforeg_ce", "deinforeg"):
      assert f"Win / tie / loss of **{ours}** on digits (`{metric}`" in table
  assert "| noise | vs deinforeg | vs bp |" in table
