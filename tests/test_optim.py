"""Tests of ``deinforeg_jax.optim``: LARS, SGD and the learning-rate schedules.

* LARS follows the reference update order under a varying learning rate (reference
  ``utils/utils.py`` ``LARS``), skips decay and trust ratio for vectors, and its trust ratio
  equals optax's.
* SGD is PyTorch's ``torch.optim.SGD`` (no dampening, no Nesterov, no weight decay)::

    μ ← momentum·μ + g
    w ← w − lr·μ

* The cosine schedules hit their endpoints; ``make_schedule`` and ``make_optimizer`` follow the
  config.
"""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import tiny_config

from deinforeg_jax import optim


# ------------------------------------------------- SGD


def _optim_config(name: str = "sgd", momentum: float = 0.9) -> ml_collections.ConfigDict:
  """The ``config.optim`` fields ``make_optimizer`` reads (weight decay set, to be ignored)."""
  return ml_collections.ConfigDict(
    {"name": name, "momentum": momentum, "weight_decay": 0.5, "eta": 1e-3}
  )


def _params_and_grads():
  """A matrix and a vector (LARS would treat them differently; SGD must not)."""
  params = {
    "kernel": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32),
    "bias": np.array([0.25, -1.0], np.float32),
  }
  grads = [
    {
      "kernel": np.array([[0.1, 0.2], [-0.3, 0.4]], np.float32),
      "bias": np.array([1.0, -0.5], np.float32),
    },
    {
      "kernel": np.array([[-0.2, 0.0], [0.6, 0.1]], np.float32),
      "bias": np.array([0.5, 0.5], np.float32),
    },
  ]
  return params, grads


def _numpy_sgd(params, grads_per_step, lrs, momentum):
  """The update above, written out in float64."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  for grads, lr in zip(grads_per_step, lrs):
    for k in params:
      mu[k] = momentum * mu[k] + np.array(grads[k], np.float64)
      params[k] = params[k] - lr * mu[k]
  return params


def _run(tx, params, grads_per_step):
  state, current = tx.init(params), params
  for grads in grads_per_step:
    updates, state = tx.update(grads, state, current)
    current = optax.apply_updates(current, updates)
  return current


def test_sgd_with_momentum_matches_numpy_for_two_steps_under_a_varying_lr():
  params, grads = _params_and_grads()
  lrs = np.array([0.5, 0.1], np.float32)
  tx = optim.make_optimizer(_optim_config(momentum=0.9), lambda count: jnp.asarray(lrs)[count])
  result = _run(tx, params, grads)
  expected = _numpy_sgd(params, grads, lrs, momentum=0.9)
  for k in params:
    np.testing.assert_allclose(result[k], expected[k], rtol=1e-6, atol=1e-7, err_msg=k)
  # By hand for kernel[0, 0]: μ1 = 0.1, w1 = 1 − 0.5·0.1 = 0.95;
  # μ2 = 0.9·0.1 − 0.2 = −0.11, w2 = 0.95 − 0.1·(−0.11) = 0.961.
  np.testing.assert_allclose(result["kernel"][0, 0], 0.961, rtol=1e-6)
  # The learning rate scales the trace (PyTorch order), not each gradient before it,
  # which would give w2 = 0.95 − (0.9·0.05 + 0.1·(−0.2)) = 0.925.


def test_sgd_without_momentum_is_plain_gradient_descent():
  params, grads = _params_and_grads()
  tx = optim.make_optimizer(_optim_config(momentum=0.0), optax.constant_schedule(0.2))
  result = _run(tx, params, grads)
  for k in params:
    expected = params[k] - 0.2 * (grads[0][k] + grads[1][k])
    np.testing.assert_allclose(result[k], expected, rtol=1e-6, atol=1e-7, err_msg=k)
  # No momentum buffer is kept.
  state = tx.init(params)
  assert not any(isinstance(s, optax.TraceState) for s in state)


def test_sgd_ignores_the_configured_weight_decay():
  """A zero gradient leaves matrices and vectors where they are (LARS would decay the matrix)."""
  params, _ = _params_and_grads()
  zeros = {k: np.zeros_like(v) for k, v in params.items()}
  tx = optim.make_optimizer(_optim_config(), optax.constant_schedule(0.2))
  result = _run(tx, params, [zeros, zeros])
  for k in params:
    np.testing.assert_array_equal(result[k], params[k])


# ------------------------------------------------- LARS and schedules


def _reference_lars(params, grads_per_step, lrs, *, wd, momentum, eta):
  """NumPy transcription of the reference LARS: g += wd·w; g *= eta·‖w‖/‖g‖; μ = m·μ + g; w -= lr·μ,
  the first two skipped for 1-D parameters."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  mu = {k: np.zeros_like(v) for k, v in params.items()}
  for grads, lr in zip(grads_per_step, lrs):
    for k, w in params.items():
      g = np.array(grads[k], np.float64)
      if w.ndim > 1:
        g = g + wd * w
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        if w_norm > 0 and g_norm > 0:
          g = g * (eta * w_norm / g_norm)
      mu[k] = momentum * mu[k] + g
      params[k] = w - lr * mu[k]
  return params


@pytest.mark.parametrize("wd,momentum,eta", [(1e-4, 0.9, 1e-3), (0.05, 0.5, 0.3)])
def test_lars_matches_reference_under_a_varying_learning_rate(wd, momentum, eta):
  rng = np.random.default_rng(0)
  params = {
    "kernel": rng.normal(size=(5, 3)).astype(np.float32),
    "bias": rng.normal(size=(3,)).astype(np.float32),
  }
  grads_per_step = [
    {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(3)
  ]
  lrs = np.array([0.5, 0.2, 0.05], np.float32)
  tx = optim.lars(
    lambda count: jnp.asarray(lrs)[count], weight_decay=wd, momentum=momentum, eta=eta
  )
  update = jax.jit(tx.update)
  state, current = tx.init(params), params
  for grads in grads_per_step:
    updates, state = update(grads, state, current)
    current = optax.apply_updates(current, updates)

  expected = _reference_lars(params, grads_per_step, lrs, wd=wd, momentum=momentum, eta=eta)
  for k in params:
    np.testing.assert_allclose(current[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)

  # The check can tell the orders apart: optax.lars scales by the LR *before* the
  # momentum trace, which differs under a varying learning rate.
  other = optax.lars(
    lambda count: jnp.asarray(lrs)[count],
    weight_decay=wd,
    weight_decay_mask=optim.matrix_mask,
    trust_coefficient=eta,
    trust_ratio_mask=optim.matrix_mask,
    momentum=momentum,
  )
  state, lr_first = other.init(params), params
  for grads in grads_per_step:
    updates, state = other.update(grads, state, lr_first)
    lr_first = optax.apply_updates(lr_first, updates)
  assert not np.allclose(lr_first["kernel"], expected["kernel"], rtol=1e-5, atol=1e-6)


def test_lars_skips_decay_and_trust_ratio_for_vectors():
  """A 1-D parameter gets plain momentum SGD; a 2-D one with zero gradient still
  decays (wd·w), scaled to eta·‖w‖ by the trust ratio."""
  tx = optim.lars(0.1, weight_decay=1e-2, momentum=0.9, eta=1e-3)
  params = {"bias": np.array([1.0, -2.0], np.float32), "kernel": np.ones((2, 2), np.float32)}
  grads = {"bias": np.array([0.5, 0.25], np.float32), "kernel": np.zeros((2, 2), np.float32)}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["bias"], -0.1 * grads["bias"], rtol=1e-6)
  # g = wd·w = 0.01·1, ‖w‖ = 2, ‖g‖ = 0.02 -> g·eta·‖w‖/‖g‖ = 0.001 per entry.
  np.testing.assert_allclose(updates["kernel"], np.full((2, 2), -0.1 * 1e-3), rtol=1e-5)


@pytest.mark.pins_implementation
def test_trust_ratio_equals_optax_and_reduces_each_norm_once():
  """``optim.scale_by_trust_ratio`` gives ``optax.scale_by_trust_ratio``'s updates bit for bit
  (zero parameters and zero updates included) with two reductions per leaf instead of four
  (optax's ``safe_norm`` reduces a masked copy of each array again)."""
  rng = np.random.default_rng(0)
  params = {
    "w": rng.normal(size=(6, 4)).astype(np.float32),
    "zero_w": np.zeros((3, 2), np.float32),
    "zero_u": rng.normal(size=(2, 5)).astype(np.float32),
  }
  updates = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
  updates["zero_u"] = np.zeros_like(updates["zero_u"])
  ours, theirs = optim.scale_by_trust_ratio(0.3), optax.scale_by_trust_ratio(trust_coefficient=0.3)
  ours_update = jax.jit(lambda u, p: ours.update(u, ours.init(p), p)[0])
  theirs_update = jax.jit(lambda u, p: theirs.update(u, theirs.init(p), p)[0])
  got, want = ours_update(updates, params), theirs_update(updates, params)
  for k in params:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  np.testing.assert_array_equal(got["zero_w"], updates["zero_w"])  # ratio 1 where a norm is 0
  one = ({"w": updates["w"]}, {"w": params["w"]})
  compiled = lambda f: f.lower(*one).compile().as_text()  # noqa: E731
  reductions = lambda f: len(re.findall(r"= f32\[\] reduce\(", compiled(f)))  # noqa: E731
  assert (reductions(ours_update), reductions(theirs_update)) == (2, 4)


def test_cosine_schedule_endpoints_and_midpoint():
  schedule = optim.cosine_schedule(0.2, 0.002, total_steps=100)
  np.testing.assert_allclose(schedule(0), 0.2, rtol=1e-6)
  np.testing.assert_allclose(schedule(50), (0.2 + 0.002) / 2, rtol=1e-6)
  np.testing.assert_allclose(schedule(100), 0.002, rtol=1e-5)
  np.testing.assert_allclose(schedule(25), 0.002 + 0.198 * 0.5 * (1 + np.cos(np.pi / 4)), rtol=1e-6)
  values = np.array([schedule(t) for t in range(101)])
  assert np.all(np.diff(values) < 0)  # strictly decreasing step by step


def test_per_epoch_cosine_schedule_is_piecewise_constant():
  steps_per_epoch, epochs = 5, 4
  total = steps_per_epoch * epochs
  smooth = optim.cosine_schedule(0.2, 0.002, total)
  stepped = optim.cosine_schedule(0.2, 0.002, total, steps_per_epoch=steps_per_epoch)
  values = np.array([stepped(t) for t in range(total)]).reshape(epochs, steps_per_epoch)
  # Constant within an epoch, equal to the smooth schedule at the epoch's first step.
  np.testing.assert_array_equal(values, np.repeat(values[:, :1], steps_per_epoch, axis=1))
  np.testing.assert_allclose(
    values[:, 0], [smooth(e * steps_per_epoch) for e in range(epochs)], rtol=1e-6
  )
  assert np.all(np.diff(values[:, 0]) < 0)
  np.testing.assert_allclose(values[0, 0], 0.2, rtol=1e-6)


def test_make_schedule_and_optimizer_follow_the_config():
  config = tiny_config().optim
  config.schedule_per_epoch = True
  schedule = optim.make_schedule(config, total_steps=20, steps_per_epoch=5)
  assert float(schedule(3)) == float(schedule(0)) == pytest.approx(0.2)
  assert float(schedule(5)) < float(schedule(4))
  config.schedule = "constant"
  constant = optim.make_schedule(config, total_steps=20, steps_per_epoch=5)
  assert float(constant(0)) == float(constant(19)) == pytest.approx(0.2)
  # make_optimizer("lars") is optim.lars with the config's hyper-parameters.
  params = {"w": np.ones((3, 2), np.float32), "b": np.ones((2,), np.float32)}
  grads = {"w": np.full((3, 2), 0.3, np.float32), "b": np.full((2,), 0.3, np.float32)}
  built = optim.make_optimizer(config, constant)
  direct = optim.lars(
    0.2, weight_decay=config.weight_decay, momentum=config.momentum, eta=config.eta
  )
  chex.assert_trees_all_close(
    built.update(grads, built.init(params), params)[0],
    direct.update(grads, direct.init(params), params)[0],
    rtol=1e-6,
  )
