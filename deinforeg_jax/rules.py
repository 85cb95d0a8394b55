"""Training rules behind one interface: ``objective(outputs, labels, num_classes, loss_cfg)``.

A rule turns the model's outputs into the scalar that one ``jax.value_and_grad``
differentiates, and per-exit metrics.  Because the stack cuts gradients at
block boundaries, the DeInfoReg sum ``Σ_k L_k`` trains every block only by its
own ``L_k = L_InfoReg(z_k, y) + ce_weight · CE(ŷ_k, y)`` (arXiv 2506.18193).

Metrics are arrays of shape ``[num_exits]`` (one entry per block classifier;
one entry for ``bp``).  ``scpl`` adds its per-block ``contrastive`` losses
(``[num_blocks]``; its one exit is the final head); ``al``'s blocks are its exits.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from deinforeg_jax import losses
from deinforeg_jax.config_error import ConfigError

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def deinforeg_objective(
  outputs, labels, num_classes: int, loss_cfg
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """``Σ_k [w·(inv, var, cov)(z_k) + ce_weight · CE(logits_k)]`` with per-block terms.

  Each ``outputs["extra_z"]`` entry (a block without classifier: the text
  embedding block) adds its ``w·(inv, var, cov)`` with no CE; those terms are
  reported as scalars ``embedding_loss``, ``embedding_invariance``, ... (summed
  when there are several).

  ``loss_cfg`` is ``config.loss``: ``invariance_weight``, ``variance_weight``,
  ``covariance_weight``, ``ce_weight``, ``variance_batch_scaling``.
  """
  weights = (loss_cfg.invariance_weight, loss_cfg.variance_weight, loss_cfg.covariance_weight)

  def info_reg(z):
    return losses.deinforeg_loss(
      z,
      labels,
      num_classes,
      weights=weights,
      variance_batch_scaling=loss_cfg.variance_batch_scaling,
    )

  per_block = {
    "loss": [],
    "invariance": [],
    "variance": [],
    "covariance": [],
    "ce": [],
    "accuracy": [],
  }
  for z, logits in zip(outputs["z"], outputs["logits"]):
    info, terms = info_reg(z)
    ce = losses.cross_entropy(logits, labels)
    per_block["loss"].append(info + loss_cfg.ce_weight * ce)
    per_block["ce"].append(ce)
    per_block["accuracy"].append(_accuracy(logits, labels))
    for name, value in terms.items():
      per_block[name].append(value)
  metrics = {name: jnp.stack(values) for name, values in per_block.items()}
  total = jnp.sum(metrics["loss"])
  # Blocks without a classifier (the text embedding block): L_InfoReg only, no CE.
  for z in outputs.get("extra_z", ()):
    info, terms = info_reg(z)
    total = total + info
    metrics["embedding_loss"] = metrics.get("embedding_loss", 0.0) + info
    for name, value in terms.items():
      metrics[f"embedding_{name}"] = metrics.get(f"embedding_{name}", 0.0) + value
  return total, metrics


def bp_objective(
  outputs, labels, num_classes: int, loss_cfg
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """End-to-end cross-entropy of the single BP head."""
  del num_classes, loss_cfg
  (logits,) = outputs["logits"]
  ce = losses.cross_entropy(logits, labels)
  metrics = {"loss": ce[None], "ce": ce[None], "accuracy": _accuracy(logits, labels)[None]}
  return ce, metrics


def scpl_objective(
  outputs, labels, num_classes: int, loss_cfg
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SCPL: ``Σ_k SupCon_τ(c_k, y) + CE(final head)`` (supervised contrastive parallel learning).

  ``outputs["contrastive"]`` holds the per-block contrastive embeddings; the
  stack cuts the gradient between blocks and before the final head, so each
  term trains only its own block (or the head).  ``τ`` is
  ``loss_cfg.contrastive_temperature``.  Metrics: ``loss``, ``ce``, ``accuracy``
  per exit (the final head: shape ``[1]``) and ``contrastive`` per block (``[K]``).
  """
  del num_classes
  contrastive = jnp.stack(
    [
      losses.supervised_contrastive_loss(c, labels, loss_cfg.contrastive_temperature)
      for c in outputs["contrastive"]
    ]
  )
  (logits,) = outputs["logits"]
  ce = losses.cross_entropy(logits, labels)
  total = jnp.sum(contrastive) + ce
  metrics = {
    "loss": total[None],
    "ce": ce[None],
    "accuracy": _accuracy(logits, labels)[None],
    "contrastive": contrastive,
  }
  return total, metrics


def al_objective(
  outputs, labels, num_classes: int, loss_cfg
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Associated learning: ``Σ_k MSE(b_k(s_k), sg(t_k)) + MSE(inv_k(t_k), t_{k-1})`` (Kao & Chen, arXiv 1906.05560).

  The stack gives the label side per class (``[C, ·]``); the rows of ``labels``
  turn it into the per-sample codes.  Every metric has one entry per block,
  which is also one exit.
  """
  del num_classes, loss_cfg
  per_block = {"loss": [], "bridge": [], "reconstruction": [], "accuracy": []}
  for bridge, code, decoded, previous, logits in zip(
    outputs["al_bridge"],
    outputs["al_code"],
    outputs["al_decoded"],
    outputs["al_previous"],
    outputs["logits"],
  ):
    total, terms = losses.associated_learning_loss(
      bridge, code[labels], decoded[labels], previous[labels]
    )
    per_block["loss"].append(total)
    per_block["accuracy"].append(_accuracy(logits, labels))
    for name, value in terms.items():
      per_block[name].append(value)
  metrics = {name: jnp.stack(values) for name, values in per_block.items()}
  return jnp.sum(metrics["loss"]), metrics


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


RULES: dict[str, Objective] = {
  "deinforeg": deinforeg_objective,
  "bp": bp_objective,
  "scpl": scpl_objective,
  "al": al_objective,
}


def get_objective(rule: str) -> Objective:
  """The objective of ``config.rule``; a clear error for an unknown rule."""
  if rule not in RULES:
    raise ConfigError(f"config.rule={rule!r} is unknown; choose one of {sorted(RULES)}.")
  return RULES[rule]
