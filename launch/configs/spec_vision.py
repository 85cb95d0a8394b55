"""The paper's vision settings (the reference code's ``vision/setting.py``), shared by the ``<dataset>_<arch>.py`` configs.

Four blocks, 2048-2048-2048 projectors, LARS 0.2 -> 0.002 cosine, wd 1e-4,
batch 128 (test 1024), 200 epochs.  The input shape and class count come from
the dataset, so each config trains on any prepared image dataset by
overriding ``config.data.name`` / ``config.data.data_dir``.
"""

import ml_collections

from launch.configs import default


def spec_vision_config(dataset: str, arch: str) -> ml_collections.ConfigDict:
  """The paper's settings for ``dataset`` (a TFDS name) and ``arch`` ("vgg" | "resnet18")."""
  config = default.get_config()
  config.data.name = dataset
  config.data.batch_size = 128
  config.data.eval_batch_size = 1024
  config.data.augment = "strong"  # crop(4) + flip + colour jitter + grayscale, as the reference
  config.model.arch = arch
  config.model.vgg_blocks = "spec"
  config.model.projector = "2048-2048-2048"
  config.optim.name = "lars"
  config.optim.base_lr = 0.2
  config.optim.end_lr = 0.002
  config.train.num_epochs = 200
  return config
