"""Label-noise study on the embedded digits: all four rules, noise 0/20/40/60 %, two seeds.

The default digits config (4 VGG-style blocks, ``256-256`` projectors, 20 epochs) with
Adam 1e-3 -> 1e-5 for every rule (AL barely learns under LARS in 20 epochs).  Twenty
epochs over 1,437 images are enough for end-to-end BP to fit the noisy labels, which a
one-epoch CIFAR run is not.  About 20-60 s per run on 2 CPU cores:

  python -m launch.experiments --grid=launch/configs/experiments/noise_digits.py \\
      --root=runs/noise_digits
"""

from launch.configs import default
from launch.configs.experiments import make_grid


def get_config():
  base = default.get_config()
  base.optim.name = "adam"
  base.optim.base_lr = 1e-3
  base.optim.end_lr = 1e-5
  base.model.al_activation = "sigmoid"  # as measured in the README (the reference's AL)

  return make_grid(base, ("deinforeg", "bp", "scpl", "al"), ("digits",), (0, 20, 40, 60))
