"""Grid configs for ``launch/experiments.py``; ``make_grid`` fills the fields every grid has."""

import ml_collections


def make_grid(base, rules, datasets, noise_rates=(0,), seeds=(0, 1)) -> ml_collections.ConfigDict:
  """A grid over ``rules x datasets x noise_rates x seeds`` of the run config ``base``.

  Symmetric noise, ``best_test_accuracy`` tabulated, no time budget, no overrides,
  no convergence check and no win/tie/loss by default; any field can be set
  afterwards or on the command line.  A ``rules`` entry may be a variant label whose
  ``rule_overrides`` set the real ``rule`` (``deinforeg_jax/studies/grid.py``).
  """
  grid = ml_collections.ConfigDict()
  grid.base = base
  grid.rules = tuple(rules)
  grid.datasets = tuple(datasets)
  grid.noise_rates = tuple(noise_rates)
  grid.noise_kind = "symmetric"
  grid.seeds = tuple(seeds)
  grid.metric = "best_test_accuracy"
  grid.budget_minutes = 0.0  # 0: no limit
  # Convergence: the last plateau_epochs epochs raised the best-exit test accuracy by at most
  # plateau_tol (a fraction) over the earlier epochs (0: not checked).
  grid.plateau_epochs = 0
  grid.plateau_tol = 0.0
  grid.compare_to = ""  # rules, comma-separated: win / tie / loss against the others (Welch)
  grid.extra_metrics = ()  # more summary fields tabulated and compared like grid.metric
  grid.dataset_overrides = ml_collections.ConfigDict()
  grid.rule_overrides = ml_collections.ConfigDict()
  # --executor=ray: one cell's Ray resources, NAME=AMOUNT joined by commas ("GPU=1", "CPU=4,GPU=1").
  grid.cell_resources = "CPU=1"
  # --dry_run's cost from XLA's FLOPs: the sustained TFLOP/s assumed per device (about 16 % of an
  # A100's dense bf16 peak; small convolutions at batch 128 rarely run faster).
  grid.sustained_tflops = 50.0
  return grid


def paper_grid(make_base, rules, archs, datasets) -> ml_collections.ConfigDict:
  """The thesis's grid: every ``<rule>_<arch>`` variant of ``make_base(dataset, arch)`` x
  ``datasets`` x noise 0/20/40/60 % x seeds 0-2, one GPU per cell, DeInfoReg of each backbone
  compared with the other rules of its column (``paper_vision.py``, ``paper_text.py``)."""
  labels = [f"{rule}_{arch}" for arch in archs for rule in rules]
  grid = make_grid(make_base(datasets[0], archs[0]), labels, datasets, (0, 20, 40, 60), (0, 1, 2))
  for arch in archs:
    for rule in rules:
      grid.rule_overrides[f"{rule}_{arch}"] = {"rule": rule, "model": {"arch": arch}}
  grid.compare_to = ",".join(f"deinforeg_{arch}" for arch in archs)
  grid.cell_resources = "GPU=1"
  return grid
