"""Step-for-step fidelity of the text classes: the original's BiLSTM and Transformer models.

``tests/oracles/{lstm,transformer}_{deinforeg,bp,scpl,al}.npz`` were recorded by
``benchmarks/make_oracle.py`` from the original's own classes (``LSTM_DeInfoReg``, ``LSTM``,
``LSTM_SCPL``, ``LSTM_AL`` and the ``Transformer*`` twins, reference commit fe6cc49) on AG News
token ids; ``tests/test_trajectory_parity.py`` replays every committed oracle within its limits.
Here: one test per departure of our defaults from the original that the replays found, each
shown on the oracle's first step or on the layer itself, and the original's text preprocessing
against ours.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from benchmarks import oracle_data
from benchmarks import replay_text as rt
from benchmarks import trajectory_parity as tp
from deinforeg_jax import models, rules
from deinforeg_jax.modules import text
from launch.configs import default, reference

ORACLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracles")
TEXT_CLASSES = {
  "lstm_deinforeg": "LSTM_DeInfoReg", "lstm_bp": "LSTM", "lstm_scpl": "LSTM_SCPL",
  "lstm_al": "LSTM_AL", "transformer_deinforeg": "Transformer_DeInfoReg",
  "transformer_bp": "Transformer", "transformer_scpl": "Transformer_SCPL",
  "transformer_al": "Transformer_AL",
}


def _oracle(name: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(ORACLES, f"{name}.npz")) as npz:
    return {k: npz[k] for k in npz.files}


def _first_step_loss(oracle, overrides=None) -> float:
  """Our summed loss on the oracle's first batch at its initial parameters."""
  meta = json.loads(str(oracle["meta"]))
  r = rt.prepare(oracle, meta, {"overrides": overrides or {}})
  x = jnp.asarray(r.x[0])
  template = jax.eval_shape(lambda: r.model.init(jax.random.key(0), x[:2], train=False))
  params, _ = r.load("init/", template, np.float32)
  outputs = r.model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(0)})
  total, _ = rules.get_objective(r.config.rule)(
    outputs, jnp.asarray(r.y[0]), int(meta["n_classes"]), r.config.loss
  )
  return float(total)


def test_every_text_class_has_a_committed_oracle_of_its_original_class():
  for name, torch_class in TEXT_CLASSES.items():
    path = os.path.join(ORACLES, f"{name}.npz")
    assert os.path.getsize(path) < 2 * 2**20, name
    oracle = _oracle(name)
    meta = json.loads(str(oracle["meta"]))
    assert meta["torch_class"] == torch_class
    assert oracle["x"].max() < meta["vocab_size"] and len(oracle["vocab"]) == meta["vocab_size"]
    assert oracle["x_len"].shape == (meta["steps"],)


@pytest.mark.parametrize("name", ["lstm_deinforeg", "transformer_scpl", "lstm_al"])
def test_first_step_loss_of_the_reference_preset_is_the_originals(name):
  oracle = _oracle(name)
  assert _first_step_loss(oracle) == pytest.approx(float(oracle["loss_total"][0]), rel=1e-6)


def test_departure_lstm_padding_reference_read_vs_our_masked():
  """Our BiLSTM reads only the real tokens (``model.lstm_padding="masked"``, the default); the
  original's ``nn.LSTM`` runs without packing and its backward direction reads the padding
  first (``"read"``, the reference preset)."""
  assert default.get_config().model.lstm_padding == "masked"
  assert reference.get_config("lstm").model.lstm_padding == "read"
  oracle = _oracle("lstm_deinforeg")
  first = float(oracle["loss_total"][0])
  assert oracle["x"][0].min() == 0  # the batch has padding
  assert abs(_first_step_loss(oracle, {"model.lstm_padding": "masked"}) - first) > 1e-4 * first


def test_departure_embedding_pool_reference_all_vs_our_masked():
  """The embedding block's local loss reads the mean over real tokens by default; the original's
  ``emb.mean(1)`` averages the padding in too (``model.embedding_pool="all"``)."""
  assert default.get_config().model.embedding_pool == "masked"
  assert reference.get_config("transformer").model.embedding_pool == "all"
  oracle = _oracle("transformer_deinforeg")
  first = float(oracle["loss_total"][0])
  assert abs(_first_step_loss(oracle, {"model.embedding_pool": "masked"}) - first) > 1e-4 * first


def test_departure_fixed_lstm_has_two_biases_each_with_its_own_adam_step():
  """``nn.LSTM`` has ``b_ih`` and ``b_hh``; both get the same gradient and each its own optimizer
  step, so the gate bias moves twice as far per Adam step as a single bias would (our BiLSTM had
  one bias: the LSTM oracles departed from the second step on)."""
  lstm = text.BiLSTM(3)
  state = {"h": jnp.ones((2, 4, 5)), "mask": jnp.ones((2, 4), bool)}
  params = lstm.init(jax.random.key(0), state, False)["params"]
  assert params["bias"].shape == params["recurrent_bias"].shape == (2, 12)
  grads = jax.grad(lambda p: jnp.sum(lstm.apply({"params": p}, state, False)["pooled"]))(params)
  np.testing.assert_array_equal(grads["bias"], grads["recurrent_bias"])
  tx = optax.adam(1e-3)
  updates, _ = tx.update(grads, tx.init(params))
  moved = updates["bias"] + updates["recurrent_bias"]
  np.testing.assert_allclose(moved, 2 * updates["bias"], rtol=1e-6)
  assert float(jnp.max(jnp.abs(moved))) == pytest.approx(2e-3, rel=1e-3)


def test_departure_fixed_transformer_layer_norm_divides_by_unbiased_std_plus_eps():
  """The original encoder's LayerNorm is ``a (x - mean) / (std + 1e-6) + b`` with the unbiased
  std; ours was Flax's ``(x - mean) / sqrt(var + 1e-6)``, 4.5 % off at width 12."""
  x = jax.random.normal(jax.random.key(1), (3, 12))
  params = {"scale": jnp.full((12,), 1.5), "bias": jnp.full((12,), 0.25)}
  ours = np.asarray(text.LayerNorm().apply({"params": params}, x))
  xs = np.asarray(x, np.float64)
  expected = 1.5 * (xs - xs.mean(-1, keepdims=True)) / (xs.std(-1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(ours, expected + 0.25, rtol=1e-5, atol=1e-6)
  flax_ln = np.asarray(__import__("flax").linen.LayerNorm(1e-6).apply({"params": params}, x))
  assert np.max(np.abs(flax_ln - ours)) > 1e-2


def test_departure_fixed_text_al_label_code_width_is_al_hidden_not_hidden():
  """``LSTM_AL`` / ``Transformer_AL`` write ``neuron_size = 300`` for the label codes and the
  bridges whatever ``h_dim``; ours used ``model.hidden``.  Now ``model.al_hidden`` (300 in the
  paper's text configs and the reference preset)."""
  config = reference.get_config("lstm")
  assert config.model.al_hidden == 300
  config.rule, config.model.hidden, config.model.emb_dim, config.model.al_hidden = "al", 6, 6, 20
  config.model.num_blocks = 1
  model = models.create_model(config, 4, vocab_size=10)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((2, 3), jnp.int32),
                                             train=False))["params"]
  assert params["block_00"]["bridge"]["Dense_0"]["kernel"].shape == (6, 20)
  assert params["block_01"]["label_encoder"]["Dense_0"]["kernel"].shape == (20, 20)
  assert params["block_00"]["decoder"]["Dense_0"]["kernel"].shape == (20, 4)


def test_departure_transformer_heads_original_bp_4_others_6():
  """The original's ``Transformer`` (BP) has ``args.heads`` (4) heads, its DeInfoReg, SCPL and AL
  ``_make_layer``'s 6; our ``model.heads`` (6) serves every rule, so one model is compared across
  rules.  The replay sets the BP oracle's 4 (a 6-head load of its attention weights would
  split them into other heads)."""
  assert default.get_config().model.heads == 6
  bp = json.loads(str(_oracle("transformer_bp")["meta"]))
  assert bp["heads"] == 4 and rt.make_config(bp).model.heads == 4
  for rule in ("deinforeg", "scpl", "al"):
    meta = json.loads(str(_oracle(f"transformer_{rule}")["meta"]))
    assert rt.make_config(meta).model.heads == 6


def test_text_oracle_with_another_optimizer_is_refused():
  meta = dict(json.loads(str(_oracle("lstm_bp")["meta"])), optimal="SGD")
  with pytest.raises(tp.OracleError, match="meta.optimal='SGD'"):
    rt.make_config(meta)


def test_original_preprocessing_gives_our_ids_with_its_vocabulary_and_ties_ordered_otherwise():
  """On the oracle's AG News texts our ``normalize`` + ``encode`` give the original's
  ``data_preprocessing`` + ``Textset`` ids exactly when given the original's vocabulary; our own
  vocabulary ranks the same counts but orders equally frequent words alphabetically where
  ``Counter.most_common`` keeps first occurrence, so those words get other ids."""
  data_dir = oracle_data.default_data_dir()
  if not os.path.exists(os.path.join(data_dir, "ag_news_test.jsonl.gz")):
    pytest.skip("AG News is absent from ../shared/data")
  agreement = rt.preprocessing_agreement(_oracle("lstm_bp"), data_dir)
  assert agreement["ids_equal_with_their_vocab"] == 1.0
  assert agreement["vocab_same_counts"]
  assert not agreement["vocab_same_order"]
  assert agreement["ids_equal_with_our_vocab"] < 1.0


def test_departure_kept_transformer_al_eval_original_attends_to_padding_in_layers_1_to_3():
  """``Transformer_AL.inference`` calls ``layer1..3(x, None, mask)``: the mask lands in their
  ``label`` argument, so at evaluation those layers attend to the padding (training masks it).
  Ours masks at evaluation too (the original's slip is not an option): with the original's
  final parameters our eval logits are its own on the rows without padding and differ on the
  padded ones."""
  oracle = _oracle("transformer_al")
  meta = json.loads(str(oracle["meta"]))
  r = rt.prepare(dict(oracle), meta, {})
  x_eval = jnp.asarray(oracle["x_eval"])
  template = jax.eval_shape(lambda: r.model.init(jax.random.key(0), x_eval[:2], train=False))
  params, _ = r.load("final/", template, np.float32)
  ours = np.asarray(r.model.apply({"params": params}, x_eval, train=False)["logits"][-1])
  padded = np.any(oracle["x_eval"] == 0, axis=1)
  assert 0 < padded.sum() < padded.size
  diff = np.abs(ours - oracle["eval_logits"][0]).max(axis=1)
  assert diff[~padded].max() < 1e-4
  assert diff[padded].max() > 1e-2
