"""The original code's behaviour in one flag: a preset per architecture.

  python -m launch.train --config=launch/configs/reference.py:resnet18 --workdir=W \
      --config.data.data_dir=DIR [--config.rule=scpl]

``get_config(arch)`` is the paper's settings for ``arch`` (``spec_vision.py`` on CIFAR-10 for
vgg / resnet18, ``spec_text.py`` on AG News for lstm / transformer) with every setting where
our default departs from the original (reference commit fe6cc49) set to the original's:
``REFERENCE_BEHAVIOUR`` (one entry per departure; ``benchmarks.trajectory_parity`` replays the
original's recorded trajectories on this preset).  Sizes are not behaviour and are left alone.
"""

import ml_collections

from launch.configs.spec_text import spec_text_config
from launch.configs.spec_vision import spec_vision_config

VISION_ARCHS = ("vgg", "resnet18")
TEXT_ARCHS = ("lstm", "transformer")

# field -> the original's value, for every architecture ("all") or one family.
REFERENCE_BEHAVIOUR = {
  "all": {
    "model.init": "torch",  # PyTorch's U(+-1/sqrt(fan_in)) initialisers (ours: Flax's)
    "inference.exit_mode": "batch",  # *_DeInfoReg_Adaptive: one exit per batch
    "inference.patience_reset": False,  # its counter never resets
  },
  "vision": {
    "model.al_activation": "sigmoid",  # VGG_AL / resnet_AL components (ours: tanh)
    "optim.schedule_per_epoch": True,  # Adjust_Learning_Rate once per epoch
  },
  "text": {
    "model.embedding_pool": "all",  # the embedding block pools over the padding too (ours: masked)
    "model.lstm_padding": "read",  # nn.LSTM without packing reads the padding (ours: masked)
    "data.vocab_from": "train_test",  # create_vocab over train + test texts (ours: train)
    "grow.side_lstm_state": "old_top",  # LSTM_DeInfoReg_side: hiddenlist[-1] (ours: zero)
  },
}


def with_reference_behaviour(config: ml_collections.ConfigDict, arch: str):
  """``config`` with ``REFERENCE_BEHAVIOUR`` for ``arch``'s family set (in place; returned)."""
  family = "text" if arch in TEXT_ARCHS else "vision"
  for field, value in {**REFERENCE_BEHAVIOUR["all"], **REFERENCE_BEHAVIOUR[family]}.items():
    *path, name = field.split(".")
    section = config
    for part in path:
      section = section[part]
    section[name] = value
  return config


def get_config(arch: str = "vgg") -> ml_collections.ConfigDict:
  if arch in VISION_ARCHS:
    config = spec_vision_config("cifar10", arch)
  elif arch in TEXT_ARCHS:
    config = spec_text_config("ag_news_subset", arch)
  else:
    raise ValueError(
      f"launch/configs/reference.py:{arch}: the original implements {VISION_ARCHS + TEXT_ARCHS}."
    )
  return with_reference_behaviour(config, arch)
