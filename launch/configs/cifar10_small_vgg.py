"""A small, fast VGG-style DeInfoReg stack for CIFAR-sized data (budget studies, growth).

Four blocks ``32,M;64,M;128,M;128,M``, ``256-256`` projectors, Adam 1e-3 -> 1e-5
cosine, crop+flip, batch 128, 4 epochs: about a minute per epoch on 2 CPU cores
for the 20,000-image ``cifar10_20k`` subset.  Not the paper's protocol (see
``cifar10_vgg.py`` for that).

  python -m launch.train --config=launch/configs/cifar10_small_vgg.py \\
      --config.data.name=cifar10_20k --config.data.data_dir=$HOME/tfds --workdir=W
"""

from launch.configs import default


def get_config():
  config = default.get_config()
  config.data.name = "cifar10"
  config.data.batch_size = 128
  config.data.eval_batch_size = 1000
  config.data.augment = "crop_flip"
  config.model.vgg_blocks = "32,M;64,M;128,M;128,M"
  config.model.projector = "256-256"
  config.optim.name = "adam"
  config.optim.base_lr = 1e-3
  config.optim.end_lr = 1e-5
  config.train.num_epochs = 4
  return config
