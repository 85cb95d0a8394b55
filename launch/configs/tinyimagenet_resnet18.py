"""tiny_imagenet x resnet18 with the paper's settings; the rule is chosen by ``--config.rule``.

Prepare Tiny-ImageNet-200 at 32x32 once as ``tinyimagenet_vgg.py`` says, then:

  python -m launch.train --config=launch/configs/tinyimagenet_resnet18.py --workdir=W \
      --config.data.data_dir=DIR [--config.rule=bp]
"""

from launch.configs.spec_vision import spec_vision_config


def get_config():
  return spec_vision_config("tiny_imagenet", "resnet18")
