"""bfloat16 mixed precision against float32 on the CPU: accuracy, and the distance of a bf16
replay of the original code's training trajectory.

  python -m benchmarks.bf16_accuracy [--seeds=0,1,2] [--mnist_npz=../shared/data/mnist.npz]
      [--mnist_steps=300] [--oracle=../shared/data/trajectory_oracle_vgg.npz] [--out=FILE]

* **digits**: the default config (``launch/configs/default.py``, 20 epochs) once per seed and
  dtype; ``best_test_accuracy`` per run and the bf16 - float32 difference of the seed means in
  points (the bar: within 1 point).
* **MNIST** (with ``--mnist_npz``): the default config on MNIST prepared into a temporary
  TFDS folder, one epoch cut at ``--mnist_steps`` steps (0: the whole epoch, 937 steps) at
  ``optim.eta=0.01`` (the short-budget setting of ``default.py``), seed 0, both dtypes,
  tested on all 10,000 test images (the bar: within 0.5 point).
* **trajectory** (with ``--oracle``): ``benchmarks.trajectory_parity.replay`` of the oracle with
  ``model.dtype=bfloat16``, beside the float32 replay: how far bf16 training moves from the
  original's float32 trajectory (a documented distance, not a pass/fail).

Prints one JSON line per run and a summary line; ``--out`` also writes the summary (with every
run) as JSON.  ``steps_per_s`` is each run's own ``results.json`` figure: XLA:CPU has no fast
bf16 matmul on most x86 CPUs, so bf16 is expected to be slower than float32 here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

TRAJECTORY_FIELDS = (
  "loss_max_rel_diff", "loss_block_max_abs_diff", "params_rel_l2", "bn_stats_rel_l2",
  "eval_logits_max_abs_diff", "f64_loss_max_rel_diff", "f64_params_rel_l2",
  "f64_eval_logits_max_abs_diff", "noise_loss_max_rel", "noise_params_rel_l2",
  "noise_eval_logits_max_abs",
)
DTYPES = ("float32", "bfloat16")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.bf16_accuracy",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--seeds", default="0,1,2", help="digits seeds, ',' separated")
  parser.add_argument("--mnist_npz", default="", help="MNIST .npz (x_train, ...); '' skips it")
  parser.add_argument("--mnist_steps", type=int, default=300, help="0: one whole epoch")
  parser.add_argument("--oracle", default="", help="trajectory oracle .npz; '' skips the replay")
  parser.add_argument("--out", default="", help="also write the summary JSON here")
  return parser


def _train(config, dataset: str, dtype: str) -> dict:
  """One run of ``config`` in ``dtype`` in a temporary workdir; its figures as a JSON row."""
  from deinforeg_jax.train import train_and_evaluate  # pylint: disable=import-outside-toplevel

  config.model.dtype = dtype
  with tempfile.TemporaryDirectory() as workdir:
    results = train_and_evaluate(config, workdir)
  row = {
    "benchmark": "bf16_accuracy",
    "dataset": dataset,
    "dtype": dtype,
    "seed": config.seed,
    "best_test_accuracy": results["best_test_accuracy"],
    "per_block_test_accuracy": results["per_block_test_accuracy"],
    "steps": results["steps"],
    "steps_per_s": results["steps_per_s"],
    "precision": results["precision"],
  }
  print(json.dumps(row), flush=True)
  return row


def _compare(rows: list[dict], bar_points: float) -> dict:
  """Seed means per dtype and ``bf16 - float32`` in points, against ``bar_points``."""
  def mean(field: str, dtype: str) -> float:
    values = [r[field] for r in rows if r["dtype"] == dtype]
    return sum(values) / len(values)

  accuracy = {d: mean("best_test_accuracy", d) for d in DTYPES}
  speed = {d: mean("steps_per_s", d) for d in DTYPES}
  diff = 100.0 * (accuracy["bfloat16"] - accuracy["float32"])
  return {
    "float32_mean": accuracy["float32"],
    "bfloat16_mean": accuracy["bfloat16"],
    "diff_points": diff,
    "bar_points": bar_points,
    "within_bar": abs(diff) <= bar_points,
    "bf16_over_f32_steps_per_s": speed["bfloat16"] / speed["float32"],
    "runs": rows,
  }


def digits(seeds: list[int]) -> dict:
  from launch.configs import default  # pylint: disable=import-outside-toplevel

  rows = []
  for seed in seeds:
    for dtype in DTYPES:
      config = default.get_config()
      config.seed = seed
      rows.append(_train(config, "digits", dtype))
  return _compare(rows, 1.0)


def mnist(npz: str, max_steps: int) -> dict:
  # pylint: disable=import-outside-toplevel
  from deinforeg_jax.data.prepare import images
  from launch.configs import default

  rows = []
  with tempfile.TemporaryDirectory() as data_dir:
    images.prepare_npz("mnist_local", data_dir, npz)
    for dtype in DTYPES:
      config = default.get_config()
      config.data.name, config.data.data_dir = "mnist_local", data_dir
      config.train.num_epochs, config.train.max_steps, config.optim.eta = 1, max_steps, 0.01
      rows.append(_train(config, "mnist_local", dtype))
  return {"max_steps": max_steps, **_compare(rows, 0.5)}


def trajectory(oracle: str) -> dict:
  from benchmarks import trajectory_parity  # pylint: disable=import-outside-toplevel

  rows = {}
  for dtype in DTYPES:
    row = trajectory_parity.replay(oracle, overrides={"model.dtype": dtype})
    rows[dtype] = {k: row.get(k) for k in TRAJECTORY_FIELDS}
    print(json.dumps({"benchmark": "bf16_trajectory", "dtype": dtype, **rows[dtype]}), flush=True)
  return {"oracle": os.path.basename(oracle), **rows}


def main(argv: list[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  summary = {"benchmark": "bf16_accuracy_summary"}
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  if seeds:
    summary["digits"] = digits(seeds)
  if args.mnist_npz:
    summary["mnist"] = mnist(args.mnist_npz, args.mnist_steps)
  if args.oracle:
    summary["trajectory"] = trajectory(args.oracle)
  brief = {
    k: ({f: v for f, v in s.items() if f != "runs"} if isinstance(s, dict) else s)
    for k, s in summary.items()
  }
  print(json.dumps(brief), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(summary, f, indent=1)


if __name__ == "__main__":
  sys.exit(main())
