"""Label-noise study on the CIFAR-10 subset: symmetric noise 0/20/40/60 %, two seeds.

A short CPU budget, so a small backbone and Adam for every rule (LARS barely
moves DeInfoReg in a few epochs; see the README): VGG-style blocks
``32,M;64,M;128,M;128,M`` at width 0.5 (4 blocks of one conv, 16-32-64-64
channels), ``256-256`` projectors, Adam 1e-3 -> 1e-5 cosine, batch 128,
no augmentation, 1 epoch (1-3 min per run on the shared 2-core machine):

  python -m launch.prepare_data --name=cifar10_20k --data_dir=$HOME/tfds \\
      --npz=../shared/data/cifar10_20k.npz
  python -m launch.experiments --grid=launch/configs/experiments/noise_cifar.py \\
      --root=runs/noise_cifar --grid.base.data.data_dir=$HOME/tfds
"""

from launch.configs import cifar10_small_vgg
from launch.configs.experiments import make_grid


def get_config():
  base = cifar10_small_vgg.get_config()  # 32,M;64,M;128,M;128,M, 256-256, Adam 1e-3 -> 1e-5
  base.data.name = "cifar10_20k"
  base.data.augment = "none"
  base.model.width = 0.5  # channels 16, 32, 64, 64
  base.model.bp_head_hidden = 256
  base.train.num_epochs = 1

  return make_grid(base, ("deinforeg", "bp"), ("cifar10_20k",), (0, 20, 40, 60))
