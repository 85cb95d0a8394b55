"""Step-for-step fidelity of the original's side classes (a block reading new features).

``tests/oracles/{lstm,transformer}_side.npz`` were recorded by ``benchmarks/make_oracle.py
--side=A`` from the original's ``LSTM_DeInfoReg_side`` / ``Transformer_DeInfoReg_side``
(reference commit fe6cc49): the old stack loaded and frozen by the class itself, one new block
trained on the old top block's output and the tokens from ``A`` on.
``tests/test_trajectory_parity.py`` replays every committed oracle (these too) through our
``config.grow`` (``side_split``, ``side_layers``) within its limits.  Here: the committed side
oracles and the one departure the replays found, by name.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import replay_text as rt
from deinforeg_jax import models, rules
from deinforeg_jax.config_error import ConfigError
from launch.configs import default, reference

ORACLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracles")
SIDE_CLASSES = {
  "lstm_side": "LSTM_DeInfoReg_side", "transformer_side": "Transformer_DeInfoReg_side"
}


def _oracle(name: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(ORACLES, f"{name}.npz")) as npz:
    return {k: npz[k] for k in npz.files}


def _first_step_new_block_loss(oracle, overrides=None) -> float:
  """Our new block's ``L_InfoReg + 0.001 CE`` on the oracle's first batch at ``init/``."""
  meta = json.loads(str(oracle["meta"]))
  r = rt.prepare(oracle, meta, {"overrides": overrides or {}})
  x = jnp.asarray(r.x[0])
  template = jax.eval_shape(lambda: r.model.init(jax.random.key(0), x[:2], train=False))
  params, _ = r.load("init/", template, np.float32)
  outputs = r.model.apply({"params": params}, x, train=True)
  _, metrics = rules.get_objective(r.config.rule)(
    outputs, jnp.asarray(r.y[0]), int(meta["n_classes"]), r.config.loss
  )
  return r.total_loss(jax.device_get(metrics), r.config)


def test_every_side_class_has_a_committed_oracle_of_its_original_class():
  for name, torch_class in SIDE_CLASSES.items():
    path = os.path.join(ORACLES, f"{name}.npz")
    assert os.path.getsize(path) < 2 * 2**20
    meta = json.loads(str(_oracle(name)["meta"]))
    assert meta["torch_class"] == torch_class and meta["rule"] == "deinforeg"
    assert 0 < meta["side"] < meta["max_len"] and sum(meta["side_dim"]) == meta["max_len"]


def test_departure_side_lstm_state_reference_old_top_vs_our_zero():
  """``LSTM_DeInfoReg_side`` starts its new BiLSTM from ``hiddenlist[-1]``, the old top
  block's final ``(h, c)``; ours starts from zeros (``grow.side_lstm_state="zero"``).  The
  reference preset sets ``"old_top"``, which gives the original's first-step loss; zeros do
  not (on a short sequence, where the initial state still shows in the final one)."""
  assert default.get_config().grow.side_lstm_state == "zero"
  assert reference.get_config("lstm").grow.side_lstm_state == "old_top"
  oracle = _oracle("lstm_side")
  theirs = float(oracle["loss_total"][0])
  rel = lambda ours: abs(ours - theirs) / theirs
  assert rel(_first_step_new_block_loss(dict(oracle))) < 1e-6
  assert rel(_first_step_new_block_loss(dict(oracle), {"grow.side_lstm_state": "zero"})) > 1e-5


def test_unknown_side_lstm_state_is_a_config_error():
  config = reference.get_config("lstm")
  config.grow.side_split, config.grow.side_layers = "time:4", "lstm"
  config.grow.side_lstm_state = "last"
  with pytest.raises(ConfigError, match="side_lstm_state='last'"):
    models.create_model(config, 4)
