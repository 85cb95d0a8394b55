"""Deep-stack study: the 24-layer plain network of ``launch/configs/deep_plain.py``.

BP vs DeInfoReg vs SCPL vs AL on the embedded digits, clean labels, two seeds,
20 epochs of Adam each (about 1-2 min per run on 2 CPU cores), gradient norms logged:

  python -m launch.experiments --grid=launch/configs/experiments/deep_plain.py \\
      --root=runs/deep_plain
"""

from launch.configs import deep_plain
from launch.configs.experiments import make_grid


def get_config():
  return make_grid(deep_plain.get_config(), ("bp", "deinforeg", "scpl", "al"), ("digits",))
