"""Skipping inference (``inference.make_skipping_predict``) against the counted full-depth rule."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from deinforeg_jax import inference, models, stack
from helpers import DIGITS_SHAPE, NUM_CLASSES, init_variables, random_batch, tiny_config

# (patience, cosine threshold) pairs; with τ = -1 only the argmax must agree.
RULES = [(1, -1.0), (1, 0.0), (1, 0.5), (2, -1.0), (2, 0.3)]


def _model(rule="deinforeg"):
  model = models.create_model(tiny_config(rule=rule), NUM_CLASSES)
  return model, init_variables(model, DIGITS_SHAPE)


def _lean(variables, strength):
  """Every classifier's output bias pushed by ``strength`` towards class 0, so exits agree more."""
  params = {name: dict(block) for name, block in variables["params"].items()}
  for block in params.values():
    dense = block["classifier"]["Dense_0"]
    dense = {**dense, "bias": dense["bias"] + strength * np.eye(NUM_CLASSES)[0]}
    block["classifier"] = {**block["classifier"], "Dense_0": dense}
  return {**variables, "params": params}


def _predictors(model, method):
  """The counted and the skipping predictor of every (mode, reset), built once per test so
  that each is traced and compiled once."""
  return {
    (mode, reset): (
      inference.make_predict(model, mode=mode, reset=reset),
      inference.make_skipping_predict(model, mode=mode, reset=reset, method=method),
    )
    for mode in inference.EXIT_MODES
    for reset in (True, False)
  }


def _compare(predictors, variables, x, mask, batch_size):
  """Runs both paths of every (mode, reset) over ``x`` in batches; returns the stop exits seen."""
  stops = []
  for (mode, _), (counted, skipping) in predictors.items():
    for patience, tau in RULES:
      for start in range(0, len(x), batch_size):
        xb, mb = x[start : start + batch_size], mask[start : start + batch_size]
        want = counted(variables, xb, mb, patience, tau)
        got = skipping(variables, xb, mb, patience, tau)
        real = np.asarray(mb) > 0
        for key in ("exit", "prediction"):
          np.testing.assert_array_equal(
            np.asarray(got[key])[real], np.asarray(want[key])[real], err_msg=f"{mode} {key}"
          )
        # The batch stops at its last real row's exit (an all-padding batch at the first test).
        last_exit = int(np.max(np.asarray(want["exit"])[real])) if real.any() else 1
        assert int(got["stop_exit"]) == last_exit
        stops.append(int(got["stop_exit"]))
  return stops


@pytest.mark.parametrize("method", inference.SKIP_METHODS)
@pytest.mark.parametrize("batch_size", [1, 8])
def test_skipping_equals_the_counted_rule(method, batch_size):
  """Per-batch (8 rows, the last two padding) and batch-1 inference: same exits and predictions.
  Batch 1 runs the second batch's rows (6 real, 2 padding): one call per row and rule."""
  model, variables = _model()
  x = jnp.asarray(random_batch(16, seed=1)["image"])
  mask = jnp.asarray(np.r_[np.ones(14), np.zeros(2)], jnp.float32)
  if batch_size == 1:
    x, mask = x[8:], mask[8:]
  predictors, stops = _predictors(model, method), []
  for strength in (0.0, 1.0, 3.0):
    stops += _compare(predictors, _lean(variables, strength), x, mask, batch_size)
  assert min(stops) < 3 and max(stops) == 3  # batches stopped early and at full depth


@pytest.mark.parametrize("method", inference.SKIP_METHODS)
def test_block_without_classifier_runs_with_the_next_exit(method):
  """block_00 without classifier (as a text stack's embedding block): exits are blocks 1..3."""
  model, variables = _model()
  first = dataclasses.replace(model.blocks[0], has_classifier=False)
  model = stack.DecoupledStack((first, *model.blocks[1:]), NUM_CLASSES)
  variables = {c: dict(tree) for c, tree in variables.items()}
  for tree in variables.values():
    tree["block_00"] = {k: v for k, v in tree["block_00"].items() if k != "classifier"}
  x = jnp.asarray(random_batch(6, seed=2)["image"])
  stops = _compare(_predictors(model, method), variables, x, jnp.ones(6), 1)
  assert max(stops) == 2


def test_other_models_are_refused():
  model, _ = _model(rule="bp")
  with pytest.raises(ValueError, match="BackpropNet"):
    inference.make_skipping_predict(model)
  with pytest.raises(ValueError, match="method='loop'"):
    inference.make_skipping_predict(_model()[0], method="loop")
