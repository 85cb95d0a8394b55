"""Replay the original PyTorch code's recorded training trajectory with our model, step and LARS.

  python -m benchmarks.trajectory_parity --oracle=../shared/data/trajectory_oracle_vgg.npz

An *oracle* is an ``.npz`` that the original code (reference commit fe6cc49 of
github.com/ianzih/Decoupled-Supervised-Learning-for-Information-Regularization) wrote while it
trained a small VGG DeInfoReg stack (arXiv 2506.18193) for ``T`` steps: its settings (``meta``,
a JSON string), its initial ``state_dict`` (``init/*``), the batches (``x`` ``[T, B, 3, H, W]``,
``y``), the loss it back-propagated at every step (``loss_total [T]``, per block ``loss_block
[T, K, 5]``: invariance, variance, covariance, 0.001·CE, invariance + variance + covariance), its
final ``state_dict`` (``final/*``), each block classifier's eval-mode logits on ``x_eval``
(``eval_logits [K, E, C]``), and the same run in float64 (``f64_*``), whose distance from the
float32 run is the comparison's noise floor.

This script builds **our** model for the oracle's settings through the project's own config
(``launch/configs/default.py``) and ``models.create_model``, loads ``init/*`` into it, and trains
the ``T`` batches with the train step and optimizer ``launch.train`` uses
(``train.compile_steps`` over ``steps.make_train_step``, ``optim.make_optimizer``).  The only
config settings it changes are those the oracle's ``meta`` names (architecture, projector,
classifier mode, batch, LARS hyper-parameters, constant learning rate, BatchNorm running
variance).  Layouts are converted when loading: conv ``OIHW -> HWIO``, linear ``[out, in] ->
[in, out]``, and the rows of a linear layer that reads a flattened feature map are permuted from
PyTorch's ``(C, H, W)`` flatten order to ours ``(H, W, C)`` (the same function: equal outputs,
and LARS's norms do not see the order).

Prints one JSON line: ``loss_max_rel_diff`` (``max_t |ours_t - loss_total_t| / |loss_total_t|``),
``loss_block_max_abs_diff``, ``params_rel_l2`` (``‖ours - final‖ / ‖final‖`` over every float
parameter together, BatchNorm statistics excluded), ``bn_stats_rel_l2`` (the same over the
running statistics), ``eval_logits_max_abs_diff``, the same against the float64 run (``f64_``),
the oracle's own float32-vs-float64 distances (``noise_*``), the limits
``max(10 x noise, 1e-4 relative / 1e-2 absolute for logits)`` and ``within_limits``.

``--float64`` replays in float64 (parameters, optimizer state, activations; our loss terms cast
the projector output to float32) and is meant to be read against the ``f64_`` figures: a float32
gap that vanishes there is rounding, e.g. a ReLU input within float32 rounding of 0 whose sign
differs between the two frameworks, which routes one gradient entry differently.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import numpy as np

LOSS_REL_FLOOR = 1e-4
PARAMS_REL_FLOOR = 1e-4
LOGITS_ABS_FLOOR = 1e-2
NOISE_FACTOR = 10.0


class OracleError(ValueError):
  """An oracle this script cannot build or replay; the message says which setting."""


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.trajectory_parity",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--oracle", required=True, help="the oracle .npz")
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


# ------------------------------------------------------------------ the oracle's settings


def read_meta(oracle) -> dict[str, Any]:
  """The oracle's ``meta`` JSON, checked for what this replay supports."""
  if "meta" not in oracle:
    raise OracleError("the oracle has no 'meta' entry (a JSON string with its settings).")
  meta = json.loads(str(oracle["meta"]))
  required = ("layer_cfg", "mlp", "merge", "n_classes", "batch", "steps", "lr", "wd")
  missing = [k for k in required if k not in meta]
  if missing:
    raise OracleError(f"the oracle's meta lacks {missing}.")
  layer_cfg = meta["layer_cfg"]
  def valid(v):
    return v == "M" or (isinstance(v, int) and not isinstance(v, bool) and v > 0)

  if not layer_cfg or not all(
    isinstance(block, list) and block and all(map(valid, block)) for block in layer_cfg
  ):
    raise OracleError(
      f"meta.layer_cfg={layer_cfg!r}: expected a list of blocks, each a non-empty list of conv "
      "widths and 'M' (the original VGG's _make_layer)."
    )
  if meta["merge"] not in ("merge", "unmerge"):
    raise OracleError(f"meta.merge={meta['merge']!r}: only 'merge' and 'unmerge' exist.")
  if meta.get("localloss", "DeInfoReg") != "DeInfoReg" or meta.get("task", "vision") != "vision":
    raise OracleError("only the original's vision DeInfoReg (VGG_DeInfoReg) can be replayed.")
  bn = meta.get("bn", {})
  if bn.get("momentum_torch", 0.1) != 0.1 or bn.get("eps", 1e-5) != 1e-5:
    raise OracleError(
      f"meta.bn={bn}: our BatchNorm has PyTorch's momentum 0.1 and eps 1e-5 only."
    )
  if bn.get("running_var", "unbiased") not in ("unbiased", "biased"):
    raise OracleError(f"meta.bn.running_var={bn['running_var']!r} is neither unbiased nor biased.")
  if meta.get("schedule", "constant") != "constant":
    raise OracleError(f"meta.schedule={meta['schedule']!r}: the oracles use a constant lr.")
  x = oracle["x"]
  if x.ndim != 5 or x.shape[:2] != (meta["steps"], meta["batch"]) or x.shape[2] != 3:
    raise OracleError(
      f"x has shape {x.shape}; meta says steps={meta['steps']}, batch={meta['batch']} of "
      "[3, H, W] images."
    )
  return meta


def make_config(meta: dict[str, Any], conv_impl: str = "auto"):
  """``launch/configs/default.py`` with only the settings ``meta`` names changed."""
  from launch.configs import default  # pylint: disable=import-outside-toplevel

  config = default.get_config()
  config.rule = "deinforeg"
  config.seed = int(meta.get("seed", 0))
  config.model.arch = "vgg"
  config.model.vgg_blocks = ";".join(
    ",".join(str(v) for v in block) for block in meta["layer_cfg"]
  )
  config.model.num_blocks = len(meta["layer_cfg"])
  config.model.width = 1.0
  config.model.projector = meta["mlp"]
  config.model.classifier_mode = meta["merge"]
  config.model.conv_impl = conv_impl
  config.model.bn_running_var = meta.get("bn", {}).get("running_var", "unbiased")
  config.data.batch_size = int(meta["batch"])
  config.optim.name = "lars"
  config.optim.schedule = "constant"
  config.optim.base_lr = float(meta["lr"])
  config.optim.weight_decay = float(meta["wd"])
  config.optim.momentum = float(meta.get("momentum", 0.9))
  config.optim.eta = float(meta.get("eta", 1e-3))
  config.parallel.num_devices = 1
  return config


def _non_default_conventions(config) -> dict[str, str]:
  """The layer conventions (``config.model.init/bn_running_var/conv_impl``) the replay runs
  with that differ from ``launch/configs/default.py``'s: {} when the defaults are the
  original's."""
  from launch.configs import default  # pylint: disable=import-outside-toplevel

  defaults = default.get_config().model
  return {
    f"model.{name}": config.model[name]
    for name in ("init", "bn_running_var", "conv_impl")
    if config.model[name] != defaults[name]
  }


# ------------------------------------------------------------------ PyTorch state_dict -> ours


def _block_shapes(layer_cfg, in_channels: int, size: int) -> list[tuple[int, int, int]]:
  """``(C, H, W)`` of every block's output, as the original's ``_make_layer`` / pools give."""
  shapes = []
  for block in layer_cfg:
    for v in block:
      if v == "M":
        size //= 2
      else:
        in_channels = v
    shapes.append((in_channels, size, size))
  return shapes


def _mlp_map(prefix: str, widths: int, ours: str, flat_chw) -> dict[str, tuple]:
  """The original's ``Projector`` / unmerge ``Classifier`` Sequential (Flatten, then Linear,
  BN, ReLU per hidden width, last Linear) to our ``MLP`` (``Dense_i``, ``BatchNorm_i``)."""
  out = {}
  for i in range(widths):
    linear = f"{prefix}.{1 + 3 * i}"
    out[f"{ours}/Dense_{i}"] = ("linear", linear, flat_chw if i == 0 else None)
    if i < widths - 1:
      out[f"{ours}/BatchNorm_{i}"] = ("bn", f"{prefix}.{2 + 3 * i}", None)
  return out


def layer_map(meta: dict[str, Any], image_size: int) -> dict[str, tuple]:
  """``{our module path: (kind, torch prefix, (C, H, W) of a flattened input or None)}``."""
  layer_cfg = meta["layer_cfg"]
  mlp = len(meta["mlp"].split("-"))
  shapes = _block_shapes(layer_cfg, 3, image_size)
  out = {}
  for k, block in enumerate(layer_cfg):
    name = f"block_{k:02d}"
    conv = 0
    for j, v in enumerate(block):
      if v == "M":
        continue
      out[f"{name}/encoder/ConvBNReLU_{conv}/Conv_0"] = ("conv", f"layer.{k}.{j}.0", None)
      out[f"{name}/encoder/ConvBNReLU_{conv}/BatchNorm_0"] = ("bn", f"layer.{k}.{j}.1", None)
      conv += 1
    out.update(_mlp_map(f"loss.{k}.projector", mlp, f"{name}/projector", shapes[k]))
    if meta["merge"] == "merge":
      out[f"{name}/classifier/BatchNorm_0"] = ("bn", f"classifier.{k}.classifier.0", None)
      out[f"{name}/classifier/Dense_0"] = ("linear", f"classifier.{k}.classifier.2", None)
    else:
      out.update(
        _mlp_map(f"classifier.{k}.classifier", mlp, f"{name}/classifier/MLP_0", shapes[k])
      )
  return out


def _linear_kernel(weight: np.ndarray, flat_chw) -> np.ndarray:
  """``[out, in]`` -> ``[in, out]``; with ``flat_chw = (C, H, W)`` the ``in`` rows go from
  PyTorch's ``c·H·W + h·W + w`` order to our NHWC flatten's ``h·W·C + w·C + c``."""
  if flat_chw is None:
    return weight.T
  c, h, w = flat_chw
  return weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)


def load_state(oracle, prefix: str, meta, template, dtype=np.float32) -> tuple[dict, dict]:
  """``(params, batch_stats)`` of our model (nested dicts shaped like ``template``) from the
  oracle's ``<prefix><torch key>`` arrays; every torch parameter and statistic must be used."""
  import flax  # pylint: disable=import-outside-toplevel

  keys = {k[len(prefix):] for k in oracle if k.startswith(prefix)}
  used = set()

  def take(key):
    if key not in keys:
      raise OracleError(f"the oracle has no {prefix}{key}; its layout does not fit meta.")
    used.add(key)
    return np.asarray(oracle[prefix + key], dtype)

  params, stats = {}, {}
  for path, (kind, torch_prefix, flat) in layer_map(meta, oracle["x"].shape[-1]).items():
    if kind == "conv":
      params[f"{path}/kernel"] = take(f"{torch_prefix}.weight").transpose(2, 3, 1, 0)
    elif kind == "linear":
      params[f"{path}/kernel"] = _linear_kernel(take(f"{torch_prefix}.weight"), flat)
      params[f"{path}/bias"] = take(f"{torch_prefix}.bias")
    else:
      params[f"{path}/scale"] = take(f"{torch_prefix}.weight")
      params[f"{path}/bias"] = take(f"{torch_prefix}.bias")
      stats[f"{path}/mean"] = take(f"{torch_prefix}.running_mean")
      stats[f"{path}/var"] = take(f"{torch_prefix}.running_var")
      used.add(f"{torch_prefix}.num_batches_tracked")
  unused = sorted(keys - used)
  if unused:
    raise OracleError(f"oracle arrays with no place in our model: {unused[:5]} ...")
  loaded = {"params": params, "batch_stats": stats}
  for collection, flat_template in (
    ("params", flax.traverse_util.flatten_dict(template["params"], sep="/")),
    ("batch_stats", flax.traverse_util.flatten_dict(template["batch_stats"], sep="/")),
  ):
    got = loaded[collection]
    if set(got) != set(flat_template):
      raise OracleError(
        f"our model's {collection} do not match the oracle's: ours only "
        f"{sorted(set(flat_template) - set(got))[:4]}, oracle only "
        f"{sorted(set(got) - set(flat_template))[:4]}."
      )
    for path, value in got.items():
      if tuple(flat_template[path].shape) != value.shape:
        raise OracleError(
          f"{collection}/{path}: ours {tuple(flat_template[path].shape)}, oracle {value.shape}."
        )
  return tuple(
    flax.traverse_util.unflatten_dict(loaded[c], sep="/") for c in ("params", "batch_stats")
  )


# ------------------------------------------------------------------ the replay


def _rel_l2(ours, reference) -> float:
  import jax  # pylint: disable=import-outside-toplevel

  a = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(ours)])
  b = np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(reference)])
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def replay(oracle_path: str, conv_impl: str = "auto", float64: bool = False) -> dict[str, Any]:
  """Train our model on the oracle's batches from its initial state; the figures (module doc).

  ``float64``: parameters, optimizer state and inputs in float64 (needs ``jax_enable_x64``).
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  # pylint: disable=import-outside-toplevel
  from deinforeg_jax import models, optim, parallel, rules, steps
  from deinforeg_jax import train as train_lib

  try:
    with np.load(oracle_path) as npz:
      oracle = {k: npz[k] for k in npz.files}
  except (OSError, ValueError) as error:
    raise OracleError(f"not a readable .npz: {error}") from None
  meta = read_meta(oracle)
  if float64 and jnp.zeros((), jnp.float64).dtype != jnp.float64:
    raise OracleError(
      "a float64 replay needs 64-bit JAX: jax.config.update('jax_enable_x64', True) or "
      "`with jax.enable_x64(True):`."
    )
  dtype = np.float64 if float64 else np.float32
  config = make_config(meta, conv_impl)
  num_classes = int(meta["n_classes"])
  model = models.create_model(config, num_classes)
  schedule = optim.make_schedule(config.optim, meta["steps"], meta["steps"])
  tx = optim.make_optimizer(config.optim, schedule)
  objective = rules.get_objective(config.rule)
  x = np.ascontiguousarray(oracle["x"].transpose(0, 1, 3, 4, 2), dtype)  # NCHW -> NHWC
  y = oracle["y"].astype(np.int32)
  x_eval = np.ascontiguousarray(oracle["x_eval"].transpose(0, 2, 3, 1), dtype)
  template = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((2, *x.shape[2:])), train=False)
  )
  params, batch_stats = load_state(oracle, "init/", meta, template, dtype)
  state = steps.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=jax.tree.map(jnp.asarray, params),
    batch_stats=jax.tree.map(jnp.asarray, batch_stats),
    opt_state=tx.init(jax.tree.map(jnp.asarray, params)),
  )
  mesh = parallel.make_data_mesh(1)
  train_step, _ = train_lib.compile_steps(
    model, objective, tx, num_classes, config.loss, mesh, seed=config.seed
  )
  totals, blocks = [], []
  weights = np.array(
    [config.loss.invariance_weight, config.loss.variance_weight, config.loss.covariance_weight]
  )
  for t in range(meta["steps"]):
    state, metrics, _ = train_step(state, jnp.asarray(x[t]), jnp.asarray(y[t]))
    m = jax.device_get(metrics)
    terms = np.stack([m["invariance"], m["variance"], m["covariance"]], axis=1)  # [K, 3]
    info = terms @ weights
    blocks.append(np.concatenate([terms, (config.loss.ce_weight * m["ce"])[:, None],
                                  info[:, None]], axis=1))
    totals.append(float(m["total_loss"]))
  totals, blocks = np.array(totals), np.stack(blocks)
  outputs = model.apply(
    {"params": state.params, "batch_stats": state.batch_stats}, jnp.asarray(x_eval), train=False
  )
  logits = np.stack([np.asarray(l, np.float64) for l in outputs["logits"]])
  final_params, final_stats = load_state(oracle, "final/", meta, template, np.float64)
  f64_params, f64_stats = load_state(oracle, "f64_final/", meta, template, np.float64)
  ours_params = jax.device_get(state.params)
  ours_stats = jax.device_get(state.batch_stats)

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
  # Per-block terms: the loss's relative limit times the largest recorded block figure.
  limits["loss_block"] = limits["loss"] * float(np.max(np.abs(oracle["loss_block"])))
  row = {
    "benchmark": "trajectory_parity",
    "oracle": oracle_path.rsplit("/", 1)[-1],
    "layer_cfg": meta["layer_cfg"],
    "mlp": meta["mlp"],
    "merge": meta["merge"],
    "batch": meta["batch"],
    "lr": meta["lr"],
    "seed": meta.get("seed"),
    "steps": int(meta["steps"]),
    "float64": float64,
    "non_default_conventions": _non_default_conventions(config),
    "loss_first": float(totals[0]),
    "loss_last": float(totals[-1]),
    "loss_max_rel_diff": loss_rel(oracle["loss_total"]),
    "loss_block_max_abs_diff": float(np.max(np.abs(blocks - oracle["loss_block"]))),
    "params_rel_l2": _rel_l2(ours_params, final_params),
    "bn_stats_rel_l2": _rel_l2(ours_stats, final_stats),
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
  row["within_limits"] = all(checks.values())
  row["failed"] = sorted(k for k, ok in checks.items() if not ok)
  row["per_step_loss_rel_diff"] = [
    float(v) for v in np.abs(totals - oracle["loss_total"]) / np.abs(oracle["loss_total"])
  ]
  if not all(math.isfinite(v) for v in totals):
    row["within_limits"] = False
  return row


def main(argv: list[str] | None = None) -> None:
  args = _parser().parse_args(argv)
  try:
    if args.float64:
      import jax  # pylint: disable=import-outside-toplevel

      jax.config.update("jax_enable_x64", True)
    row = replay(args.oracle, args.conv_impl, args.float64)
  except OracleError as error:
    raise SystemExit(f"benchmarks.trajectory_parity: cannot replay {args.oracle}: {error}")
  print(json.dumps(row), flush=True)


if __name__ == "__main__":
  sys.exit(main())
