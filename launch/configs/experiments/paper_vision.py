"""The paper's vision grid: CIFAR-10, CIFAR-100 and Tiny-ImageNet (32x32) x VGG and ResNet-18 x
DeInfoReg, BP, SCPL and AL x symmetric label noise 0/20/40/60 % x seeds 0-2, 200 epochs each
(288 cells; ``--dry_run`` prints their cost in device-hours).

From the paper and its code (``launch/configs/spec_vision.py``, the project spec, SPEC.md §5): the
datasets (Tiny-ImageNet resized to 32x32, ``launch.prepare_data --resize=32``), the two
backbones, the four rules, 200 epochs, LARS 0.2 -> 0.002 cosine, batch 128 (test 1024),
2048-2048-2048 projectors, the reference's augmentation, and its noise (``add_noise_cifar``:
rate in percent, uniform over all classes, training labels only).  Ours, because the paper does
not state them: the noise rates, three seeds (Welch's test needs at least two) and one GPU per
cell.  A backbone is a variant label, so cells are named ``<dataset>__<rule>_<arch>__noise<rate>
__seed<seed>``, e.g. ``cifar10__deinforeg_resnet18__noise40__seed2``:

  python -m launch.experiments --grid=launch/configs/experiments/paper_vision.py \\
      --root=/shared/paper_vision --grid.base.data.data_dir=/shared/tfds \\
      --executor=ray --ray_address=auto --dry_run
"""

from launch.configs.experiments import paper_grid
from launch.configs.spec_vision import spec_vision_config

RULES = ("deinforeg", "bp", "scpl", "al")
ARCHS = ("vgg", "resnet18")
DATASETS = ("cifar10", "cifar100", "tiny_imagenet")


def get_config():
  return paper_grid(spec_vision_config, RULES, ARCHS, DATASETS)
