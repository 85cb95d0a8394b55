"""Grid configs for ``launch/experiments.py``; ``make_grid`` fills the fields every grid has."""

import ml_collections


def make_grid(base, rules, datasets, noise_rates=(0,), seeds=(0, 1)) -> ml_collections.ConfigDict:
  """A grid over ``rules x datasets x noise_rates x seeds`` of the run config ``base``.

  Symmetric noise, ``best_test_accuracy`` tabulated, no time budget and no
  overrides by default; any field can be set afterwards or on the command line.
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
  grid.dataset_overrides = ml_collections.ConfigDict()
  grid.rule_overrides = ml_collections.ConfigDict()
  return grid
