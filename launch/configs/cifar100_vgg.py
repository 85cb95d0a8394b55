"""cifar100 x vgg with the paper's settings; the rule is chosen by ``--config.rule``.

  python -m launch.train --config=launch/configs/cifar100_vgg.py --workdir=W \
      --config.data.data_dir=DIR [--config.rule=bp]
"""

from launch.configs.spec_vision import spec_vision_config


def get_config():
  return spec_vision_config("cifar100", "vgg")
