"""A deep plain network on the embedded digits: 24 conv-ReLU layers, no BatchNorm, no skips.

Four blocks of six 3x3 conv-ReLU layers (32 channels, max-pool after blocks 1-3),
Adam 1e-3 -> 1e-5 cosine, 20 epochs, per-layer gradient norms logged
(``grad_norms.json`` at initialisation, ``train_grad_norm`` per epoch).  Without
normalisation or residuals, end-to-end BP's gradient shrinks layer by layer;
each decoupled block's gradient path is six layers long:

  python -m launch.train --config=launch/configs/deep_plain.py --workdir=W [--config.rule=bp]
"""

from launch.configs import default


def get_config():
  config = default.get_config()
  block = ",".join(["32"] * 6)
  config.model.vgg_blocks = f"{block},M;{block},M;{block},M;{block}"
  config.model.batch_norm = False
  config.model.al_activation = "sigmoid"  # as measured in the README (the reference's AL)
  config.optim.name = "adam"
  config.optim.base_lr = 1e-3
  config.optim.end_lr = 1e-5
  config.train.log_grad_norms = True
  return config
