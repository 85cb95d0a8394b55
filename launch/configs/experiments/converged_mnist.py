"""Converged comparison on MNIST: all four rules, clean and 40% symmetric noise, seeds 0-2.

The default VGG-style blocks (``32,32,M;64,M;128,M;128``) at width 0.5 (channels 16, 16,
32, 64, 64), ``256-256`` projectors, Adam 1e-3 -> 1e-5 cosine for every rule (LARS
barely moves the local losses at CPU budgets), batch 128, no augmentation, 10 epochs
(4,690 steps).  Convergence is defined before the runs: a cell has converged when its
last 3 epochs raised the best-exit test accuracy by at most 0.1 points over the earlier
epochs; the table counts converged cells and gives DeInfoReg's win / tie / loss against
each rule (Welch's t-test over the 3 seeds, p < 0.05).  Roughly 15 min per cell on 2
quiet CPU cores; cells run seed-major, each one's summary lands in
``studies/converged_mnist/cells/`` (committed), and rerunning the command continues:

  python -m launch.prepare_data --name=mnist_local --data_dir=$HOME/tfds \\
      --npz=../shared/data/mnist.npz
  python -m launch.experiments --grid=launch/configs/experiments/converged_mnist.py \\
      --root=studies/converged_mnist --grid.base.data.data_dir=$HOME/tfds
"""

from launch.configs import default
from launch.configs.experiments import make_grid


def get_config():
  base = default.get_config()  # 32,32,M;64,M;128,M;128 blocks, 256-256 projectors, merge heads
  base.data.name = "mnist_local"
  base.data.batch_size = 128
  base.data.eval_batch_size = 1000
  base.model.width = 0.5
  base.model.bp_head_hidden = 256
  base.optim.name = "adam"
  base.optim.base_lr = 1e-3
  base.optim.end_lr = 1e-5
  base.train.num_epochs = 10
  base.checkpoint.keep = 1
  # The study's cells (and the noise ablation built on this base) ran with Flax's BatchNorm
  # running variance, the default until 2026-12: pinned so that the same command continues them.
  base.model.bn_running_var = "biased"

  grid = make_grid(
    base, ("deinforeg", "bp", "scpl", "al"), ("mnist_local",), (0, 40), seeds=(0, 1, 2)
  )
  grid.plateau_epochs = 3
  grid.plateau_tol = 0.001
  grid.compare_to = "deinforeg"
  return grid
