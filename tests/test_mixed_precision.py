"""bfloat16 mixed precision (``config.model.dtype``) and ``config.model.matmul_precision``.

Most checks trace the real train step (``jax.make_jaxpr``: nothing is compiled): the layers
compute in bf16 while parameters, gradients, optimizer state, BatchNorm statistics and every
loss stay float32.  A few short runs cover the launcher, resuming and the parallel modes.
"""

from __future__ import annotations

import functools
import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from deinforeg_jax import checkpoint, configuration, pipeline, precision, steps, train, trained
from deinforeg_jax.config_error import ConfigError
from deinforeg_jax.modules import winograd
from deinforeg_jax.modules.layers import Conventions
from deinforeg_jax.modules.text import BiLSTM
from deinforeg_jax.run import DatasetShape, build_run
from deinforeg_jax.trained import export
from helpers import (
  DIGITS_SHAPE, NUM_CLASSES, TEXT_CLASSES, TEXT_MAX_LEN, run_launcher, saved_state, short_config,
  tiny_config, tiny_text_config,
)

F32, BF16 = jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)
CASES = [  # every rule and architecture
  ("vgg", "deinforeg"), ("vgg", "bp"), ("vgg", "scpl"), ("vgg", "al"), ("resnet18", "deinforeg"),
  ("resnet18", "bp"), ("lstm", "deinforeg"), ("lstm", "scpl"), ("transformer", "deinforeg"),
  ("transformer", "al"),
]


def _config_and_info(arch: str, rule: str, **model):
  if arch in ("lstm", "transformer"):
    config = tiny_text_config(arch, rule, **model)
    shape, classes, kind = (TEXT_MAX_LEN,), TEXT_CLASSES, "text"
  else:
    config = tiny_config(arch, rule, **model)
    shape, classes, kind = (16, 16, 3) if arch == "resnet18" else DIGITS_SHAPE, NUM_CLASSES, "image"
  config.data.batch_size = 8
  return config, DatasetShape(shape, classes, num_train=64, kind=kind)


def _inputs(info: DatasetShape) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((8, *info.input_shape), info.dtype)


def _equations(jaxpr):
  """Every equation of ``jaxpr`` and of the jaxprs nested in it (scan, pjit, custom_vjp ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)
        if isinstance(sub, jax.extend.core.Jaxpr):
          yield from _equations(sub)


def _products(jaxpr) -> list:
  """The matmuls and convolutions of ``jaxpr`` (nested ones too)."""
  names = ("dot_general", "conv_general_dilated")
  return [e for e in _equations(jaxpr) if e.primitive.name in names]


def _float_dtypes(tree) -> set:
  leaves = jax.tree.leaves(tree)
  return {jnp.dtype(x.dtype) for x in leaves if jnp.issubdtype(x.dtype, jnp.inexact)}


@pytest.mark.parametrize("arch,rule", CASES, ids=lambda v: v)
def test_bf16_layers_keep_state_gradients_and_losses_float32(arch, rule):
  config, info = _config_and_info(arch, rule, dtype="bfloat16")
  run = build_run(config, info)
  seen = {}

  def objective(outputs, labels, num_classes, loss_cfg):
    seen["outputs"] = {k: _float_dtypes(v) for k, v in outputs.items()}
    total, metrics = run.objective(outputs, labels, num_classes, loss_cfg)
    seen["losses"] = _float_dtypes((total, metrics))
    return total, metrics

  def update(grads, state, params=None):
    seen["grads"] = _float_dtypes(grads)
    return run.tx.update(grads, state, params)

  tx = optax.GradientTransformation(run.tx.init, update)
  step = steps.make_train_step(run.model, objective, tx, info.num_classes, config.loss)
  state = run.abstract_state()
  labels = jax.ShapeDtypeStruct((8,), jnp.int32)
  closed, (new_state, _, _) = jax.make_jaxpr(step, return_shape=True)(state, _inputs(info), labels)

  assert _float_dtypes(state) == _float_dtypes(new_state) == {F32}  # params, opt state, BN
  assert seen["grads"] == {F32} and seen["losses"] == {F32}
  assert seen["outputs"]["logits"] == {F32}
  for name in ("z", "contrastive", "al_bridge"):  # vision heads' outputs (text: identity heads)
    if name in seen["outputs"] and info.kind == "image":
      assert seen["outputs"][name] == {BF16}, name
  products = _products(closed.jaxpr)
  assert any(e.invars[0].aval.dtype == BF16 for e in products)  # the layers compute in bf16
  loss_products = [e for e in products if "HIGHEST" in str(e.params.get("precision"))]
  assert all(v.aval.dtype == F32 for e in loss_products for v in e.invars)
  assert bool(loss_products) == (rule in ("deinforeg", "scpl"))  # similarity, covariance, SupCon

  # Every encoder's output (the next block's input) is bf16; so is a pipeline stage's carry.
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  _, captured = jax.eval_shape(
    lambda v, x: run.model.apply(
      v, x, train=False, mutable=["intermediates"],
      capture_intermediates=lambda module, method: module.name == "encoder",
    ),
    variables, _inputs(info),
  )
  block_outputs = [
    leaf for path, leaf in jax.tree_util.tree_flatten_with_path(captured)[0]
    if info.kind == "image" or "'h'" in jax.tree_util.keystr(path)
  ]
  assert len(block_outputs) >= 2 and {jnp.dtype(h.dtype) for h in block_outputs} == {BF16}
  if rule == "deinforeg":
    stage = pipeline.stage_model(run.model, 0, 1)
    outputs = jax.eval_shape(lambda v, x: stage.apply(v, x, train=False), variables, _inputs(info))
    assert jax.tree.leaves(outputs["carry"])[0].dtype == BF16


_SHAPE_OPS = ("reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims")


def _casts_to_bf16(jaxpr, var) -> bool:
  """Whether ``var`` (or a reshaped / broadcast view of it, also inside nested jit, scan and
  remat bodies) is cast to bf16 outside a ``custom_vjp`` product."""
  for eqn in jaxpr.eqns:
    if var not in eqn.invars:
      continue
    name = eqn.primitive.name
    if name == "convert_element_type" and eqn.params["new_dtype"] == BF16:
      return True
    if name in _SHAPE_OPS and _casts_to_bf16(jaxpr, eqn.outvars[0]):
      return True
    if name.startswith("custom_vjp"):
      continue
    for value in eqn.params.values():  # a nested body reads its operands in order
      body = getattr(value, "jaxpr", value)
      if isinstance(body, jax.extend.core.Jaxpr) and len(body.invars) == len(eqn.invars):
        inner = body.invars[eqn.invars.index(var)]
        if _casts_to_bf16(body, inner):
          return True
  return False


@pytest.mark.parametrize("arch,rule", CASES, ids=lambda v: v)
def test_no_bf16_layer_casts_a_parameter_outside_its_float32_gradient_product(arch, rule):
  """Flax's bf16 layers cast the float32 kernel and bias to bf16, which rounds their gradients to
  bf16; here every parameter reaches a bf16 product only inside ``mixed``'s ``custom_vjp``, and
  every kernel does reach one (the embedding table is gathered, in float32)."""
  config, info = _config_and_info(arch, rule, dtype="bfloat16")
  run = build_run(config, info)
  state = run.abstract_state()
  closed = jax.make_jaxpr(lambda p, b, x: run.model.apply(
    {"params": p, "batch_stats": b}, x, train=True, mutable=["batch_stats"],
    rngs={"dropout": jax.random.key(0)},
  ))(state.params, state.batch_stats, _inputs(info))
  leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
  products = [e for e in _equations(closed.jaxpr) if e.primitive.name.startswith("custom_vjp")]
  kernels = [path for path, _ in leaves if str(path[-1].key).endswith("kernel")]
  assert len(products) >= len(kernels) > 0
  for (path, _), var in zip(leaves, closed.jaxpr.invars):
    assert not _casts_to_bf16(closed.jaxpr, var), jax.tree_util.keystr(path)


class _Layer(nn.Module):
  """One layer of ``kind`` (``_LAYER_KINDS``) made by ``conventions``, or with ``flax`` as
  Flax's own ``dtype=`` layers make it (the same parameters)."""

  kind: str
  conventions: Conventions
  flax: bool = False

  @nn.compact
  def __call__(self, x):
    c = self.conventions
    dtype = c.compute_dtype
    if self.kind == "einsum":  # the BiLSTM's
      w = self.param("w", nn.initializers.normal(), (x.shape[-1], 5))
      if self.flax:
        return jnp.einsum("btd,dg->btg", c.cast(x), c.cast(w))
      return c.einsum("btd,dg->btg", x, w)
    if self.flax:
      if self.kind == "dense":
        return nn.Dense(5, dtype=dtype)(x)
      if self.kind == "dense_general":
        return nn.DenseGeneral((2, 3), dtype=dtype)(x)
      conv = winograd.conv_general_dilated if c.conv_impl == "winograd" else None
      shape = dict(conv_1x1_stride_2=((1, 1), 2, "SAME"), conv_stride_2=((3, 3), 2, 1))
      size, strides, padding = shape.get(self.kind, ((3, 3), 1, 1))
      return nn.Conv(
        5, size, strides=strides, padding=padding, dtype=dtype, conv_general_dilated=conv
      )(x)
    if self.kind == "dense":
      return c.dense(x, 5)
    if self.kind == "dense_general":  # attention's q/k/v projections
      return c.dense_general(x, (2, 3), -1)
    if self.kind == "conv_1x1_stride_2":  # ResNet-18's shortcut
      return c.conv(x, 5, (1, 1), strides=2)
    if self.kind == "conv_stride_2":
      return c.conv(x, 5, (3, 3), strides=2, padding=1)
    return c.conv(x, 5, (3, 3), padding=1)  # "conv" / "winograd"


_LAYER_KINDS = {  # kind -> input shape, conv_impl
  "dense": ((6, 7, 11), "xla"), "dense_general": ((6, 7, 11), "xla"),
  "einsum": ((6, 7, 11), "xla"), "conv": ((2, 6, 6, 11), "xla"),
  "conv_stride_2": ((2, 7, 7, 11), "xla"), "conv_1x1_stride_2": ((2, 6, 6, 11), "xla"),
  "winograd": ((1, 4, 4, winograd.MIN_CHANNELS), "winograd"),
}


@pytest.mark.parametrize("kind", list(_LAYER_KINDS))
def test_bf16_layers_give_float32_weight_gradients_of_the_bf16_products(kind):
  """Under bf16, ``dW`` and ``db`` are the float32 sums of the exact products of the bf16 input
  and output gradient (a float64 reference, to float32 rounding), not those sums rounded to
  bf16 as Flax's ``dtype=bfloat16`` matmuls give them (checked to miss the reference, so that
  this test can fail; XLA:CPU happens not to round a bf16 convolution's, so the test above
  guards those); ``dx`` is Flax's.  Every product reads bf16 operands (``dW``: bf16 x bf16 with
  float32 results), except Winograd's ``dW``, computed from widened operands."""
  shape, conv_impl = _LAYER_KINDS[kind]
  rng = np.random.default_rng(0)
  conventions = Conventions(dtype="bfloat16", conv_impl=conv_impl)
  x = jnp.asarray(rng.normal(size=shape), BF16)
  params = _Layer(kind, conventions).init(jax.random.key(0), x)["params"]
  out_shape = jax.eval_shape(_Layer(kind, conventions).apply, {"params": params}, x).shape
  cotangent = jnp.asarray(rng.normal(size=out_shape), BF16)

  def gradients(layer, params, x):
    loss = lambda p, x: jnp.sum(layer.apply({"params": p}, x) * cotangent.astype(x.dtype))
    return jax.grad(loss, argnums=(0, 1))(params, x)

  d_params, d_x = gradients(_Layer(kind, conventions), params, x)
  traced = jax.make_jaxpr(functools.partial(gradients, _Layer(kind, conventions)))(params, x)
  operands = {v.aval.dtype for e in _products(traced.jaxpr) for v in e.invars}
  assert operands == ({BF16, F32} if kind == "winograd" else {BF16})  # Winograd's dW: widened
  flax_params, flax_x = gradients(_Layer(kind, conventions, flax=True), params, x)
  assert _float_dtypes(d_params) == {F32} and d_x.dtype == BF16
  np.testing.assert_allclose(np.asarray(d_x, np.float32), np.asarray(flax_x, np.float32))
  with jax.enable_x64(True):  # the same products and sums in float64
    exact = lambda a: jnp.asarray(jnp.asarray(a, BF16), jnp.float64)
    expected, _ = gradients(_Layer(kind, Conventions()), jax.tree.map(exact, params), exact(x))
  for got, flax, want in zip(*map(jax.tree.leaves, (d_params, flax_params, expected))):
    tolerance = dict(rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, **tolerance)
    if kind in ("dense", "dense_general", "einsum"):
      with pytest.raises(AssertionError):
        np.testing.assert_allclose(flax, want, **tolerance)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bilstm_gates_take_the_compute_dtype_and_its_gradient_keeps_only_the_float32_carry(dtype):
  """The BiLSTM's gates and their sigmoid/tanh compute in the compute dtype while the carry
  (c, h) and the recurrent kernel's gradient, both sums over up to 350 steps, stay float32; its
  scan step is rematerialised, so the forward scan of the gradient stacks only the output
  sequence and the float32 carry."""
  compute = BF16 if dtype == "bfloat16" else F32
  lstm = BiLSTM(hidden=4, conventions=Conventions(dtype=dtype))
  batch, length, hidden = 3, 5, 4
  inputs = jax.random.normal(jax.random.key(1), (batch, length, 6))
  mask = jnp.arange(length)[None, :] < jnp.array([[5], [3], [1]])
  x = {"h": inputs.astype(compute), "mask": mask}
  params = lstm.init(jax.random.key(0), x, True)

  def loss(p):
    out = lstm.apply(p, x, True)
    return jnp.sum(out["h"].astype(F32)) + jnp.sum(out["pooled"])

  jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
  forward, backward = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
  carry, stacked = forward.outvars[:2], forward.outvars[2:]
  assert [(v.aval.dtype, v.aval.shape) for v in carry] == [(F32, (2, batch, hidden))] * 2
  step = (2, batch, hidden)
  assert [(v.aval.dtype, v.aval.shape) for v in stacked] == (
    [(compute, (length, *step))] + [(F32, (length, *step))] * 2
  )
  body = forward.params["jaxpr"].jaxpr
  gates = [e for e in _equations(body) if e.primitive.name in ("logistic", "tanh")]
  assert len(gates) == 5 and {e.outvars[0].aval.dtype for e in gates} == {compute}
  kernel_grads = [v for v in backward.outvars if v.aval.shape == (2, hidden, 4 * hidden)]
  assert [v.aval.dtype for v in kernel_grads] == [F32]

  # bf16 gates stay near float32's: the float32 cell state accumulates no bf16 rounding.
  reference = BiLSTM(hidden=4).apply(params, {"h": inputs, "mask": mask}, True)["pooled"]
  pooled = lstm.apply(params, x, True)["pooled"]
  assert pooled.dtype == F32
  np.testing.assert_allclose(pooled, reference, atol=0.03 if dtype == "bfloat16" else 0)


def test_matmul_precision_reaches_every_layer_and_is_described():
  config, info = _config_and_info("vgg", "deinforeg", matmul_precision="highest")
  run = build_run(config, info)
  state = run.abstract_state()
  closed = jax.make_jaxpr(lambda s, x: run.model.apply(
    {"params": s.params, "batch_stats": s.batch_stats}, x, train=False
  ))(state, _inputs(info))
  products = _products(closed.jaxpr)
  assert len(products) >= 8  # 4 conv stages + projectors + classifiers
  assert all("HIGHEST" in str(e.params["precision"]) for e in products)

  cpu = precision.describe("float32", "default")
  assert cpu == {
    "dtype": "float32", "matmul_precision": "default", "platform": "cpu",
    "device_kind": jax.devices()[0].device_kind, "layer_matmuls": "float32",
  }
  tpu = types.SimpleNamespace(platform="tpu", device_kind="TPU v5 lite")
  assert precision.describe("float32", "high", tpu)["layer_matmuls"].startswith("3 bfloat16")
  gpu = lambda kind, capability: types.SimpleNamespace(
    platform="gpu", device_kind=kind, compute_capability=capability
  )
  old_gpu, h100 = gpu("Tesla V100", "7.0"), gpu("NVIDIA H100", "9.0")
  assert precision.describe("float32", "default", old_gpu)["layer_matmuls"] == "float32"
  assert precision.describe("float32", "default", h100)["layer_matmuls"].startswith("TF32")
  bf16 = precision.describe("bfloat16", "highest", h100)
  assert bf16["layer_matmuls"] == precision.BFLOAT16_MATMULS


def test_float16_is_refused_in_one_line():
  config = tiny_config(dtype="float16")
  with pytest.raises(ConfigError) as error:
    configuration.validate_config(config)
  message = str(error.value)
  assert message.startswith("config.model.dtype='float16' must be 'float32' or 'bfloat16'")
  assert "loss scaling" in message and "\n" not in message


def test_a_float32_checkpoint_resumes_under_bf16_only_when_allowed_and_pipelined(tmp_path):
  """A float32 run's checkpoint; bf16 refused on resume; allowed, it continues as a pipeline
  (the next stage reads the previous one's bf16 output) and saves float32 state."""
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(short_config(2), workdir)
  refused = r"config\.model\.dtype: saved 'float32', now 'bfloat16'"
  with pytest.raises(checkpoint.CheckpointMismatchError, match=refused):
    train.train_and_evaluate(short_config(3, model__dtype="bfloat16"), workdir)
  allowed = short_config(
    3, model__dtype="bfloat16", checkpoint__allow_changed="model.dtype",
    parallel__mode="pipeline", parallel__num_stages=2,
  )
  results = train.train_and_evaluate(allowed, workdir)
  assert results["steps"] == 3 and results["precision"]["dtype"] == "bfloat16"
  assert len(results["pipeline"]["stage_blocks"]) == 2
  state, step = saved_state(workdir)
  assert step == 3 and _float_dtypes(state) == {F32}


def test_default_digits_job_trains_in_bf16_through_the_launcher_and_loads(tmp_path):
  """The default job, narrowed, in bf16 with the state sharded over 2 devices; then loaded,
  asked for adaptive predictions and exported: float32 logits throughout."""
  workdir = str(tmp_path / "run")
  done = run_launcher(
    "launch.train", f"--workdir={workdir}", "--config.model.width=0.25",
    "--config.model.projector=32-32", "--config.model.dtype=bfloat16",
    "--config.model.matmul_precision=high", "--config.train.max_steps=2",
    "--config.parallel.shard_state=True", num_devices=2,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["precision"] == {
    "dtype": "bfloat16", "matmul_precision": "high", "platform": "cpu",
    "device_kind": jax.devices()[0].device_kind, "layer_matmuls": precision.BFLOAT16_MATMULS,
  }
  assert len(results["adaptive_inference"]["exit_fractions"]) == 4

  model = trained.load(workdir)
  assert model.config.model.dtype == "bfloat16" and _float_dtypes(model.variables) == {F32}
  images = np.random.default_rng(0).uniform(0, 1, (5, *DIGITS_SHAPE)).astype(np.float32)
  logits = model.logits(images)
  assert logits.dtype == np.float32 and logits.shape == (4, 5, NUM_CLASSES)
  assert model.predict(images, exit="adaptive").probabilities.dtype == np.float32
  out, _ = export.export(model, str(tmp_path / "model.jaxexport"), platforms=("cpu",))
  with open(out, "rb") as f:
    assert jax.export.deserialize(f.read()).out_avals[0].dtype == F32


@pytest.mark.parametrize("arch", ["vgg", "resnet18", "lstm", "transformer"])
def test_bf16_train_step_compiles_and_runs_on_this_platform(arch):
  """Traced is not enough: XLA:CPU refuses some bf16 dots (a bf16 x bf16 -> f32 batched dot in
  the BiLSTM's gradient did), so one real step of each architecture runs, BP's end-to-end
  gradient included, and its loss and updated parameters are finite float32."""
  config, info = _config_and_info(arch, "bp", dtype="bfloat16")
  run = build_run(config, info)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  programs = run.jit_steps(run.plan.final, mesh)
  state = run.create_state(jax.random.key(0))
  rng = np.random.default_rng(0)
  if info.kind == "text":
    inputs = rng.integers(2, 40, (8, *info.input_shape)).astype(np.int32)
  else:
    inputs = rng.normal(size=(8, *info.input_shape)).astype(np.float32)
  labels = (np.arange(8) % info.num_classes).astype(np.int32)
  state, metrics, _ = programs.train(state, inputs, labels)
  assert np.isfinite(float(metrics["total_loss"]))
  assert _float_dtypes(state.params) == {F32}
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))
