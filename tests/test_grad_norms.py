"""Tests of per-layer gradient-norm logging (``train.log_grad_norms``) and plain VGG layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from helpers import DIGITS_SHAPE, NUM_CLASSES, init_variables, random_batch, tiny_config

from deinforeg_jax import grad_norms, models, rules, steps
from launch.configs import deep_plain


def _plain(rule: str, vgg_blocks: str):
  num_blocks = vgg_blocks.count(";") + 1
  config = tiny_config(
    "vgg", rule, vgg_blocks=vgg_blocks, batch_norm=False, width=1.0, num_blocks=num_blocks
  )
  model = models.create_model(config, NUM_CLASSES)
  return config, model, init_variables(model, DIGITS_SHAPE)


def test_layer_paths_are_encoder_kernels_in_depth_order():
  """Twelve layers in block 0 (so ``ConvReLU_10`` must follow ``ConvReLU_9``), two in block 1;
  projector and classifier kernels are not layers."""
  _, _, variables = _plain("deinforeg", ",".join(["4"] * 12) + ",M;4,4")
  expected = [f"block_00/encoder/ConvReLU_{i}/Conv_0/kernel" for i in range(12)]
  expected += [f"block_01/encoder/ConvReLU_{i}/Conv_0/kernel" for i in range(2)]
  assert grad_norms.layer_paths(variables["params"]) == expected


def test_layer_grad_norms_are_frobenius_norms_in_layer_order():
  _, _, variables = _plain("bp", "4,4,M;4")
  rng = np.random.default_rng(0)
  grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), variables["params"])
  flat = {
    jax.tree_util.keystr(p, simple=True, separator="/"): g
    for p, g in jax.tree_util.tree_leaves_with_path(grads)
  }
  expected = [np.linalg.norm(flat[path]) for path in grad_norms.layer_paths(grads)]
  np.testing.assert_allclose(grad_norms.layer_grad_norms(grads), expected, rtol=1e-5)
  assert len(expected) == 3  # BP's head kernels are not encoder layers


def test_train_step_reports_the_gradient_norms_before_the_update():
  config, model, variables = _plain("deinforeg", "4,4,M;4")
  batch = random_batch(16, DIGITS_SHAPE)
  tx = optax.sgd(0.1)
  state = steps.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(variables["params"]),
  )

  def loss(params):
    outputs, _ = model.apply(
      {"params": params, "batch_stats": state.batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    return rules.deinforeg_objective(outputs, batch["label"], NUM_CLASSES, config.loss)[0]

  expected = grad_norms.layer_grad_norms(jax.jit(jax.grad(loss))(state.params))  # one compile
  logged = steps.make_train_step(
    model, rules.deinforeg_objective, tx, NUM_CLASSES, config.loss, log_grad_norms=True
  )
  _, metrics, _ = jax.jit(logged)(state, batch["image"], batch["label"])
  np.testing.assert_allclose(metrics["grad_norm"], expected, rtol=1e-4)
  silent = steps.make_train_step(model, rules.deinforeg_objective, tx, NUM_CLASSES, config.loss)
  assert "grad_norm" not in jax.eval_shape(silent, state, batch["image"], batch["label"])[1]


def test_plain_vgg_layers_have_bias_and_no_batchnorm_and_the_default_keeps_batchnorm():
  _, _, plain = _plain("deinforeg", "4,M;4")
  encoder = plain["params"]["block_00"]["encoder"]
  assert set(encoder) == {"ConvReLU_0"} and set(encoder["ConvReLU_0"]["Conv_0"]) == {
    "kernel",
    "bias",
  }
  assert "encoder" not in plain.get("batch_stats", {}).get("block_00", {})
  default = init_variables(models.create_model(tiny_config(), NUM_CLASSES), DIGITS_SHAPE)
  assert set(default["params"]["block_00"]["encoder"]["ConvBNReLU_0"]) == {"Conv_0", "BatchNorm_0"}


def test_deep_plain_network_backprop_gradient_vanishes_but_decoupled_blocks_keep_theirs():
  """The 24-layer plain network of launch/configs/deep_plain.py at initialisation: in the
  first block every BP layer's gradient is over 1000x smaller than under DeInfoReg."""
  norms = {}
  batch = random_batch(32, DIGITS_SHAPE)
  for rule in ("bp", "deinforeg"):
    config = deep_plain.get_config()
    config.rule = rule
    model = models.create_model(config, NUM_CLASSES)
    variables = init_variables(model, DIGITS_SHAPE)
    objective = rules.get_objective(rule)

    def loss(params, model=model, variables=variables, objective=objective, config=config):
      outputs, _ = model.apply(
        {"params": params, "batch_stats": variables.get("batch_stats", {})},
        batch["image"],
        train=True,
        mutable=["batch_stats"],
      )
      return objective(outputs, batch["label"], NUM_CLASSES, config.loss)[0]

    grads = jax.jit(jax.grad(loss))(variables["params"])
    norms[rule] = np.asarray(grad_norms.layer_grad_norms(grads))
  assert norms["bp"].shape == norms["deinforeg"].shape == (24,)
  first_block = slice(0, 6)  # six layers away from DeInfoReg's first local loss, 24 from BP's
  assert np.all(norms["bp"][first_block] * 1000 < norms["deinforeg"][first_block])
