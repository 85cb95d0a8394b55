"""The vision family of ``benchmarks.trajectory_parity``: VGG and ResNet-18 oracles, every rule.

Builds our model for a vision oracle (``benchmarks/make_oracle.py --arch=vgg|resnet18``, or the
older VGG DeInfoReg oracle of ``../shared/tools/make_trajectory_oracle.py``, which stores its
images and has no ``meta.arch``) from ``launch/configs/reference.py:<arch>`` with only the
sizes ``meta`` names changed, and converts the oracle's PyTorch ``state_dict`` arrays into our
parameters: conv ``OIHW -> HWIO``, linear ``[out, in] -> [in, out]``, and the rows of a linear
layer that reads a flattened feature map permuted from PyTorch's ``(C, H, W)`` flatten order to
ours ``(H, W, C)`` (the same function; LARS's norms do not see the order).

``layer_map(meta, image_size)`` is ``{our path: (kind, torch prefix, (C, H, W) or None)}``
for every (arch, rule):

* encoders: VGG ``conv_layer_bn`` ``<prefix>.<j>.{0,1}`` -> ``ConvBNReLU_<i>/{Conv_0,
  BatchNorm_0}``; ResNet ``BasicBlock`` ``<prefix>.<u>.{conv1,conv2,shortcut.0}.{0,1}`` ->
  ``BasicBlock_<u>/{ConvBNReLU_0/Conv_0, ..., Conv_0, BatchNorm_0, shortcut_conv,
  shortcut_bn}``, the stem ``conv1.{0,1}`` -> ``block_00/encoder/CifarStem_0/ConvBNReLU_0``;
* DeInfoReg: ``layer.<k>``, ``loss.<k>.projector``, ``classifier.<k>.classifier``;
  BP: ``layer<k+1>`` and ``fc`` (-> ``head``); SCPL: ``layer<k+1>``, ``loss<k+1>.linear``
  (-> ``projector``), ``fc``; AL: ``layer<k+1>.{f,b,g,inv}`` (-> ``encoder``, ``bridge``,
  ``label_encoder``, ``decoder``).

Family interface (``trajectory_parity.FAMILIES``): ``prepare(oracle, meta, options)`` returns a
``trajectory_parity.Replay``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from benchmarks import oracle_data
from benchmarks.trajectory_parity import OracleArrays, OracleError, Replay, apply_overrides

ARCHS = ("vgg", "resnet18")
RESNET18_UNITS = [2, 2, 2, 2]
RESNET_STEM = 64  # the original's stem width, the unit of our config.model.width


# ------------------------------------------------------------------ the oracle's settings


def read_meta(oracle) -> dict[str, Any]:
  """The oracle's ``meta``, checked for what this replay supports (``arch``/``rule`` default to
  the older VGG DeInfoReg oracle's)."""
  if "meta" not in oracle:
    raise OracleError("the oracle has no 'meta' entry (a JSON string with its settings).")
  meta = json.loads(str(oracle["meta"]))
  meta.setdefault("arch", "vgg")
  meta.setdefault("rule", "deinforeg")
  required = ["n_classes", "batch", "steps", "lr", "wd"]
  required += ["layer_cfg"] if meta["arch"] == "vgg" else ["resnet_width", "resnet_layers"]
  required += ["mlp", "merge"] if meta["rule"] == "deinforeg" else []
  missing = [k for k in required if k not in meta]
  if missing:
    raise OracleError(f"the oracle's meta lacks {missing}.")
  if meta["arch"] == "vgg":
    layer_cfg = meta["layer_cfg"]

    def valid(v):
      return v == "M" or (isinstance(v, int) and not isinstance(v, bool) and v > 0)

    if not layer_cfg or not all(
      isinstance(block, list) and block and all(map(valid, block)) for block in layer_cfg
    ):
      raise OracleError(
        f"meta.layer_cfg={layer_cfg!r}: expected a list of blocks, each a non-empty list of "
        "conv widths and 'M' (the original VGG's _make_layer)."
      )
  elif meta["resnet_layers"] != RESNET18_UNITS:
    raise OracleError(
      f"meta.resnet_layers={meta['resnet_layers']}: our resnet18 has {RESNET18_UNITS} units."
    )
  if meta.get("merge", "merge") not in ("merge", "unmerge"):
    raise OracleError(f"meta.merge={meta['merge']!r}: only 'merge' and 'unmerge' exist.")
  if meta.get("localloss", "DeInfoReg") != "DeInfoReg" or meta.get("task", "vision") != "vision":
    raise OracleError("only the original's vision classes with the DeInfoReg local loss replay.")
  bn = meta.get("bn", {})
  if bn.get("momentum_torch", 0.1) != 0.1 or bn.get("eps", 1e-5) != 1e-5:
    raise OracleError(f"meta.bn={bn}: our BatchNorm has PyTorch's momentum 0.1 and eps 1e-5 only.")
  if bn.get("running_var", "unbiased") not in ("unbiased", "biased"):
    raise OracleError(f"meta.bn.running_var={bn['running_var']!r} is neither unbiased nor biased.")
  if meta.get("schedule", "constant") != "constant":
    raise OracleError(f"meta.schedule={meta['schedule']!r}: the oracles use a constant lr.")
  if "x" in oracle:
    x = oracle["x"]
    if x.ndim != 5 or x.shape[:2] != (meta["steps"], meta["batch"]) or x.shape[2] != 3:
      raise OracleError(
        f"x has shape {x.shape}; meta says steps={meta['steps']}, batch={meta['batch']} of "
        "[3, H, W] images."
      )
  elif "train_index" not in oracle or oracle["train_index"].shape != (meta["steps"], meta["batch"]):
    raise OracleError(
      f"the oracle needs train_index [steps={meta['steps']}, batch={meta['batch']}] (or x)."
    )
  return meta


def make_config(meta: dict[str, Any], conv_impl: str = "auto"):
  """``launch/configs/reference.py:<arch>`` with only the sizes and settings ``meta`` names."""
  from launch.configs import reference  # pylint: disable=import-outside-toplevel

  config = reference.get_config(meta["arch"])
  config.rule = meta["rule"]
  config.seed = int(meta.get("seed", 0))
  m = config.model
  if meta["arch"] == "vgg":
    m.vgg_blocks = ";".join(",".join(str(v) for v in block) for block in meta["layer_cfg"])
    m.num_blocks = len(meta["layer_cfg"])
    m.width = 1.0
  else:
    m.width = meta["resnet_width"] / RESNET_STEM
    m.num_blocks = int(meta.get("blocks", 4))
  if meta["rule"] == "deinforeg":
    m.projector = meta["mlp"]
    m.classifier_mode = meta["merge"]
  if "head_hidden" in meta:
    m.bp_head_hidden = int(meta["head_hidden"])
  if "scpl_neurons" in meta:
    m.scpl_projector = meta["scpl_neurons"]
  if "al_hidden" in meta:
    m.al_hidden = int(meta["al_hidden"])
    m.al_bridge = str(meta["al_bridge"])
  m.conv_impl = conv_impl
  m.bn_running_var = meta.get("bn", {}).get("running_var", "unbiased")
  config.data.batch_size = int(meta["batch"])
  config.optim.name = "lars"
  config.optim.schedule = "constant"
  config.optim.base_lr = float(meta["lr"])
  config.optim.weight_decay = float(meta["wd"])
  config.optim.momentum = float(meta.get("momentum", 0.9))
  config.optim.eta = float(meta.get("eta", 1e-3))
  config.parallel.num_devices = 1
  return config


# ------------------------------------------------------------------ PyTorch state_dict -> ours


def block_shapes(meta: dict[str, Any], size: int) -> list[tuple[int, int, int]]:
  """``(C, H, W)`` of every block's output, as the original's constructors give."""
  if meta["arch"] != "vgg":
    w = meta["resnet_width"]
    return [(w * 2**k, size // 2**k, size // 2**k) for k in range(4)]
  shapes, channels = [], 3
  for block in meta["layer_cfg"]:
    for v in block:
      if v == "M":
        size //= 2
      else:
        channels = v
    shapes.append((channels, size, size))
  return shapes


def _mlp_bn_map(prefix: str, widths: int, ours: str, flat_chw) -> dict[str, tuple]:
  """The original's ``Projector`` / unmerge ``Classifier`` (Flatten, then Linear, BN, ReLU per
  hidden width, last Linear) to our ``MLP`` (``Dense_i``, ``BatchNorm_i``)."""
  out = {}
  for i in range(widths):
    out[f"{ours}/Dense_{i}"] = ("linear", f"{prefix}.{1 + 3 * i}", flat_chw if i == 0 else None)
    if i < widths - 1:
      out[f"{ours}/BatchNorm_{i}"] = ("bn", f"{prefix}.{2 + 3 * i}", None)
  return out


def _dense_map(prefix: str, indices, ours: str, flat_chw) -> dict[str, tuple]:
  """Linear layers at ``indices`` of a Sequential -> ``Dense_0, Dense_1, ...``."""
  return {
    f"{ours}/Dense_{i}": ("linear", f"{prefix}.{j}", flat_chw if i == 0 else None)
    for i, j in enumerate(indices)
  }


def _conv_bn(torch_prefix: str, ours: str) -> dict[str, tuple]:
  return {f"{ours}/Conv_0": ("conv", f"{torch_prefix}.0", None),
          f"{ours}/BatchNorm_0": ("bn", f"{torch_prefix}.1", None)}


def _vgg_stage(torch_prefix: str, ours: str, block) -> dict[str, tuple]:
  out, conv = {}, 0
  for j, v in enumerate(block):
    if v != "M":
      out.update(_conv_bn(f"{torch_prefix}.{j}", f"{ours}/ConvBNReLU_{conv}"))
      conv += 1
  return out


def _resnet_stage(torch_prefix: str, ours: str, k: int, stem: str | None) -> dict[str, tuple]:
  out = {} if stem is None else _conv_bn(stem, f"{ours}/CifarStem_0/ConvBNReLU_0")
  for u in range(RESNET18_UNITS[k]):
    t, o = f"{torch_prefix}.{u}", f"{ours}/BasicBlock_{u}"
    out.update(_conv_bn(f"{t}.conv1", f"{o}/ConvBNReLU_0"))
    out[f"{o}/Conv_0"] = ("conv", f"{t}.conv2.0", None)
    out[f"{o}/BatchNorm_0"] = ("bn", f"{t}.conv2.1", None)
    if k > 0 and u == 0:
      out[f"{o}/shortcut_conv"] = ("conv", f"{t}.shortcut.0.0", None)
      out[f"{o}/shortcut_bn"] = ("bn", f"{t}.shortcut.0.1", None)
  return out


def layer_map(meta: dict[str, Any], image_size: int) -> dict[str, tuple]:
  """``{our module path: (kind, torch prefix, (C, H, W) of a flattened input or None)}``."""
  arch, rule = meta["arch"], meta["rule"]
  shapes = block_shapes(meta, image_size)
  blocks = len(meta["layer_cfg"]) if arch == "vgg" else int(meta.get("blocks", 4))
  out = {}
  for k in range(blocks):
    name = f"block_{k:02d}"
    encoder = f"{name}/encoder"
    layer = {"deinforeg": f"layer.{k}", "al": f"layer{k + 1}.f"}.get(rule, f"layer{k + 1}")
    stem = None
    if arch != "vgg" and k == 0:
      stem = "layer1.f.0" if rule == "al" else "conv1"
      layer = "layer1.f.1" if rule == "al" else layer
    if arch == "vgg":
      out.update(_vgg_stage(layer, encoder, meta["layer_cfg"][k]))
    else:
      out.update(_resnet_stage(layer, encoder, k, stem))
    if rule == "deinforeg":
      mlp = len(meta["mlp"].split("-"))
      out.update(_mlp_bn_map(f"loss.{k}.projector", mlp, f"{name}/projector", shapes[k]))
      if meta["merge"] == "merge":
        out[f"{name}/classifier/BatchNorm_0"] = ("bn", f"classifier.{k}.classifier.0", None)
        out[f"{name}/classifier/Dense_0"] = ("linear", f"classifier.{k}.classifier.2", None)
      else:
        out.update(
          _mlp_bn_map(f"classifier.{k}.classifier", mlp, f"{name}/classifier/MLP_0", shapes[k])
        )
    elif rule == "scpl":
      out.update(_dense_map(f"loss{k + 1}.linear", (1, 3), f"{name}/projector", shapes[k]))
    elif rule == "al":
      out.update(_dense_map(f"layer{k + 1}.b", (1, 3), f"{name}/bridge", shapes[k]))
      out.update(_dense_map(f"layer{k + 1}.g", (0,), f"{name}/label_encoder", None))
      out.update(_dense_map(f"layer{k + 1}.inv", (0,), f"{name}/decoder", None))
  if rule in ("bp", "scpl"):
    if arch == "vgg":
      out.update(_dense_map("fc", (1, 3), "head", shapes[blocks - 1]))
    else:
      out["head/Dense_0"] = ("linear", "fc", None)
  return out


def _linear_kernel(weight: np.ndarray, flat_chw) -> np.ndarray:
  """``[out, in]`` -> ``[in, out]``; with ``flat_chw = (C, H, W)`` the ``in`` rows go from
  PyTorch's ``c·H·W + h·W + w`` order to our NHWC flatten's ``h·W·C + w·C + c``."""
  if flat_chw is None:
    return weight.T
  c, h, w = flat_chw
  return weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, -1)


def load_state(oracle, prefix: str, meta, template, image_size: int, dtype=np.float32):
  """``(params, batch_stats)`` of our model (nested dicts shaped like ``template``) from the
  oracle's ``<prefix><torch key>`` arrays; every torch parameter and statistic must be used."""
  import flax  # pylint: disable=import-outside-toplevel

  arrays = OracleArrays(oracle, prefix, dtype)
  take = arrays.take
  params, stats = {}, {}
  for path, (kind, torch_prefix, flat) in layer_map(meta, image_size).items():
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
      arrays.used.add(f"{torch_prefix}.num_batches_tracked")
  unused = arrays.unused()
  if unused:
    raise OracleError(f"oracle arrays with no place in our model: {unused[:5]} ...")
  loaded = {"params": params, "batch_stats": stats}
  for collection in ("params", "batch_stats"):
    flat_template = flax.traverse_util.flatten_dict(template.get(collection, {}), sep="/")
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


# ------------------------------------------------------------------ inputs, outputs


def inputs(oracle, meta, data_dir: str, dtype):
  """``(x [T, B, H, W, 3], y [T, B], x_eval [E, H, W, 3])`` in our NHWC layout."""
  if "x" in oracle:  # the older oracle stores its NCHW images
    x = oracle["x"].transpose(0, 1, 3, 4, 2)
    x_eval = oracle["x_eval"].transpose(0, 2, 3, 1)
    y = oracle["y"]
  else:
    try:
      x, y, x_eval, y_eval = oracle_data.cifar_inputs(
        data_dir, oracle["train_index"], oracle["eval_index"], int(meta["image_size"])
      )
    except FileNotFoundError as error:
      raise OracleError(f"the oracle's images are read from {meta['data']}: {error}") from None
    if not (np.array_equal(y, oracle["y"]) and np.array_equal(y_eval, oracle["y_eval"])):
      raise OracleError(
        f"{data_dir}/{meta['data']} is not the file the oracle indexes: labels differ."
      )
  cast = lambda v: np.ascontiguousarray(v, dtype)
  return cast(x), np.asarray(y, np.int32), cast(x_eval)


def eval_logits(meta, outputs) -> np.ndarray:
  """Our exits that the original's eval output holds: DeInfoReg every block classifier; BP and
  SCPL the head; AL the last exit (its ``inference`` decodes from the top block's bridge)."""
  logits = outputs["logits"]
  chosen = logits if meta["rule"] == "deinforeg" else logits[-1:]
  return np.stack([np.asarray(v, np.float64) for v in chosen])


def prepare(oracle, meta, options) -> Replay:
  """The vision ``Replay`` of ``oracle`` (module docstring)."""
  from deinforeg_jax import models  # pylint: disable=import-outside-toplevel

  meta = read_meta(oracle)
  config = apply_overrides(make_config(meta, options["conv_impl"]), options["overrides"])
  model = models.create_model(config, int(meta["n_classes"]))
  x, y, x_eval = inputs(oracle, meta, options["data_dir"], options["dtype"])
  size = x.shape[-2]
  settings = {k: meta[k] for k in ("layer_cfg", "resnet_width", "mlp", "merge", "image_size",
                                   "head_hidden", "scpl_neurons", "al_hidden") if k in meta}
  return Replay(
    config=config, model=model, x=x, y=y, x_eval=x_eval, settings=settings,
    load=lambda prefix, template, dtype: load_state(oracle, prefix, meta, template, size, dtype),
    eval_logits=lambda outputs: eval_logits(meta, outputs),
  )
