"""Deep-stack study: the 24-layer plain network of ``launch/configs/deep_plain.py``.

BP vs DeInfoReg vs SCPL vs AL on the embedded digits, clean labels, two seeds,
20 epochs of Adam each (about 1-2 min per run on 2 CPU cores), gradient norms logged:

  python -m launch.experiments --grid=launch/configs/experiments/deep_plain.py \\
      --root=runs/deep_plain
"""

import ml_collections

from launch.configs import deep_plain


def get_config():
  grid = ml_collections.ConfigDict()
  grid.base = deep_plain.get_config()
  grid.rules = ("bp", "deinforeg", "scpl", "al")
  grid.datasets = ("digits",)
  grid.noise_rates = (0,)
  grid.noise_kind = "symmetric"
  grid.seeds = (0, 1)
  grid.metric = "best_test_accuracy"
  grid.budget_minutes = 0.0  # 0: no limit
  grid.dataset_overrides = ml_collections.ConfigDict()
  grid.rule_overrides = ml_collections.ConfigDict()
  return grid
