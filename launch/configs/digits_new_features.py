"""New-feature block on digits (dynamic extended layers with new features): the old stack sees columns 0..3, a new block adds 4..7.

Step 1 trains two blocks on the old features only (``grow.side_split``); step 2
restores them frozen and trains one new block whose encoder reads the old top
block's output together with the encoded new columns (``grow.side_encoder``,
``grow.side_layers``):

  python -m launch.train --config=launch/configs/digits_new_features.py \\
      --config.grow.side_layers= --workdir=runs/digits_left          # step 1
  python -m launch.train --config=launch/configs/digits_new_features.py \\
      --config.grow.from_workdir=runs/digits_left --workdir=runs/digits_side   # step 2
"""

from launch.configs import default


def get_config():
  config = default.get_config()
  config.model.num_blocks = 2  # 8x4 -> 4x2 -> 2x1: the old blocks' maps
  config.grow.side_split = "width:4"  # old features: columns 0..3; new features: 4..7
  config.grow.side_encoder = "32,M,64,M"  # new columns 8x4 -> 2x1, the old top block's size
  config.grow.side_layers = "64"  # the new block: conv 64 over [h_old ; encoded new columns]
  return config
