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

With ``--timing_batch_sizes=1,360`` it also measures wall-clock inference per
batch (``adaptive_timing`` lines): the counted full-depth path
(``inference.make_predict``: every block and exit head, then the rule), each fixed
exit (one jitted program returning exit k's argmax; XLA drops the blocks and
heads it does not need) and the skipping adaptive path
(``inference.make_skipping_predict``, methods ``host`` and ``cond``) for
``--timing_patience`` x ``--timing_cosine`` x ``--modes`` (at batch size 1 only
``sample``: both modes are the same rule there).  Each batch size times the first
whole batches that hold ``--timing_samples`` test images.  Every path is compiled and run
once untimed; then, ``--repeats`` times and in turn, each path runs over all its
batches for at least ``--min_time`` s; a row gives the median seconds per batch.
Skipping rows also give the compute they really ran (``executed_compute_fraction``:
every real row of a batch pays for the exit where its batch stopped) beside the
rule's per-sample count (``compute_fraction``), and ``matches_counted`` (same exits
and predictions as the counted path on every real row).
"""

import itertools
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
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
_TIMING_BATCH_SIZES = flags.DEFINE_list(
  "timing_batch_sizes", [], "Also time inference at these batch sizes (1: per sample)."
)
_TIMING_SAMPLES = flags.DEFINE_integer(
  "timing_samples", 200, "Test images timed per batch size: the first whole batches holding them."
)
_TIMING_PATIENCE = flags.DEFINE_integer("timing_patience", 1, "Patience of the timed rules.")
_TIMING_COSINE = flags.DEFINE_list("timing_cosine", ["0.8"], "Cosine thresholds timed.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed rounds (the median is reported).")
_MIN_TIME = flags.DEFINE_float("min_time", 0.2, "Seconds each path runs per round, at least.")


def _fill(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> None:
  """Adds to ``config`` (recursively) every field of ``base`` it lacks."""
  for key in base:
    if key not in config:
      config[key] = base[key]
    elif isinstance(base[key], ml_collections.ConfigDict) and isinstance(
      config[key], ml_collections.ConfigDict
    ):
      _fill(config[key], base[key])


def run_config(saved: dict) -> ml_collections.ConfigDict:
  """The saved config; sections and fields added after it was written come from the default."""
  config = ml_collections.ConfigDict(saved)
  _fill(config, default.get_config())
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
  timing = [
    row
    for size in _TIMING_BATCH_SIZES.value
    for row in time_paths(model, variables, data, int(size), flops, blocks)
  ]
  return {
    "workdir": workdir,
    "dataset": config.data.name,
    "num_test": int(sum(np.sum(c["mask"]) for c in cached)),
    "eval_batch_size": config.data.eval_batch_size,
    "flops_per_sample": {k: v.tolist() for k, v in flops.items()},
    "fixed_exits": inference.static_exits(cached, flops, blocks),
    "adaptive": rows,
    "timing": timing,
  }


def _seconds_per_batch(paths: dict, batches: list, rounds: int, min_time: float) -> dict:
  """Median over ``rounds`` of the seconds per batch of each path (paths take turns each round)."""
  times = {name: [] for name in paths}
  for _ in range(rounds):
    for name, run in paths.items():
      calls, start = 0, time.perf_counter()
      while calls == 0 or time.perf_counter() - start < min_time:
        for x, mask, _ in batches:
          jax.block_until_ready(run(x, mask))
        calls += len(batches)
      times[name].append((time.perf_counter() - start) / calls)
  return {name: statistics.median(t) for name, t in times.items()}


def time_paths(model, variables, data, batch_size: int, flops: dict, blocks: list) -> list[dict]:
  """``adaptive_timing`` rows at ``batch_size`` (module docstring)."""
  variables = jax.device_put(variables)
  batches = itertools.islice(
    eval_batches(data.test, data.info, global_batch_size=batch_size),
    -(-_TIMING_SAMPLES.value // batch_size),
  )
  batches = [
    (jnp.asarray(model_inputs(b)), jnp.asarray(b["mask"], jnp.float32), np.asarray(b["label"]))
    for b in batches
  ]
  real = np.concatenate([np.asarray(m) for _, m, _ in batches]) > 0
  labels = np.concatenate([y for _, _, y in batches])[real]
  full_flops = float(flops["adaptive"][-1])
  patience = _TIMING_PATIENCE.value

  def outputs(run):
    outs = [run(x, mask) for x, mask, _ in batches]
    return outs, {k: np.concatenate([np.atleast_1d(o[k]) for o in outs]) for k in outs[0]}

  counted = inference.make_predict(model)
  paths = {("full_depth",): lambda x, m: counted(variables, x, m, patience, 0.0)["prediction"]}
  for e in range(len(blocks)):
    fixed = jax.jit(lambda v, x, e=e: jnp.argmax(model.apply(v, x, train=False)["logits"][e], -1))
    paths[("fixed_exit", e)] = lambda x, m, fixed=fixed: fixed(variables, x)
  modes = ["sample"] if batch_size == 1 else _MODES.value
  rules = [(mode, float(c)) for mode in modes for c in _TIMING_COSINE.value]
  skip_rows = {}
  for mode, tau in rules:
    counted_mode = inference.make_predict(model, mode=mode, reset=_RESET.value)
    want = outputs(lambda x, m: counted_mode(variables, x, m, patience, tau))[1]
    for method in inference.SKIP_METHODS:
      skip = inference.make_skipping_predict(model, mode=mode, reset=_RESET.value, method=method)
      run = lambda x, m, skip=skip, tau=tau: skip(variables, x, m, patience, tau)
      paths[("skip", method, mode, tau)] = run
      per_batch, got = outputs(run)
      stops = np.array([int(o["stop_exit"]) for o in per_batch])
      stop_cost = np.repeat(flops["adaptive"][stops], [len(x) for x, _, _ in batches])[real]
      skip_rows[("skip", method, mode, tau)] = {
        "method": method,
        "exit_mode": mode,
        "patience": patience,
        "cosine_threshold": tau,
        "accuracy": float(np.mean(got["prediction"][real] == labels)),
        "compute_fraction": float(np.mean(flops["adaptive"][got["exit"][real]]) / full_flops),
        "executed_compute_fraction": float(np.mean(stop_cost) / full_flops),
        "mean_stop_block": float(np.mean(np.asarray(blocks)[stops])),
        "matches_counted": bool(
          np.array_equal(got["exit"][real], want["exit"][real])
          and np.array_equal(got["prediction"][real], want["prediction"][real])
        ),
      }
  for run in paths.values():  # compile every path before timing
    jax.block_until_ready(run(*batches[0][:2]))
  seconds = _seconds_per_batch(paths, batches, _REPEATS.value, _MIN_TIME.value)
  base = seconds[("full_depth",)]
  rows = []
  for key, s_per_batch in seconds.items():
    row = {"benchmark": "adaptive_timing", "batch_size": batch_size, "path": key[0]}
    if key[0] == "fixed_exit":
      row["exit_block"] = blocks[key[1]]
      row["compute_fraction"] = float(flops["single"][key[1]] / full_flops)
    elif key[0] == "full_depth":
      row["compute_fraction"] = 1.0
    else:
      row.update(skip_rows[key])
    row.update(
      {
        "s_per_batch": s_per_batch,
        "ms_per_sample": 1e3 * s_per_batch / batch_size,
        "wall_fraction": s_per_batch / base,
        "num_batches": len(batches),
        "num_samples": int(real.sum()),
        "host_load_1m": os.getloadavg()[0],
      }
    )
    rows.append(row)
  return rows


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
  for row in result["fixed_exits"] + result["adaptive"] + result["timing"]:
    print(json.dumps(row))
  with open(os.path.join(out, "adaptive_inference.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(out, "adaptive_inference.png"))


if __name__ == "__main__":
  app.run(main)
