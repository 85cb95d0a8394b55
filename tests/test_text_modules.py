"""Tests of the text blocks and text stacks (the reference BiLSTM and Transformer).

Masked pooling ignores padding; the backward LSTM direction reads each sequence's
real tokens in reverse; no gradient crosses a text block boundary (the
embedding block included); BP text models train end to end; a text stack on 8
fake devices takes the same step as on 1.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
  TEXT_CLASSES,
  TEXT_MAX_LEN,
  TEXT_VOCAB,
  global_norm,
  init_variables,
  tiny_text_config,
  to_host,
  token_batch,
)

from deinforeg_jax import checkpoint, config_fields, models, optim, parallel, rules, steps
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data import DatasetInfo
from deinforeg_jax.modules import text
from deinforeg_jax.run import build_run
from deinforeg_jax.trained import loading
from launch.configs import default

def host_init(module, *args):
  """``module.init`` shapes filled by NumPy ``0.3·N(0, 1)`` (no slow XLA:CPU init compile)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, train=False))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def apply_fn(module):
  return jax.jit(lambda params, x: module.apply(params, x, train=False))


def _pad(tokens, extra):
  return np.concatenate([tokens, np.zeros((tokens.shape[0], extra), tokens.dtype)], axis=1)


def _embedded(seed=0, batch_size=5, dim=4, min_len=1):
  """A text state ``{"h", "mask"}`` with random features and right padding (h = 0 there)."""
  tokens = token_batch(batch_size, seed, min_len)["tokens"]
  h = np.random.default_rng(seed + 1).normal(size=(*tokens.shape, dim)).astype(np.float32)
  return {"h": jnp.asarray(h * (tokens != 0)[..., None]), "mask": jnp.asarray(tokens != 0)}


# ------------------------------------------------------------------ pooling and padding


def test_masked_mean_is_the_mean_of_real_positions():
  h = jnp.arange(12.0).reshape(1, 4, 3)
  mask = jnp.array([[True, True, False, False]])
  np.testing.assert_allclose(text.masked_mean(h, mask), [[1.5, 2.5, 3.5]])
  np.testing.assert_allclose(text.masked_mean(h, jnp.zeros_like(mask)), [[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("block", ["embedding", "lstm", "transformer"])
def test_adding_padding_leaves_the_pooled_vector_unchanged(block):
  tokens = token_batch(6, seed=1)["tokens"]
  padded = _pad(tokens, 7)
  embed = text.Embedding(TEXT_VOCAB, 8)
  params = host_init(embed, tokens)
  short, long = (apply_fn(embed)(params, t) for t in (tokens, padded))
  if block != "embedding":
    layer = text.BiLSTM(5) if block == "lstm" else text.TransformerEncoder(2, 8, dropout=0.0)
    layer_params = host_init(layer, short)
    short, long = (apply_fn(layer)(layer_params, s) for s in (short, long))
  np.testing.assert_allclose(short["pooled"], long["pooled"], rtol=1e-5, atol=1e-6)
  assert not np.allclose(short["pooled"][0], short["pooled"][1])


def test_reference_pooling_options_read_the_padding():
  tokens = token_batch(6, seed=2)["tokens"]
  padded = _pad(tokens, 7)
  embed = text.Embedding(TEXT_VOCAB, 8, pool="all")
  params = host_init(embed, tokens)
  all_short, all_long = (apply_fn(embed)(params, t)["pooled"] for t in (tokens, padded))
  assert not np.allclose(all_short, all_long, atol=1e-4)
  state = _embedded(seed=3, min_len=2)
  lstm_params = host_init(text.BiLSTM(5), state)
  masked = apply_fn(text.BiLSTM(5))(lstm_params, state)["pooled"]
  read = apply_fn(text.BiLSTM(5, padding="read"))(lstm_params, state)["pooled"]
  has_padding = np.asarray(state["mask"]).sum(1) < TEXT_MAX_LEN
  assert has_padding.any()
  assert not np.allclose(masked[has_padding], read[has_padding], atol=1e-4)
  np.testing.assert_allclose(masked[~has_padding], read[~has_padding], rtol=1e-5)


# ------------------------------------------------------------------ BiLSTM directions


def test_reverse_within_length_reverses_real_steps_only():
  x = jnp.arange(5)[None, :, None].repeat(2, axis=0)
  out = text.reverse_within_length(x, jnp.array([3, 5]))[..., 0]
  np.testing.assert_array_equal(out, [[2, 1, 0, 3, 4], [4, 3, 2, 1, 0]])


def test_backward_direction_reads_the_sequence_in_reverse():
  """With the backward weights set to the forward ones, backward(x) == forward(reverse(x))."""
  state = _embedded(seed=4, min_len=3)
  lstm = text.BiLSTM(5)
  params = jax.tree.map(lambda w: np.stack([w[0], w[0]]), host_init(lstm, state))
  lengths = jnp.sum(state["mask"], axis=1)
  reversed_state = {"h": text.reverse_within_length(state["h"], lengths), "mask": state["mask"]}
  out, out_rev = (apply_fn(lstm)(params, s) for s in (state, reversed_state))
  c, h = out["carry"]
  c_rev, h_rev = out_rev["carry"]
  np.testing.assert_allclose(h[1], h_rev[0], rtol=1e-5, atol=1e-6)  # final states
  np.testing.assert_allclose(c[1], c_rev[0], rtol=1e-5, atol=1e-6)
  backward_seq = out["h"][..., 5:]
  forward_seq_of_reversed = text.reverse_within_length(out_rev["h"][..., :5], lengths)
  np.testing.assert_allclose(backward_seq, forward_seq_of_reversed, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["pooled"], (h[0] + h[1]) / 2, rtol=1e-6)
  # The sequence is not a palindrome, so the two directions really differ.
  assert not np.allclose(h[0], h[1], atol=1e-3)
  assert np.all(np.asarray(out["h"])[~np.asarray(state["mask"])] == 0.0)


def _equations(jaxpr):
  """Every equation of ``jaxpr`` and of the jaxprs nested in it (scan, pjit, remat ...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else [value]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _equations(inner)


def test_lstm_remat_recomputes_the_step_for_the_same_values_and_auto_is_off_on_the_cpu():
  """``model.lstm_remat``: the rematerialised scan step (``jax.checkpoint``) gives the plain
  step's outputs and gradients; ``"auto"`` rematerialises on GPU/TPU only."""
  assert [text.resolve_lstm_remat("auto", p) for p in ("cpu", "gpu", "tpu")] == [False, True, True]
  assert text.resolve_lstm_remat("on", "cpu") and not text.resolve_lstm_remat("off", "tpu")
  state = _embedded(seed=2, min_len=3)
  params = host_init(text.BiLSTM(5), state)

  def loss_and_grads(remat):
    lstm = text.BiLSTM(5, remat=remat)
    loss = lambda p: jnp.sum(lstm.apply(p, state, train=True)["h"] ** 2)
    gradient = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    primitives = {e.primitive.name for e in _equations(gradient)}
    return jax.jit(jax.value_and_grad(loss))(params), primitives

  (loss, grads), plain = loss_and_grads(False)
  (remat_loss, remat_grads), recomputed = loss_and_grads(True)
  assert "remat2" in recomputed - plain  # jax.checkpoint's primitive, inside the scan's backward
  np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ stacks


@functools.cache
def _text_stack(arch, rule="deinforeg"):
  config = tiny_text_config(arch, rule)
  model = models.create_model(config, TEXT_CLASSES)
  variables = init_variables(model, (TEXT_MAX_LEN,))
  batch = token_batch(12)
  objective = rules.get_objective(rule)

  @jax.jit
  def grads(params, weights):
    """Gradient of ``weights · [embedding_loss, loss_1, .., loss_N]``."""

    def loss(p):
      outputs = model.apply(
        {"params": p}, batch["tokens"], train=True, rngs={"dropout": jax.random.key(0)}
      )
      total, metrics = objective(outputs, batch["label"], TEXT_CLASSES, config.loss)
      if rule == "bp":
        return total
      return jnp.dot(weights, jnp.concatenate([metrics["embedding_loss"][None], metrics["loss"]]))

    return jax.grad(loss)(params)

  return model, variables, grads


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_text_stack_layout_and_outputs(arch):
  model, variables, _ = _text_stack(arch)
  params = variables["params"]
  assert sorted(params) == ["block_00", "block_01", "block_02"]
  assert sorted(params["block_00"]) == ["encoder"]  # identity projector, no classifier
  assert sorted(params["block_01"]) == ["classifier", "encoder"]
  assert params["block_00"]["encoder"]["embedding"].shape == (TEXT_VOCAB, 8)
  outputs = model.apply(variables, token_batch(4)["tokens"], train=False)
  width = 6 if arch == "lstm" else 8  # LSTM pooled: hidden H; Transformer: d_model
  assert [z.shape for z in outputs["extra_z"]] == [(4, 8)]
  assert [z.shape for z in outputs["z"]] == [(4, width)] * 2
  assert [lg.shape for lg in outputs["logits"]] == [(4, TEXT_CLASSES)] * 2


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_text_block_losses_reach_only_their_own_block(arch):
  _, variables, grads = _text_stack(arch)
  names = ["block_00", "block_01", "block_02"]
  for k, own in enumerate(names):
    weights = jnp.zeros(len(names)).at[k].set(1.0)
    g = grads(variables["params"], weights)
    for name in names:
      norm = global_norm(g[name])
      if name == own:
        assert norm > 0, f"loss {k} does not train {name}"
      else:
        assert norm == 0.0, f"loss {k} leaks into {name} (|g| = {norm})"


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_bp_text_model_trains_every_block(arch):
  _, variables, grads = _text_stack(arch, "bp")
  params = variables["params"]
  assert sorted(params) == ["block_00", "block_01", "block_02", "head"]
  g = grads(params, jnp.zeros(0))
  assert all(global_norm(g[name]) > 0 for name in params)


def test_frozen_embedding_gets_no_gradient():
  config = tiny_text_config(freeze_embedding=True)
  model = models.create_model(config, TEXT_CLASSES)
  variables = init_variables(model, (TEXT_MAX_LEN,))
  batch = token_batch(12)

  def loss(p):
    outputs = model.apply({"params": p}, batch["tokens"], train=True)
    return rules.deinforeg_objective(outputs, batch["label"], TEXT_CLASSES, config.loss)[0]

  g = jax.jit(jax.grad(loss))(variables["params"])
  assert global_norm(g["block_00"]) == 0.0
  assert global_norm(g["block_01"]) > 0


def test_text_config_errors_name_the_field():
  with pytest.raises(ValueError, match="config.model.projector"):
    models.create_model(tiny_text_config(projector="8-8"), TEXT_CLASSES)
  with pytest.raises(ValueError, match="config.model.num_blocks"):
    validate_config(tiny_text_config(num_blocks=0))
  with pytest.raises(ValueError, match="config.model.classifier_mode"):
    models.create_model(tiny_text_config(classifier_mode="unmerge"), TEXT_CLASSES)
  model = models.create_model(tiny_text_config("transformer", heads=3), TEXT_CLASSES)
  with pytest.raises(ValueError, match="config.model.heads=3 must divide d_model=8"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, TEXT_MAX_LEN)), train=False))


def test_text_stack_on_eight_devices_equals_one_device(eight_devices):
  """One Adam step of a BiLSTM DeInfoReg stack: same metrics and parameters on 1 and 8 devices."""
  del eight_devices
  config = tiny_text_config("lstm")
  model = models.create_model(config, TEXT_CLASSES)
  tx = optim.make_optimizer(config.optim, lambda _: config.optim.base_lr)
  params = init_variables(model, (TEXT_MAX_LEN,))["params"]
  batch = token_batch(16, seed=5)
  info = DatasetInfo("tiny_text", (TEXT_MAX_LEN,), TEXT_CLASSES, 1000, 100, (), (), kind="text")
  results = []
  for devices in (1, 8):
    mesh = parallel.make_data_mesh(devices)
    state = steps.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params)
    )
    state = jax.device_put(state, parallel.replicated(mesh))
    run = dataclasses.replace(build_run(config, info), model=model, tx=tx)
    step = run.jit_steps(run.plan.final, mesh).train
    sharded = parallel.shard_batch(batch, mesh)
    new_state, metrics, _ = step(state, sharded["tokens"], sharded["label"])
    results.append((to_host(new_state.params), to_host(metrics)))
  (p1, m1), (p8, m8) = results
  for name in ("loss", "embedding_loss", "total_loss"):
    np.testing.assert_allclose(m1[name], m8[name], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p8)
  assert global_norm(jax.tree.map(np.subtract, p1, params)) > 0


@pytest.mark.parametrize(
  "name", [f"{d}_{a}" for d in ("imdb", "agnews", "dbpedia") for a in ("lstm", "transformer")]
)
def test_spec_text_configs_validate_with_spec_settings(name):
  config = importlib.import_module(f"launch.configs.{name}").get_config()
  validate_config(config)
  assert (config.model.num_blocks, config.model.emb_dim, config.data.vocab_size) == (4, 300, 30000)
  assert config.data.max_len == (60 if name.startswith("agnews") else 350)
  assert (config.optim.name, config.optim.base_lr, config.train.num_epochs) == ("adam", 1e-3, 50)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("embedding_pool", "max", "config.model.embedding_pool='max' must be one of"),
    ("lstm_padding", "packed", "config.model.lstm_padding='packed' must be one of"),
    ("hidden", 0, "config.model.hidden=0 must be a positive integer"),
  ],
)
def test_validate_config_names_bad_text_fields(field, value, message):
  config = tiny_text_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=message):
    validate_config(config)
  config = tiny_text_config("transformer", heads=3)
  with pytest.raises(ValueError, match="config.model.heads=3 must divide config.model.emb_dim=8"):
    validate_config(config)



def _param_shapes(config) -> dict[str, tuple[int, ...]]:
  model = models.create_model(config, TEXT_CLASSES)
  x = jnp.zeros((2, TEXT_MAX_LEN), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
  flat = jax.tree_util.tree_leaves_with_path(shapes)
  return {jax.tree_util.keystr(path): leaf.shape for path, leaf in flat}


def _without_text_fields_added_later(config) -> dict:
  saved = config.to_dict()
  text_fields_added_later = [
    f for f, facts in config_fields.FIELDS.items() if facts.text_only and facts.added_later
  ]
  for field in text_fields_added_later:
    section, name = field.split(".")
    del saved[section][name]
  return saved


def test_text_runs_saved_before_the_reference_fixes_rebuild_as_they_were_saved():
  """A text run saved before ``model.lstm_biases`` / ``layer_norm`` / ``text_al_width`` existed
  is read with one LSTM bias, Flax's LayerNorm and AL codes of width ``model.hidden`` (its
  parameters and function then); a vision run without the fields is not refused for them."""
  now = tiny_text_config("lstm", rule="al", al_hidden=5)
  older = _without_text_fields_added_later(now)
  assert checkpoint.changed_fields(older, now.to_dict()) == {
    "model.layer_norm": ("flax", "unbiased_std"),
    "model.lstm_biases": (1, 2),
    "model.text_al_width": ("hidden", "al_hidden"),
  }
  rebuilt = loading.saved_config({"config": older})
  assert checkpoint.changed_fields(older, rebuilt.to_dict()) == {}
  old_shapes, new_shapes = _param_shapes(rebuilt), _param_shapes(now)
  assert not any("recurrent_bias" in path for path in old_shapes)
  assert any("recurrent_bias" in path for path in new_shapes)
  # AL's label codes: width model.al_hidden (5) now, model.hidden (6) in the older run
  assert 5 in {shape[-1] for shape in new_shapes.values()}
  assert 5 not in {shape[-1] for shape in old_shapes.values()}

  vision = default.get_config()
  assert checkpoint.changed_fields(_without_text_fields_added_later(vision), vision.to_dict()) == {}


@pytest.mark.parametrize("layer_norm", text.LAYER_NORMS)
def test_transformer_layer_norm_is_the_reference_or_flax(layer_norm):
  """``unbiased_std``: ``(x - mean) / (std_unbiased + 1e-6)``; ``flax``: ``/ sqrt(var + 1e-6)``;
  the same parameter names either way (an older checkpoint restores into either)."""
  h = np.random.default_rng(0).normal(size=(2, 5, 8)).astype(np.float32)
  x = {"h": jnp.asarray(h), "mask": jnp.ones((2, 5), bool)}
  module = text.TransformerEncoder(2, 8, 0.0, layer_norm=layer_norm)
  params = module.init(jax.random.key(0), x, train=False)
  assert sorted(k for k in params["params"] if k.startswith("LayerNorm")) == [
    "LayerNorm_0", "LayerNorm_1", "LayerNorm_2"
  ]
  _, captured = module.apply(
    params, x, train=False, capture_intermediates=lambda m, _: m.name == "LayerNorm_0",
    mutable=["intermediates"],
  )
  first = np.asarray(captured["intermediates"]["LayerNorm_0"]["__call__"][0])
  centred = h - h.mean(-1, keepdims=True)
  if layer_norm == "unbiased_std":
    want = centred / (h.std(-1, ddof=1, keepdims=True) + 1e-6)
  else:
    want = centred / np.sqrt(h.var(-1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-5)
