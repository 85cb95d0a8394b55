"""Accuracy vs compute of the adaptive exit (``deinforeg_jax.inference``) over a grid of thresholds.

Reads a finished run's checkpoint (its config comes from the checkpoint
metadata), runs every exit once over the test set, then applies the exit rule
for each (patience, cosine threshold, mode) and prints one JSON line per
setting; also the fixed-depth exits (always stop at block k).  Writes
``adaptive_inference.json`` and ``adaptive_inference.png`` (accuracy vs the
fraction of full-depth FLOPs) to ``--out`` (default: the run's workdir)::

  python -m benchmarks.adaptive_inference --workdir=runs/digits
  python -m benchmarks.adaptive_inference --workdir=runs/cifar --data_dir=$HOME/tfds \\
      --patience=1,2 --cosine=0,0.5,0.8,0.9,0.95,0.99 --modes=sample,batch
"""

import json
import os

import jax
import matplotlib
import ml_collections
import numpy as np
from absl import app, flags, logging

from deinforeg_jax import checkpoint, inference, models
from deinforeg_jax.data import eval_batches, load_dataset
from deinforeg_jax.steps import model_inputs
from launch.configs import default

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the backend

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished training run.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output directory (default: --workdir).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Override config.data.data_dir.")
_PATIENCE = flags.DEFINE_list("patience", ["1", "2"], "Patience values.")
_COSINE = flags.DEFINE_list(
  "cosine", ["0", "0.5", "0.8", "0.9", "0.95", "0.99"], "Cosine thresholds."
)
_MODES = flags.DEFINE_list("modes", ["sample", "batch"], "Exit modes (sample, batch).")
_RESET = flags.DEFINE_bool("patience_reset", True, "Reset the counter on a disagreement.")


def run_config(saved: dict) -> ml_collections.ConfigDict:
  """The saved config, with sections added after it was written taken from the default."""
  config = ml_collections.ConfigDict(saved)
  base = default.get_config()
  for key in base:
    if key not in config:
      config[key] = base[key]
  return config


def sweep(workdir: str, data_dir: str | None = None) -> dict:
  """Cached exit logits of ``workdir``'s run, evaluated for every flag setting."""
  variables, metadata = checkpoint.read_variables(workdir)
  config = run_config(metadata["config"])
  if data_dir is not None:
    config.data.data_dir = data_dir
  data = load_dataset(config.data, workdir=workdir)
  model = models.create_model(config, data.info.num_classes)
  batches = eval_batches(data.test, data.info, global_batch_size=config.data.eval_batch_size)
  cached = inference.exit_logits(model, variables, batches, model_inputs)
  blocks = inference.exit_blocks(variables["params"], cached[0]["logits"].shape[0])
  x = np.asarray(model_inputs(next(iter(eval_batches(data.test, data.info, global_batch_size=1)))))
  flops = inference.exit_flops(model, variables, jax.ShapeDtypeStruct(x.shape, x.dtype))
  rows = [
    inference.summarize(cached, flops, blocks, int(p), float(c), mode=mode, reset=_RESET.value)
    for mode in _MODES.value
    for p in _PATIENCE.value
    for c in _COSINE.value
  ]
  return {
    "workdir": workdir,
    "dataset": config.data.name,
    "num_test": int(sum(np.sum(c["mask"]) for c in cached)),
    "eval_batch_size": config.data.eval_batch_size,
    "flops_per_sample": {k: v.tolist() for k, v in flops.items()},
    "fixed_exits": inference.static_exits(cached, flops, blocks),
    "adaptive": rows,
  }


def plot(result: dict, path: str) -> None:
  """Accuracy vs compute fraction: one line per (mode, patience), fixed exits as squares."""
  fig, ax = plt.subplots(figsize=(6, 4.2))
  fixed = result["fixed_exits"]
  ax.plot(
    [r["compute_fraction"] for r in fixed],
    [r["accuracy"] for r in fixed],
    "ks--",
    label="fixed exit (block k)",
  )
  for r in fixed:
    ax.annotate(f"b{r['exit_block']}", (r["compute_fraction"], r["accuracy"]), fontsize=8)
  keys = sorted({(r["exit_mode"], r["patience"]) for r in result["adaptive"]})
  for mode, patience in keys:
    rows = [r for r in result["adaptive"] if (r["exit_mode"], r["patience"]) == (mode, patience)]
    ax.plot(
      [r["compute_fraction"] for r in rows],
      [r["accuracy"] for r in rows],
      "o-" if mode == "sample" else "x:",
      label=f"adaptive, {mode}, patience {patience}",
    )
  ax.set_xlabel("fraction of full-depth inference FLOPs")
  ax.set_ylabel("test accuracy")
  ax.set_title(f"Adaptive exit on {result['dataset']} (cosine threshold swept)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.ERROR)
  result = sweep(_WORKDIR.value, _DATA_DIR.value)
  out = _OUT.value or _WORKDIR.value
  os.makedirs(out, exist_ok=True)
  for row in result["fixed_exits"] + result["adaptive"]:
    print(json.dumps(row))
  with open(os.path.join(out, "adaptive_inference.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(out, "adaptive_inference.png"))


if __name__ == "__main__":
  app.run(main)
