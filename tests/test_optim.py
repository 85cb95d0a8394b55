"""Tests of the ``sgd`` choice of ``deinforeg_jax.optim.make_optimizer``.

LARS and the schedules are tested in ``test_train.py``.  SGD is PyTorch's
``torch.optim.SGD`` (no dampening, no Nesterov, no weight decay)::

    μ ← momentum·μ + g
    w ← w − lr·μ
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from deinforeg_jax import optim


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
