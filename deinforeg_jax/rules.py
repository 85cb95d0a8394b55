"""Training rules behind one interface: ``objective(outputs, labels, num_classes, loss_cfg)``.

A rule turns the model's outputs into the scalar that one ``jax.value_and_grad``
differentiates, and per-exit metrics.  Because the stack cuts gradients at
block boundaries, the DeInfoReg sum ``Σ_k L_k`` trains every block only by its
own ``L_k = L_InfoReg(z_k, y) + ce_weight · CE(ŷ_k, y)`` (SPEC 2.1).

Metrics are arrays of shape ``[num_exits]`` (one entry per block classifier;
one entry for ``bp``).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from deinforeg_jax import losses

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def deinforeg_objective(
  outputs, labels, num_classes: int, loss_cfg
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``Σ_k [w·(inv, var, cov)(z_k) + ce_weight · CE(logits_k)]`` with per-block terms.

  ``loss_cfg`` is ``config.loss``: ``invariance_weight``, ``variance_weight``,
  ``covariance_weight``, ``ce_weight``, ``variance_batch_scaling``.
  """
  weights = (loss_cfg.invariance_weight, loss_cfg.variance_weight, loss_cfg.covariance_weight)
  per_block = {
    "loss": [],
    "invariance": [],
    "variance": [],
    "covariance": [],
    "ce": [],
    "accuracy": [],
  }
  for z, logits in zip(outputs["z"], outputs["logits"]):
    info, terms = losses.deinforeg_loss(
      z,
      labels,
      num_classes,
      weights=weights,
      variance_batch_scaling=loss_cfg.variance_batch_scaling,
    )
    ce = losses.cross_entropy(logits, labels)
    per_block["loss"].append(info + loss_cfg.ce_weight * ce)
    per_block["ce"].append(ce)
    per_block["accuracy"].append(_accuracy(logits, labels))
    for name, value in terms.items():
      per_block[name].append(value)
  metrics = {name: jnp.stack(values) for name, values in per_block.items()}
  return jnp.sum(metrics["loss"]), metrics


def bp_objective(
  outputs, labels, num_classes: int, loss_cfg
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """End-to-end cross-entropy of the single BP head."""
  del num_classes, loss_cfg
  (logits,) = outputs["logits"]
  ce = losses.cross_entropy(logits, labels)
  metrics = {"loss": ce[None], "ce": ce[None], "accuracy": _accuracy(logits, labels)[None]}
  return ce, metrics


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


RULES: dict[str, Objective] = {
  "deinforeg": deinforeg_objective,
  "bp": bp_objective,
}


def get_objective(rule: str) -> Objective:
  """The objective of ``config.rule``; a clear error for an unknown rule."""
  if rule not in RULES:
    raise ValueError(f"config.rule={rule!r} is unknown; choose one of {sorted(RULES)}.")
  return RULES[rule]
