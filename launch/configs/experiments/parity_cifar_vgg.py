"""Parity with the original PyTorch code at its own short protocol (issue: research validity).

The protocol of the reference figures: ``cifar10_20k`` (all 20,000 training images, the full
10,000-image test set), the paper's VGG at full width, 2048-2048-2048 projectors, merge
classifiers, batch 128, LARS lr 0.2 with the per-epoch cosine (one epoch: a constant 0.2),
weight decay 1e-4, random crop (pad 4) + horizontal flip only, exactly 1 epoch (156 steps),
seeds 0-2, DeInfoReg and BP.  Flax's initialisation (the default) and the original's
(``model.init=torch``) are two roots of the same grid; both keep PyTorch's unbiased BatchNorm
running variance, the default since 2026-12 (``studies/parity_flax`` ran with the biased one,
``studies/parity_unbiased_bn`` is the DeInfoReg root on the final defaults):

  python -m launch.prepare_data --name=cifar10_20k --data_dir=$HOME/tfds \\
      --npz=../shared/data/cifar10_20k.npz
  python -m launch.experiments --grid=launch/configs/experiments/parity_cifar_vgg.py \\
      --root=runs/parity --grid.base.data.data_dir=$HOME/tfds
  python -m launch.experiments --grid=launch/configs/experiments/parity_cifar_vgg.py \\
      --root=runs/parity_torch --grid.base.data.data_dir=$HOME/tfds --grid.base.model.init=torch

About 30 min per DeInfoReg cell and 25 per BP cell on 2 CPU cores.
"""

from launch.configs import cifar10_vgg
from launch.configs.experiments import make_grid


def get_config():
  base = cifar10_vgg.get_config()  # the paper's VGG, 2048-2048-2048, LARS 0.2, wd 1e-4, batch 128
  base.data.name = "cifar10_20k"
  base.data.augment = "crop_flip"
  base.optim.schedule_per_epoch = True
  base.train.num_epochs = 1
  base.checkpoint.keep = 1
  base.checkpoint.every_steps = 52  # an interrupted cell resumes within a third of its epoch
  return make_grid(base, ("deinforeg", "bp"), ("cifar10_20k",), seeds=(0, 1, 2))
