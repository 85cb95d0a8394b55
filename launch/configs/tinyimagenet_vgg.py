"""tiny_imagenet x vgg with the paper's settings; the rule is chosen by ``--config.rule``.

Tiny-ImageNet-200 at 32x32 (200 classes; its val split is the test split), prepared once
from the ``tiny-imagenet-200`` folder with the reference code's normalisation:

  python -m launch.prepare_data --name=tiny_imagenet --data_dir=DIR \
      --tiny_imagenet=tiny-imagenet-200 --resize=32 \
      --mean=0.4802,0.4481,0.3975 --std=0.2770,0.2691,0.2821
  python -m launch.train --config=launch/configs/tinyimagenet_vgg.py --workdir=W \
      --config.data.data_dir=DIR [--config.rule=bp]
"""

from launch.configs.spec_vision import spec_vision_config


def get_config():
  return spec_vision_config("tiny_imagenet", "vgg")
