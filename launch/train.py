"""Train a DeInfoReg (or BP) model from a config file.

python -m launch.train --workdir=/tmp/run                       # embedded default
python -m launch.train --config=launch/configs/cifar10_vgg.py --workdir=W --config.rule=bp
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from deinforeg_jax.train import train_and_evaluate

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")
config_flags.DEFINE_config_file(
  "config", _DEFAULT_CONFIG, "Run config (ml_collections file).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for metrics.jsonl and results.json.", required=True
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
