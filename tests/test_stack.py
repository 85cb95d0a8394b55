"""Tests of ``deinforeg_jax.stack``: gradient isolation, output shapes, classifier modes.

The central contract (arXiv 2506.18193, the decoupled paradigm): block ``k+1`` sees ``stop_gradient(h_k)``,
so the gradient of block ``k``'s local loss with respect to any other block's
parameters is exactly zero, while BP (no cuts) sends its gradient into every block.
"""

from __future__ import annotations

import functools

import chex
import jax
import numpy as np
import pytest

from deinforeg_jax import models, rules
from helpers import (
  DIGITS_SHAPE,
  NUM_CLASSES,
  RGB_SHAPE,
  block_names,
  global_norm,
  init_variables,
  random_batch,
  tiny_config,
)

HEAD_NAMES = ("projector", "classifier")

# (arch, input shape): VGG on digits-sized inputs, ResNet-18 on a small RGB image.
ARCHS = (("vgg", DIGITS_SHAPE), ("resnet18", RGB_SHAPE))


def _encoder_name(block_params) -> str:
  (name,) = [k for k in block_params if k not in HEAD_NAMES]
  return name


def _setup(arch, input_shape, batch_size=16, rule="deinforeg", **model_overrides):
  config = tiny_config(arch, rule, **model_overrides)
  model = models.create_model(config, NUM_CLASSES)
  variables = init_variables(model, input_shape)
  batch = random_batch(batch_size, input_shape)
  return config, model, variables, batch


@functools.lru_cache(maxsize=None)
def _decoupled(arch, input_shape, mode="merge"):
  """A tiny stack, its variables, a batch and one jitted gradient function (built once).

  ``grad(params, k, a, b)`` is the gradient of ``a·loss[k] + b·ce_weight·ce[k]``: with
  ``(a, b) = (1, 0)`` block ``k``'s local loss, with ``(0, 1)`` its weighted classifier
  CE.  ``k``, ``a`` and ``b`` are traced, so one compilation serves every block.
  """
  config, model, variables, batch = _setup(arch, input_shape, classifier_mode=mode)

  def selected(params, k, a, b):
    outputs, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    _, metrics = rules.deinforeg_objective(outputs, batch["label"], NUM_CLASSES, config.loss)
    return a * metrics["loss"][k] + b * config.loss.ce_weight * metrics["ce"][k]

  grad = jax.jit(jax.grad(selected))

  def block_grads(k, metric):
    a, b = (1.0, 0.0) if metric == "loss" else (0.0, 1.0)
    return jax.device_get(grad(variables["params"], k, a, b))

  return variables, block_grads


# ---------------------------------------------------------------- gradient isolation


@pytest.mark.parametrize(
  "arch,input_shape,mode",
  [
    ("vgg", DIGITS_SHAPE, "merge"),
    ("resnet18", RGB_SHAPE, "merge"),
    ("vgg", DIGITS_SHAPE, "unmerge"),
  ],
)
def test_block_loss_gradient_reaches_only_its_own_block(arch, input_shape, mode):
  variables, block_grads = _decoupled(arch, input_shape, mode)
  names = block_names(variables["params"])
  assert names == ["block_00", "block_01", "block_02", "block_03"]

  for k, own in enumerate(names):
    grads = block_grads(k, "loss")
    for other in names:
      if other == own:
        continue
      leaves = jax.tree_util.tree_leaves_with_path(grads[other])
      nonzero = [jax.tree_util.keystr(p) for p, g in leaves if np.any(g != 0)]
      assert not nonzero, f"loss of {own} leaks into {other}: {nonzero}"
    # Block k's own encoder, projector and classifier are all trained by its loss.
    own_grads = grads[own]
    for part in (_encoder_name(own_grads), *HEAD_NAMES):
      assert global_norm(own_grads[part]) > 0, f"{own}/{part} gets no gradient from its loss"
    chex.assert_tree_all_finite(own_grads)


@pytest.mark.parametrize("arch,input_shape", ARCHS)
def test_backprop_cross_entropy_reaches_every_block(arch, input_shape):
  config, model, variables, batch = _setup(arch, input_shape, rule="bp")
  params = variables["params"]
  names = block_names(params)
  assert names == ["block_00", "block_01", "block_02", "block_03"]
  (head,) = [k for k in params if not k.startswith("block_")]

  def ce(params):
    outputs, _ = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    return rules.bp_objective(outputs, batch["label"], NUM_CLASSES, config.loss)

  (loss, metrics), grads = jax.jit(jax.value_and_grad(ce, has_aux=True))(params)
  np.testing.assert_allclose(metrics["loss"], [loss])
  assert 0.5 < float(loss) < 10.0  # a cross-entropy over 10 classes near initialisation
  for name in (*names, head):
    assert global_norm(grads[name]) > 0, f"BP gradient does not reach {name}"
  for name in names:  # each BP block holds only its encoder, and every part of it learns
    (encoder,) = grads[name]
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads[name][encoder]):
      if "kernel" in jax.tree_util.keystr(path):
        assert np.any(leaf != 0), f"{name}{jax.tree_util.keystr(path)} gets no BP gradient"


@pytest.mark.parametrize("arch,input_shape", ARCHS)
def test_backprop_encoders_share_names_and_shapes_with_the_stack(arch, input_shape):
  """A BP encoder's parameters sit where the decoupled stack keeps that block's encoder."""
  _, _, decoupled, _ = _setup(arch, input_shape)
  _, _, backprop, _ = _setup(arch, input_shape, rule="bp")
  for name in block_names(decoupled["params"]):
    block = decoupled["params"][name]
    encoder = _encoder_name(block)
    assert set(backprop["params"][name]) == {encoder}
    chex.assert_trees_all_equal_shapes(block[encoder], backprop["params"][name][encoder])


# ---------------------------------------------------------------- outputs and heads


@pytest.mark.parametrize(
  "arch,input_shape,num_blocks",
  [("vgg", DIGITS_SHAPE, 4), ("vgg", DIGITS_SHAPE, 2), ("resnet18", RGB_SHAPE, 4)],
)
def test_stack_output_shapes(arch, input_shape, num_blocks):
  _, model, variables, batch = _setup(arch, input_shape, batch_size=12, num_blocks=num_blocks)
  assert len(block_names(variables["params"])) == num_blocks
  outputs = jax.jit(functools.partial(model.apply, train=False))(variables, batch["image"])
  assert set(outputs) == {"z", "logits"}
  assert len(outputs["z"]) == len(outputs["logits"]) == num_blocks
  for z, logits in zip(outputs["z"], outputs["logits"]):
    chex.assert_shape(z, (12, 32))
    chex.assert_shape(logits, (12, NUM_CLASSES))
    chex.assert_tree_all_finite((z, logits))


def test_backprop_net_has_one_exit():
  _, model, variables, batch = _setup("vgg", DIGITS_SHAPE, batch_size=12, rule="bp")
  outputs = jax.jit(functools.partial(model.apply, train=False))(variables, batch["image"])
  assert set(outputs) == {"logits"}
  (logits,) = outputs["logits"]
  chex.assert_shape(logits, (12, NUM_CLASSES))


def test_projector_and_classifier_shapes_follow_the_spec():
  """Projector ``flatten(h) -> 32 -> 32``; merge classifier BN-ReLU-Dense(C) on z;
  unmerge classifier an MLP ``flatten(h) -> 32 -> C`` (the reference code's ``Classifier``)."""
  _, _, merge, _ = _setup("vgg", DIGITS_SHAPE)
  _, _, unmerge, _ = _setup("vgg", DIGITS_SHAPE, classifier_mode="unmerge")
  # Default vgg_blocks "32,32,M;64,M;128,M;128" at width 1/8 on 8x8: block 0 -> 4x4x4.
  flat = 4 * 4 * 4
  projector = merge["params"]["block_00"]["projector"]
  assert projector["Dense_0"]["kernel"].shape == (flat, 32)
  assert projector["Dense_1"]["kernel"].shape == (32, 32)
  classifier = merge["params"]["block_00"]["classifier"]
  assert classifier["BatchNorm_0"]["scale"].shape == (32,)
  assert classifier["Dense_0"]["kernel"].shape == (32, NUM_CLASSES)
  mlp = unmerge["params"]["block_00"]["classifier"]["MLP_0"]
  assert mlp["Dense_0"]["kernel"].shape == (flat, 32)
  assert mlp["Dense_1"]["kernel"].shape == (32, NUM_CLASSES)


@pytest.mark.parametrize("mode", ["merge", "unmerge"])
def test_classifier_cross_entropy_gradient_by_mode(mode):
  """'unmerge' detaches the classifier input: CE trains only the classifier.
  'merge' feeds the attached z: ce_weight * CE reaches projector and encoder."""
  variables, block_grads = _decoupled("vgg", DIGITS_SHAPE, mode)
  for k, own in enumerate(block_names(variables["params"])):
    all_grads = block_grads(k, "ce")
    assert all(global_norm(all_grads[other]) == 0.0 for other in all_grads if other != own)
    grads = all_grads[own]
    encoder = _encoder_name(grads)
    assert global_norm(grads["classifier"]) > 0
    if mode == "unmerge":
      assert global_norm(grads["projector"]) == 0.0, own
      assert global_norm(grads[encoder]) == 0.0, own
    else:
      assert global_norm(grads["projector"]) > 0, own
      assert global_norm(grads[encoder]) > 0, own


# ---------------------------------------------------------------- batch permutation


@pytest.mark.parametrize("arch,input_shape", ARCHS)
def test_train_mode_outputs_and_losses_are_batch_permutation_equivariant(arch, input_shape):
  """BatchNorm uses batch statistics and every loss term is symmetric in the samples,
  so permuting the batch permutes z/logits and leaves losses and BN statistics unchanged."""
  config, model, variables, batch = _setup(arch, input_shape, batch_size=32)
  perm = np.random.default_rng(1).permutation(32)

  @jax.jit
  def run(image, label):
    outputs, updated = model.apply(variables, image, train=True, mutable=["batch_stats"])
    _, metrics = rules.deinforeg_objective(outputs, label, NUM_CLASSES, config.loss)
    return outputs, metrics, updated["batch_stats"]

  outputs, metrics, stats = run(batch["image"], batch["label"])
  outputs_p, metrics_p, stats_p = run(batch["image"][perm], batch["label"][perm])
  for key in ("z", "logits"):
    for a, b in zip(outputs[key], outputs_p[key]):
      np.testing.assert_allclose(np.asarray(b), np.asarray(a)[perm], rtol=1e-5, atol=1e-5)
  for name in ("loss", "invariance", "variance", "covariance", "ce", "accuracy"):
    np.testing.assert_allclose(metrics_p[name], metrics[name], rtol=1e-5, atol=1e-7, err_msg=name)
  chex.assert_trees_all_close(stats_p, stats, rtol=1e-5, atol=1e-6)
  # The permutation is not the identity and the outputs are not constant.
  assert not np.allclose(np.asarray(outputs["z"][0])[perm], np.asarray(outputs["z"][0]))
