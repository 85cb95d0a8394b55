"""DeInfoReg vs BP side by side: same backbone, data, seed and budget.

Trains one run per rule (``--rules``) from the same config, each in
``<workdir>/<rule>``, and prints one JSON line per rule::

  python -m benchmarks.accuracy_budget --config=launch/configs/cifar10_vgg.py \\
      --config.data.name=cifar10_20k --config.data.data_dir=/path/to/tfds \\
      --config.model.width=0.25 --config.model.projector=512-512-512 \\
      --config.train.num_epochs=10 --workdir=runs/accuracy_budget

Text (BiLSTM / Transformer) the same way, e.g. on a prepared AG News subset::

  python -m benchmarks.accuracy_budget --config=launch/configs/agnews_lstm.py \
      --config.data.name=ag_news_5k --config.data.data_dir=/path/to/tfds \
      --config.model.glove=glove6b_50d_5k.npz --config.model.emb_dim=50 \
      --config.train.num_epochs=5 --workdir=runs/accuracy_budget_text

The budget is the config's epoch count; every rule gets the same one.  Runs are
checkpointed, so an interrupted benchmark resumes when rerun with the same
command.
"""

import copy
import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from deinforeg_jax.train import train_and_evaluate

config_flags.DEFINE_config_file(
  "config",
  os.path.join(os.path.dirname(__file__), "..", "launch", "configs", "default.py"),
  "Base config; --config.rule is overridden per run.",
  lock_config=True,
)
_RULES = flags.DEFINE_list("rules", ["deinforeg", "bp"], "Training rules to compare.")
_WORKDIR = flags.DEFINE_string("workdir", None, "One sub-directory per rule.", required=True)


def summary_line(config, results: dict) -> dict:
  """The JSON line of one run."""
  return {
    "benchmark": "accuracy_budget",
    "rule": results["rule"],
    "dataset": results["dataset"],
    "arch": config.model.arch,
    "width": config.model.width,
    "projector": config.model.projector if results["rule"] != "bp" else None,
    "epochs": config.train.num_epochs,
    "batch_size": config.data.batch_size,
    "seed": config.seed,
    "per_block_test_accuracy": [round(a, 4) for a in results["per_block_test_accuracy"]],
    "best_test_accuracy": round(results["best_test_accuracy"], 4),
    "best_block": results["best_block"],
    "wall_time_s": round(results["wall_time_s"], 1),
    "steps_per_s": round(results["steps_per_s"], 3),
    **_text_fields(config),
  }


def _text_fields(config) -> dict:
  """Text settings of the line (none for vision configs)."""
  if config.data.kind != "text":
    return {}
  m = config.model
  fields = {"num_blocks": m.num_blocks, "emb_dim": m.emb_dim, "max_len": config.data.max_len}
  fields.update(
    {"hidden": m.hidden} if m.arch == "lstm" else {"heads": m.heads, "ff_dim": m.ff_dim}
  )
  return {
    **fields,
    "glove": os.path.basename(m.glove) or None,
    "vocab_size": config.data.vocab_size,
  }


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  for rule in _RULES.value:
    config = copy.deepcopy(flags.FLAGS.config)
    with config.unlocked():
      config.rule = rule
    results = train_and_evaluate(config, os.path.join(_WORKDIR.value, rule))
    print(json.dumps(summary_line(config, results)), flush=True)


if __name__ == "__main__":
  app.run(main)
