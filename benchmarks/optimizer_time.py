"""LARS update time of a reference DeInfoReg model: this package's trust ratio vs optax's.

  python -m benchmarks.optimizer_time --models=vgg,resnet18 --reps=5

For each model (the DeInfoReg stacks of ``benchmarks.step_time``: the reference backbone with
``--projector`` projectors, 265-297 M parameters at full width) one jitted update of every
parameter, ``w <- w + LARS(g)``, parameters and optimizer state donated, is timed with two trust
ratios, alternating: ``ours`` (``optim.lars``, whose ``optim.scale_by_trust_ratio`` reads each
norm once) and ``optax`` (the same chain with ``optax.scale_by_trust_ratio``, whose ``safe_norm``
reduces a masked copy of every matrix again).  The gradient is a fixed function of the initial
parameters.  One JSON line per (model, variant), then ``optax_over_ours`` per model, measured in
the same run, and the largest relative difference between the two variants' final parameters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from benchmarks import step_time
from deinforeg_jax import models, optim, steps


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.optimizer_time",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--models", default="vgg,resnet18", help="comma list: vgg, resnet18")
  parser.add_argument("--projector", default="2048-2048-2048", help="DeInfoReg projector widths")
  parser.add_argument("--width", type=float, default=1.0, help="channel multiplier")
  parser.add_argument("--reps", type=int, default=5, help="timed updates per variant")
  parser.add_argument("--seed", type=int, default=0)
  return parser


def lars_with_optax_trust_ratio(optim_cfg, learning_rate) -> optax.GradientTransformation:
  """``optim.lars`` with optax's trust ratio in its place (what ``optim.lars`` was before)."""
  return optax.chain(
    optax.masked(optax.add_decayed_weights(optim_cfg.weight_decay), optim.matrix_mask),
    optax.masked(
      optax.scale_by_trust_ratio(trust_coefficient=optim_cfg.eta), optim.matrix_mask
    ),
    optax.trace(decay=optim_cfg.momentum),
    optax.scale_by_learning_rate(learning_rate),
  )


def _update_program(tx: optax.GradientTransformation):
  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return jax.jit(update, donate_argnums=(0, 1))


def measure_model(model_name: str, args: argparse.Namespace) -> list[dict]:
  """The two variants' rows and the ratio row of ``model_name``."""
  step_args = step_time._parser().parse_args(  # step_time's defaults for everything else
    [f"--seed={args.seed}", f"--width={args.width}", f"--projector={args.projector}"]
  )
  config = step_time.make_config(model_name, "deinforeg", step_args)
  model = models.create_model(config, step_time.NUM_CLASSES)
  schedule = optim.make_schedule(config.optim, total_steps=1000, steps_per_epoch=100)
  variants = {
    "ours": optim.lars(
      schedule,
      weight_decay=config.optim.weight_decay,
      momentum=config.optim.momentum,
      eta=config.optim.eta,
    ),
    "optax": lars_with_optax_trust_ratio(config.optim, schedule),
  }
  init_params = jax.jit(  # only the parameters leave the program, not an optimizer state
    lambda rng: steps.create_train_state(model, variants["ours"], rng, step_time.INPUT_SHAPE).params
  )
  params = init_params(jax.random.key(args.seed))
  grads = jax.jit(lambda p: jax.tree.map(lambda x: 1e-3 * x + 1e-4, p))(params)
  runs = {}
  for name, tx in variants.items():
    own = jax.tree.map(jnp.copy, params)
    update = _update_program(tx)
    own, opt_state = update(own, tx.init(own), grads)  # compile and warm up
    jax.block_until_ready(own)
    runs[name] = {"update": update, "params": own, "opt_state": opt_state, "times": []}
  for _ in range(args.reps):
    for run in runs.values():
      start = time.perf_counter()
      run["params"], run["opt_state"] = run["update"](run["params"], run["opt_state"], grads)
      jax.block_until_ready(run["params"])
      run["times"].append(time.perf_counter() - start)
  count = sum(x.size for x in jax.tree.leaves(params))
  rows = [
    {
      "benchmark": "optimizer_time",
      "model": model_name,
      "variant": name,
      "params": count,
      "reps": args.reps,
      "median_s": statistics.median(run["times"]),
      "min_s": min(run["times"]),
      "max_s": max(run["times"]),
    }
    for name, run in runs.items()
  ]
  differences = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)),
    runs["ours"]["params"],
    runs["optax"]["params"],
  )
  rows.append(
    {
      "benchmark": "optimizer_time_ratio",
      "model": model_name,
      "optax_over_ours": statistics.median(runs["optax"]["times"])
      / statistics.median(runs["ours"]["times"]),
      "max_rel_param_diff": max(jax.tree.leaves(differences)),
    }
  )
  return rows


def main(argv: list[str] | None = None) -> None:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.reps < 1:
    parser.error("--reps must be >= 1.")
  for model_name in args.models.split(","):
    for row in measure_model(model_name, args):
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
