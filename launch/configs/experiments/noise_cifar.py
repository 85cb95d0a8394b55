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

import ml_collections

from launch.configs import default


def get_config():
  base = default.get_config()
  base.data.name = "cifar10_20k"
  base.data.batch_size = 128
  base.data.eval_batch_size = 1000
  base.data.augment = "none"
  base.model.vgg_blocks = "32,M;64,M;128,M;128,M"
  base.model.width = 0.5  # channels 16, 32, 64, 64
  base.model.projector = "256-256"
  base.model.bp_head_hidden = 256
  base.optim.name = "adam"
  base.optim.base_lr = 1e-3
  base.optim.end_lr = 1e-5
  base.train.num_epochs = 1

  grid = ml_collections.ConfigDict()
  grid.base = base
  grid.rules = ("deinforeg", "bp")
  grid.datasets = ("cifar10_20k",)
  grid.noise_rates = (0, 20, 40, 60)
  grid.noise_kind = "symmetric"
  grid.seeds = (0, 1)
  grid.metric = "best_test_accuracy"
  grid.budget_minutes = 0.0  # 0: no limit
  grid.dataset_overrides = ml_collections.ConfigDict()
  grid.rule_overrides = ml_collections.ConfigDict()
  return grid
