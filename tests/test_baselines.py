"""Tests of the SCPL and associated-learning baselines: losses, gradient flow, outputs.

Gradient flow: with ``stop_gradient`` at every boundary, block ``k``'s local loss
reaches only block ``k``'s parameters; SCPL's cross-entropy reaches only the final
head; AL's bridge term trains encoder + bridge and its reconstruction term trains
label encoder + decoder.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
  DIGITS_SHAPE,
  NUM_CLASSES,
  RGB_SHAPE,
  TEXT_CLASSES,
  TEXT_MAX_LEN,
  block_names,
  global_norm,
  init_variables,
  optimized_compiles,
  random_batch,
  tiny_config,
  tiny_text_config,
  token_batch,
)

from deinforeg_jax import losses, models, pipeline, rules
from deinforeg_jax.train import train_and_evaluate
from launch.configs import default
from deinforeg_jax.configuration import validate_config

ARCHS = (("vgg", DIGITS_SHAPE), ("resnet18", RGB_SHAPE))
TEXT_ARCHS = (("lstm", (TEXT_MAX_LEN,)), ("transformer", (TEXT_MAX_LEN,)))
AL_PARTS = ("encoder", "bridge", "label_encoder", "decoder")


def _reference_supcon(z, labels, temperature):
  """Loop version of the reference ``ContrastiveLoss`` (anchor counted in |P_i|), in float64."""
  z = np.asarray(z, np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  s = z @ z.T / temperature
  total = 0.0
  for i in range(len(z)):
    log_denominator = np.log(sum(np.exp(s[i, k]) for k in range(len(z)) if k != i))
    positives = [
      s[i, j] - log_denominator for j in range(len(z)) if j != i and labels[j] == labels[i]
    ]
    total += -sum(positives) / np.sum(labels == labels[i])
  return total / len(z)


# ---------------------------------------------------------------- losses


def test_supervised_contrastive_matches_the_loop_reference_and_is_permutation_invariant():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(12, 5)).astype(np.float32)
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 0, 3, 1, 2, 3])
  value = float(losses.supervised_contrastive_loss(jnp.asarray(z), jnp.asarray(labels), 0.1))
  np.testing.assert_allclose(value, _reference_supcon(z, labels, 0.1), rtol=1e-5)
  perm = rng.permutation(12)
  permuted = losses.supervised_contrastive_loss(jnp.asarray(z[perm]), jnp.asarray(labels[perm]))
  np.testing.assert_allclose(float(permuted), value, rtol=1e-5)
  scaled = losses.supervised_contrastive_loss(jnp.asarray(3.0 * z), jnp.asarray(labels), 0.1)
  np.testing.assert_allclose(float(scaled), value, rtol=1e-5)  # rows are L2-normalised


def test_supervised_contrastive_counts_the_anchor_in_the_positive_set():
  """Two classes of two identical points, orthogonal across classes.  Each anchor has one
  positive at similarity 1/τ and two others: L = −(1/2)·log(e^{1/τ} / (e^{1/τ} + 2))."""
  z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  tau = 0.5
  expected = -0.5 * np.log(np.exp(1 / tau) / (np.exp(1 / tau) + 2.0))
  value = losses.supervised_contrastive_loss(z, jnp.array([0, 0, 1, 1]), tau)
  np.testing.assert_allclose(float(value), expected, rtol=1e-6)


def test_associated_learning_loss_values_and_stop_gradient_on_targets():
  rng = np.random.default_rng(1)
  bridge, target = rng.normal(size=(2, 6, 4)).astype(np.float32)
  decoded, previous = rng.normal(size=(2, 6, 3)).astype(np.float32)
  total, terms = losses.associated_learning_loss(bridge, target, decoded, previous)
  np.testing.assert_allclose(float(terms["bridge"]), np.mean((bridge - target) ** 2), rtol=1e-6)
  np.testing.assert_allclose(
    float(terms["reconstruction"]), np.mean((decoded - previous) ** 2), rtol=1e-6
  )
  np.testing.assert_allclose(float(total), float(terms["bridge"] + terms["reconstruction"]))
  grads = jax.grad(lambda *a: losses.associated_learning_loss(*a)[0], argnums=(0, 1, 2, 3))(
    bridge, target, decoded, previous
  )
  assert [bool(np.any(g != 0)) for g in grads] == [True, False, True, False]


# ---------------------------------------------------------------- gradient flow


@functools.cache
def _setup(rule, arch, input_shape, **model_overrides):
  """Tiny model, variables and ``grad(name, k)``: the gradient of ``metrics[name][k]``.

  The metric is selected by a traced one-hot weight tree, so one compilation serves all.
  """
  if arch in ("lstm", "transformer"):
    config, num_classes = tiny_text_config(arch, rule), TEXT_CLASSES
    batch = token_batch(12)
    batch["image"] = batch.pop("tokens")
  else:
    config, num_classes = tiny_config(arch, rule, **model_overrides), NUM_CLASSES
    batch = random_batch(16, input_shape)
  model = models.create_model(config, num_classes)
  variables = init_variables(model, input_shape)
  objective = rules.get_objective(rule)

  def metrics_of(params):
    outputs, _ = model.apply(
      {"params": params, "batch_stats": variables.get("batch_stats", {})},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    return objective(outputs, batch["label"], num_classes, config.loss)[1]

  @jax.jit
  def weighted_grad(params, weights):
    def weighted(params):
      metrics = metrics_of(params)
      return sum(jnp.sum(weights[name] * metrics[name]) for name in weights)

    return jax.grad(weighted)(params)

  shapes = jax.eval_shape(metrics_of, variables["params"])

  def grad(name, k):
    weights = {n: np.zeros(v.shape, np.float32) for n, v in shapes.items() if n != "accuracy"}
    weights[name][k] = 1.0
    return jax.device_get(weighted_grad(variables["params"], weights))

  return config, model, variables, batch, grad


def _reached(grads) -> set[str]:
  """``block/part`` (or top-level name) of every parameter group with a nonzero gradient."""
  reached = set()
  for name, group in grads.items():
    parts = group.items() if name.startswith("block_") else [(None, group)]
    for part, leaves in parts:
      if global_norm(leaves) > 0:
        reached.add(name if part is None else f"{name}/{part}")
  return reached


@pytest.mark.parametrize("arch,input_shape", ARCHS)
def test_scpl_block_loss_reaches_only_its_block_and_ce_only_the_head(arch, input_shape):
  _, _, variables, _, grad = _setup("scpl", arch, input_shape)
  names = block_names(variables["params"])
  assert names == ["block_00", "block_01", "block_02", "block_03"]
  for k, own in enumerate(names):
    assert _reached(grad("contrastive", k)) == {f"{own}/encoder", f"{own}/projector"}
  assert _reached(grad("ce", 0)) == {"head"}


@pytest.mark.parametrize("arch,input_shape", ARCHS)
def test_al_block_loss_reaches_only_its_block(arch, input_shape):
  _, _, variables, _, grad = _setup("al", arch, input_shape)
  names = block_names(variables["params"])
  assert names == ["block_00", "block_01", "block_02", "block_03"]
  for k, own in enumerate(names):
    assert _reached(grad("loss", k)) == {f"{own}/{part}" for part in AL_PARTS}
    assert _reached(grad("bridge", k)) == {f"{own}/encoder", f"{own}/bridge"}
    assert _reached(grad("reconstruction", k)) == {f"{own}/label_encoder", f"{own}/decoder"}


@pytest.mark.parametrize("arch,input_shape", TEXT_ARCHS)
def test_text_baselines_cut_gradients_at_every_block_the_embedding_included(arch, input_shape):
  """Text SCPL: identity contrastive heads (no parameters), CE on the TextHead only.
  Text AL: the embedding block is an AL block too, with its own bridge and exit."""
  names = ["block_00", "block_01", "block_02"]  # embedding + 2 encoder blocks
  _, _, variables, _, grad = _setup("scpl", arch, input_shape)
  assert block_names(variables["params"]) == names
  for k, own in enumerate(names):
    assert _reached(grad("contrastive", k)) == {f"{own}/encoder"}
  assert _reached(grad("ce", 0)) == {"head"}
  _, _, variables, _, grad = _setup("al", arch, input_shape)
  assert block_names(variables["params"]) == names
  for k, own in enumerate(names):
    assert _reached(grad("loss", k)) == {f"{own}/{part}" for part in AL_PARTS}


# ---------------------------------------------------------------- outputs


def test_scpl_outputs_one_exit_and_per_block_contrastive_embeddings():
  config, model, variables, batch, _ = _setup("scpl", "vgg", DIGITS_SHAPE)
  outputs = model.apply(variables, batch["image"], train=False)
  assert set(outputs) == {"logits", "contrastive"}
  assert [o.shape for o in outputs["logits"]] == [(16, NUM_CLASSES)]
  assert [c.shape for c in outputs["contrastive"]] == [
    (16, 1024)
  ] * 4  # Dense(512)-ReLU-Dense(1024)
  total, metrics = rules.scpl_objective(outputs, batch["label"], NUM_CLASSES, config.loss)
  assert metrics["contrastive"].shape == (4,) and metrics["accuracy"].shape == (1,)
  np.testing.assert_allclose(
    float(total), float(np.sum(metrics["contrastive"]) + metrics["ce"][0]), rtol=1e-6
  )


def test_al_label_side_chains_through_the_blocks_and_exits_decode_back_to_classes():
  """t_0 is the identity (one-hot codes), t_k feeds block k+1, every exit has C scores in (0, 1)."""
  config, model, variables, batch, _ = _setup("al", "vgg", DIGITS_SHAPE, al_activation="sigmoid")
  outputs = model.apply(variables, batch["image"], train=False)
  np.testing.assert_array_equal(outputs["al_previous"][0], np.eye(NUM_CLASSES))
  for k in range(1, 4):
    np.testing.assert_array_equal(outputs["al_previous"][k], outputs["al_code"][k - 1])
  assert [c.shape for c in outputs["al_code"]] == [(NUM_CLASSES, config.model.al_hidden)] * 4
  assert [d.shape[1] for d in outputs["al_decoded"]] == [NUM_CLASSES] + [config.model.al_hidden] * 3
  for scores in outputs["logits"]:
    assert scores.shape == (16, NUM_CLASSES)
    assert np.all((np.asarray(scores) > 0) & (np.asarray(scores) < 1))  # sigmoid decoder


def test_al_objective_equals_the_per_sample_label_side():
  """Gathering per-class label codes by label equals encoding each sample's one-hot label."""
  config, model, variables, batch, _ = _setup("al", "vgg", DIGITS_SHAPE, al_activation="sigmoid")
  outputs = model.apply(variables, batch["image"], train=False)
  _, metrics = rules.al_objective(outputs, batch["label"], NUM_CLASSES, config.loss)
  block = variables["params"]["block_00"]
  one_hot = np.eye(NUM_CLASSES)[batch["label"]]
  kernel, bias = (
    block["label_encoder"]["Dense_0"]["kernel"],
    block["label_encoder"]["Dense_0"]["bias"],
  )
  code = jax.nn.sigmoid(one_hot @ kernel + bias)
  kernel, bias = block["decoder"]["Dense_0"]["kernel"], block["decoder"]["Dense_0"]["bias"]
  decoded = jax.nn.sigmoid(code @ kernel + bias)
  bridge = np.mean((np.asarray(outputs["al_bridge"][0]) - code) ** 2)
  np.testing.assert_allclose(metrics["bridge"][0], bridge, rtol=1e-5)
  np.testing.assert_allclose(
    metrics["reconstruction"][0], np.mean((decoded - one_hot) ** 2), rtol=1e-5
  )


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize(
  "rule,section,field,value,message",
  [
    ("al", "model", "al_activation", "gelu", "config.model.al_activation='gelu' must be one of"),
    ("al", "model", "al_bridge", "25x0", "config.model.al_bridge='25x0' does not parse"),
    ("al", "model", "al_hidden", 0, "config.model.al_hidden=0 must be a positive int"),
    ("scpl", "model", "scpl_projector", "a-b", "config.model.scpl_projector='a-b' does not parse"),
    ("scpl", "loss", "contrastive_temperature", 0.0, "config.loss.contrastive_temperature=0.0"),
  ],
)
def test_bad_baseline_fields_are_named(rule, section, field, value, message):
  config = tiny_config("vgg", rule)
  config[section][field] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    validate_config(config)


@pytest.mark.parametrize("rule", ["scpl", "al"])
def test_pipeline_mode_refuses_the_baselines_by_name(rule):
  with pytest.raises(
    ValueError, match=f"config.rule='{rule}' is not supported with config.parallel"
  ):
    pipeline.pipeline_settings(tiny_config("vgg", rule), num_blocks=4)


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.parametrize("rule,epochs", [("scpl", 5), ("al", 10)])
def test_baselines_train_on_the_default_digits_config(rule, epochs, tmp_path):
  """The issue's bar: >= 90 % test accuracy with the default config (LARS) and only the rule
  changed, over fewer than its 20 epochs (a shorter cosine schedule) to stay fast: SCPL reaches
  0.942 in 5 epochs (0.928 in 4, 0.958 in 6), AL 0.944 in 10 (0.872 in 8, 0.956 in 12, 0.981 in
  20)."""
  config = default.get_config()
  config.rule = rule
  config.train.num_epochs = epochs
  config.checkpoint.use_async = False
  config.checkpoint.every_epochs = epochs  # one save, at the end: accuracy is the point here
  config.parallel.num_devices = 1  # 8 fake devices on 2 cores would only slow it down
  with optimized_compiles():  # hundreds of steps: optimised programs run faster
    results = train_and_evaluate(config, str(tmp_path))
  assert results["best_test_accuracy"] >= 0.90, results["per_block_test_accuracy"]
