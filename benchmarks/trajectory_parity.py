"""Replay the original PyTorch code's recorded training trajectory with our config, model, step
and optimizer, for every (architecture, rule) class.

  python -m benchmarks.trajectory_parity --oracle=tests/oracles/resnet18_scpl.npz [--float64]

An *oracle* is an ``.npz`` that the original code (reference commit fe6cc49 of
github.com/ianzih/Decoupled-Supervised-Learning-for-Information-Regularization) wrote while it
trained one of its classes for ``T`` steps (``benchmarks/make_oracle.py``; its docstring lists
the arrays): settings ``meta`` (``arch``, ``rule``, sizes), initial ``state_dict``
(``init/*``), inputs, every step's back-propagated loss (``loss_total [T]``) and per-row loss
terms (``loss_block [T, R, C]``, columns ``meta.loss_block_columns``), final ``state_dict``
(``final/*``), eval-mode logits per exit (``eval_logits [X, E, C]``) and the same run in
float64 (``f64_*``), whose distance from the float32 run is the comparison's noise floor.

This script builds **our** model for the oracle through the project's own config (the
``launch/configs/reference.py`` preset of the oracle's arch, only the sizes ``meta`` names
changed) and ``models.create_model``, loads ``init/*`` into it, and trains the ``T`` batches with
the train step and optimizer ``launch.train`` uses (``run.Run.jit_steps``
over ``steps.make_train_step``, ``optim.make_optimizer``).

Family contract: ``FAMILIES`` maps ``meta.arch`` (default ``vgg``: the older VGG DeInfoReg
oracle) to a module (``benchmarks.replay_vision`` for vgg / resnet18, ``benchmarks.replay_text``
for lstm / transformer) with ``prepare(oracle, meta, options) -> Replay``.  ``options``:
``conv_impl``, ``dtype``, ``data_dir`` and ``overrides`` (the family applies them with
``apply_overrides`` to its config before it builds the model).  ``Replay``: our config and
model, the inputs in our layout (``x`` indexable by step, ``y [T, B]``, ``x_eval``),
``load(prefix, template, dtype) -> (params, batch_stats)`` from the oracle's ``<prefix>``
state_dict, ``eval_logits(outputs) -> [X, E, C]`` (our exits that match the oracle's), and
optionally ``loss_block(metrics, config, columns) -> [R, C]`` (default: ``rule_loss_block``),
``settings`` (sizes for the printed row), ``frozen`` (block names the train step keeps, as a
grown stack's old blocks) and ``total_loss(metrics, config)`` (the oracle's back-propagated
scalar when it is not our ``total_loss``, e.g. only the new block's of a side oracle).  With
``frozen``, the parameter figures cover the other blocks, and ``frozen_params_max_abs_change``
(ours, the original's float32 and float64 runs, from ``init/``) must be 0 (check ``frozen``).

Prints one JSON line: ``loss_max_rel_diff`` (``max_t |ours_t - loss_total_t| / |loss_total_t|``),
``loss_block_max_abs_diff``, ``params_rel_l2`` (``‖ours - final‖ / ‖final‖`` over every float
parameter together, BatchNorm statistics excluded), ``params_worst`` (the three parameters
furthest from the original's, relative L2: where a departure sits), ``bn_stats_rel_l2`` (the
same over the running statistics; null without BatchNorm), ``eval_logits_max_abs_diff``, the
same against the float64 run (``f64_``), the oracle's own float32-vs-float64 distances
(``noise_*``), the limits ``max(10 x noise, 1e-4 relative / 1e-2 absolute for logits)`` and
``within_limits``.

``--float64`` replays in float64 (parameters, optimizer state, activations; our loss terms cast
to float32) and is meant to be read against the ``f64_`` figures: a float32 gap that vanishes
there is rounding, e.g. a ReLU input within float32 rounding of 0 whose sign differs between
the two frameworks, which routes one gradient entry differently.

An oracle with ``adaptive_exit`` (``make_oracle.py --adaptive``) also gets the adaptive figures
of ``benchmarks.replay_adaptive`` (the original's exit per eval batch and ours, mismatches of
exits and predictions, both accuracies); they must be equal (check ``adaptive``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import sys
from typing import Any, Callable

import numpy as np

LOSS_REL_FLOOR = 1e-4
PARAMS_REL_FLOOR = 1e-4
LOGITS_ABS_FLOOR = 1e-2
NOISE_FACTOR = 10.0
FAMILIES = {"vgg": "benchmarks.replay_vision", "resnet18": "benchmarks.replay_vision",
            "lstm": "benchmarks.replay_text", "transformer": "benchmarks.replay_text"}


class OracleError(ValueError):
  """An oracle this script cannot build or replay; the message says which setting."""


class OracleArrays:
  """The oracle's ``<prefix><torch key>`` arrays, each taken at most once by a family's loader;
  ``unused()`` lists those no parameter or statistic of ours took (each must have a place)."""

  def __init__(self, oracle, prefix: str, dtype=np.float32):
    self.oracle, self.prefix, self.dtype = oracle, prefix, dtype
    self.keys = {k[len(prefix):] for k in oracle if k.startswith(prefix)}
    self.used: set[str] = set()

  def take(self, key: str) -> np.ndarray:
    if key not in self.keys:
      raise OracleError(f"the oracle has no {self.prefix}{key}; its layout does not fit meta.")
    self.used.add(key)
    return np.asarray(self.oracle[self.prefix + key], self.dtype)

  def unused(self) -> list[str]:
    return sorted(self.keys - self.used)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.trajectory_parity",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--oracle", required=True, help="the oracle .npz")
  parser.add_argument("--data_dir", default=None, help="the indexed data (../shared/data)")
  parser.add_argument(
    "--conv_impl",
    default="auto",
    choices=("auto", "xla", "winograd"),
    help="config.model.conv_impl (auto: the project's default)",
  )
  parser.add_argument(
    "--float64",
    action="store_true",
    help="replay in float64 (jax_enable_x64; the loss terms themselves stay float32): a check "
    "that a float32 difference is rounding (a ReLU input within rounding of 0 whose sign differs)",
  )
  return parser


# ------------------------------------------------------------------ the replay


def _rel_l2(ours, reference) -> float | None:
  """``‖ours - reference‖ / ‖reference‖`` over all leaves together; None for an empty tree."""
  import jax  # pylint: disable=import-outside-toplevel

  leaves = jax.tree.leaves(reference)
  if not leaves:
    return None
  a = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(ours)])
  b = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in leaves])
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@dataclasses.dataclass
class Replay:
  """What a family's ``prepare`` gives the shared replay (module docstring)."""

  config: Any
  model: Any
  x: Any
  y: np.ndarray
  x_eval: Any
  load: Callable[..., tuple[dict, dict]]
  eval_logits: Callable[[Any], np.ndarray]
  loss_block: Callable[..., np.ndarray] | None = None
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)
  frozen: frozenset[str] = frozenset()  # blocks the train step keeps (a grown stack's old ones)
  total_loss: Callable[..., float] | None = None  # (metrics, config) -> the oracle's loss_total


def rule_loss_block(metrics, config, columns) -> np.ndarray:
  """Our ``[R, C]`` loss terms of one step under the oracle's column names: DeInfoReg a row per
  block (``invariance``, ``variance``, ``covariance``, ``local_total`` = their weighted sum,
  ``ce_times_0.001`` = ``ce_weight`` x CE); BP ``ce``; SCPL ``loss`` (each block's contrastive
  loss, then the head's CE); AL ``bridge``, ``reconstruction`` per block."""
  rule, w = config.rule, config.loss
  if rule == "deinforeg":
    terms = {name: np.asarray(metrics[name]) for name in ("invariance", "variance", "covariance")}
    terms["local_total"] = (w.invariance_weight * terms["invariance"]
                            + w.variance_weight * terms["variance"]
                            + w.covariance_weight * terms["covariance"])
    terms["ce_times_0.001"] = w.ce_weight * np.asarray(metrics["ce"])
  elif rule == "bp":
    terms = {"ce": np.asarray(metrics["ce"])}
  elif rule == "scpl":
    terms = {"loss": np.concatenate([metrics["contrastive"], metrics["ce"]])}
  else:
    terms = {name: np.asarray(metrics[name]) for name in ("bridge", "reconstruction")}
  missing = [c for c in columns if c not in terms]
  if missing:
    raise OracleError(f"meta.loss_block_columns {missing} have no counterpart for {rule}.")
  return np.stack([terms[c] for c in columns], axis=1)


def _worst_leaves(ours, reference, count: int = 3) -> dict[str, float]:
  """The ``count`` parameters (``a/b/kernel``) furthest from ``reference`` (relative L2)."""
  import flax  # pylint: disable=import-outside-toplevel

  a = flax.traverse_util.flatten_dict(ours, sep="/")
  b = flax.traverse_util.flatten_dict(reference, sep="/")
  rel = {
    k: float(np.linalg.norm(np.asarray(a[k], np.float64) - b[k]) / (np.linalg.norm(b[k]) or 1.0))
    for k in b
  }
  return dict(sorted(rel.items(), key=lambda kv: -kv[1])[:count])


def family(arch: str):
  """The replay module of ``arch`` (``FAMILIES``)."""
  if arch not in FAMILIES:
    raise OracleError(f"meta.arch={arch!r}: replays exist for {sorted(FAMILIES)}.")
  return importlib.import_module(FAMILIES[arch])


def apply_overrides(config, overrides: dict[str, Any]):
  """``config`` with ``{"model.al_activation": "tanh", ...}`` set (in place; returned)."""
  for field, value in overrides.items():
    *path, name = field.split(".")
    section = config
    for part in path:
      section = section[part]
    if name not in section:
      raise OracleError(f"override {field}: the config has no such field.")
    section[name] = value
  return config


def replay(
  oracle_path: str,
  conv_impl: str = "auto",
  float64: bool = False,
  data_dir: str | None = None,
  overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Train our model on the oracle's batches from its initial state; the figures (module doc).

  ``float64``: parameters, optimizer state and inputs in float64 (needs ``jax_enable_x64``).
  ``data_dir``: where the oracle's indexed data lie (default ``../shared/data``).
  ``overrides``: config fields set after the family's settings (``apply_overrides``), e.g. our
  default in place of the reference preset's value, to show what a departure changes.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  # pylint: disable=import-outside-toplevel
  from benchmarks import oracle_data
  from deinforeg_jax import growth, optim, parallel, rules, steps
  from deinforeg_jax.run import DatasetShape, Run

  try:
    with np.load(oracle_path) as npz:
      oracle = {k: npz[k] for k in npz.files}
  except (OSError, ValueError) as error:
    raise OracleError(f"not a readable .npz: {error}") from None
  if "meta" not in oracle:
    raise OracleError("the oracle has no 'meta' entry (a JSON string with its settings).")
  meta = json.loads(str(oracle["meta"]))
  meta.setdefault("arch", "vgg")
  meta.setdefault("rule", "deinforeg")
  if float64 and jnp.zeros((), jnp.float64).dtype != jnp.float64:
    raise OracleError(
      "a float64 replay needs 64-bit JAX: jax.config.update('jax_enable_x64', True) or "
      "`with jax.enable_x64(True):`."
    )
  dtype = np.float64 if float64 else np.float32
  options = {"conv_impl": conv_impl, "dtype": dtype,
             "data_dir": data_dir or oracle_data.default_data_dir(), "overrides": overrides or {}}
  r = family(meta["arch"]).prepare(oracle, meta, options)
  config, model = r.config, r.model
  num_classes = int(meta["n_classes"])
  steps_total = int(meta["steps"])
  schedule = optim.make_schedule(config.optim, steps_total, steps_total)
  tx = optim.make_optimizer(config.optim, schedule)
  objective = rules.get_objective(config.rule)
  template = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.asarray(r.x[0][:2]), train=False)
  )
  params, batch_stats = r.load("init/", template, dtype)
  state = steps.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=jax.tree.map(jnp.asarray, params),
    batch_stats=jax.tree.map(jnp.asarray, batch_stats),
    opt_state=tx.init(jax.tree.map(jnp.asarray, params)),
  )
  phase = growth.Phase(0, model, frozenset(r.frozen))
  run = Run(
    config=config,
    info=DatasetShape(
      tuple(r.x[0].shape[1:]), num_classes, steps_total * len(r.x[0]), config.data.kind
    ),
    model=model,
    plan=growth.GrowthPlan((phase,)),
    objective=objective,
    schedule=schedule,
    tx=tx,
    steps_per_epoch=steps_total,  # the replay's schedule: one epoch of the oracle's steps
  )
  train_step = run.jit_steps(phase, parallel.make_data_mesh(1)).train
  loss_block = r.loss_block or rule_loss_block
  columns = meta.get("loss_block_columns")
  totals, blocks = [], []
  for t in range(steps_total):
    state, metrics, _ = train_step(state, jnp.asarray(r.x[t]), jnp.asarray(r.y[t]))
    m = jax.device_get(metrics)
    blocks.append(loss_block(m, config, columns))
    totals.append(float(r.total_loss(m, config) if r.total_loss else m["total_loss"]))
  totals, blocks = np.array(totals), np.stack(blocks)
  outputs = model.apply(
    {"params": state.params, "batch_stats": state.batch_stats}, jnp.asarray(r.x_eval), train=False
  )
  logits = r.eval_logits(outputs)
  final_params, final_stats = r.load("final/", template, np.float64)
  f64_params, f64_stats = r.load("f64_final/", template, np.float64)
  ours_params = jax.device_get(state.params)
  ours_stats = jax.device_get(state.batch_stats)
  frozen_moved = None
  if r.frozen:  # frozen blocks must not move (ours and the original's); the rest is compared
    init_params, _ = r.load("init/", template, np.float64)
    frozen_moved = max(
      float(np.max(np.abs(np.asarray(a, np.float64) - b)))
      for tree in (ours_params, final_params, f64_params)
      for a, b in zip(jax.tree.leaves({k: tree[k] for k in r.frozen}),
                      jax.tree.leaves({k: init_params[k] for k in r.frozen}))
    )
    trained = lambda tree: {k: v for k, v in tree.items() if k not in r.frozen}
    ours_params, final_params, f64_params = map(trained, (ours_params, final_params, f64_params))

  def loss_rel(reference):
    return float(np.max(np.abs(totals - reference) / np.abs(reference)))

  noise = {
    "loss": float(np.max(np.abs(oracle["loss_total"] - oracle["f64_loss_total"])
                         / np.abs(oracle["f64_loss_total"]))),
    "params": _rel_l2(final_params, f64_params),
    "logits": float(np.max(np.abs(oracle["eval_logits"] - oracle["f64_eval_logits"]))),
  }
  limits = {
    "loss": max(NOISE_FACTOR * noise["loss"], LOSS_REL_FLOOR),
    "params": max(NOISE_FACTOR * noise["params"], PARAMS_REL_FLOOR),
    "logits": max(NOISE_FACTOR * noise["logits"], LOGITS_ABS_FLOOR),
  }
  # Per-row terms: the loss's relative limit times the largest recorded term.
  limits["loss_block"] = limits["loss"] * float(np.max(np.abs(oracle["loss_block"])))
  row = {
    "benchmark": "trajectory_parity",
    "oracle": oracle_path.rsplit("/", 1)[-1],
    "arch": meta["arch"],
    "rule": meta["rule"],
    **r.settings,
    "batch": meta["batch"],
    "lr": meta["lr"],
    "seed": meta.get("seed"),
    "offset": meta.get("offset"),
    "steps": steps_total,
    "float64": float64,
    "non_default_conventions": _non_default_conventions(config),
    "overrides": overrides or {},
    "loss_first": float(totals[0]),
    "loss_last": float(totals[-1]),
    "loss_max_rel_diff": loss_rel(oracle["loss_total"]),
    "loss_block_max_abs_diff": float(np.max(np.abs(blocks - oracle["loss_block"]))),
    "params_rel_l2": _rel_l2(ours_params, final_params),
    "bn_stats_rel_l2": _rel_l2(ours_stats, final_stats),
    "params_worst": _worst_leaves(ours_params, final_params),
    "frozen_blocks": sorted(r.frozen),
    "frozen_params_max_abs_change": frozen_moved,
    "eval_logits_max_abs_diff": float(np.max(np.abs(logits - oracle["eval_logits"]))),
    "f64_loss_max_rel_diff": loss_rel(oracle["f64_loss_total"]),
    "f64_params_rel_l2": _rel_l2(ours_params, f64_params),
    "f64_bn_stats_rel_l2": _rel_l2(ours_stats, f64_stats),
    "f64_eval_logits_max_abs_diff": float(np.max(np.abs(logits - oracle["f64_eval_logits"]))),
    "noise_loss_max_rel": noise["loss"],
    "noise_params_rel_l2": noise["params"],
    "noise_eval_logits_max_abs": noise["logits"],
    "limit_loss_rel": limits["loss"],
    "limit_loss_block_abs": limits["loss_block"],
    "limit_params_rel_l2": limits["params"],
    "limit_eval_logits_abs": limits["logits"],
  }
  checks = {
    "loss": max(row["loss_max_rel_diff"], row["f64_loss_max_rel_diff"]) <= limits["loss"],
    "loss_block": row["loss_block_max_abs_diff"] <= limits["loss_block"],
    "params": max(row["params_rel_l2"], row["f64_params_rel_l2"]) <= limits["params"],
    "logits": max(row["eval_logits_max_abs_diff"], row["f64_eval_logits_max_abs_diff"])
    <= limits["logits"],
  }
  if r.frozen:
    checks["frozen"] = frozen_moved == 0.0
  if "adaptive_exit" in oracle:
    from benchmarks import replay_adaptive  # pylint: disable=import-outside-toplevel

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    row.update(replay_adaptive.compare(oracle, meta, config, model, variables, r.x_eval))
    checks["adaptive"] = row["adaptive_match"]
  row["within_limits"] = all(checks.values()) and all(math.isfinite(v) for v in totals)
  row["failed"] = sorted(k for k, ok in checks.items() if not ok)
  row["per_step_loss_rel_diff"] = [
    float(v) for v in np.abs(totals - oracle["loss_total"]) / np.abs(oracle["loss_total"])
  ]
  return row


def _non_default_conventions(config) -> dict[str, Any]:
  """The behaviour settings (``reference.REFERENCE_BEHAVIOUR`` fields and the layer
  conventions) the replay runs with that differ from ``launch/configs/default.py``'s: the
  departures of our defaults from the original that the replay depends on."""
  # pylint: disable=import-outside-toplevel
  from launch.configs import default, reference

  defaults = default.get_config()
  fields = {f"model.{name}" for name in ("init", "bn_running_var", "conv_impl")}
  for group in reference.REFERENCE_BEHAVIOUR.values():
    fields.update(group)

  def get(c, field):
    for part in field.split("."):
      c = c[part]
    return c

  return {f: get(config, f) for f in sorted(fields) if get(config, f) != get(defaults, f)}


def main(argv: list[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  try:
    if args.float64:
      import jax  # pylint: disable=import-outside-toplevel

      jax.config.update("jax_enable_x64", True)
    row = replay(args.oracle, args.conv_impl, args.float64, args.data_dir)
  except OracleError as error:
    raise SystemExit(f"benchmarks.trajectory_parity: cannot replay {args.oracle}: {error}")
  print(json.dumps(row), flush=True)


if __name__ == "__main__":
  sys.exit(main())
