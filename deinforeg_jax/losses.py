"""Local losses of decoupled training, as pure ``jnp`` functions.

The DeInfoReg local loss (Huang, Lin & Chen, arXiv 2506.18193; written as in
the reference code, class ``DeInfoReg`` in ``utils/utils.py`` of
github.com/ianzih/Decoupled-Supervised-Learning-for-Information-Regularization)
acts on a block's projector output ``z`` of shape ``[B, D]``.  It is a
supervised variant of VICReg (Bardes et al., arXiv 2105.04906).  Every term is
computed on the L2-normalised rows ``ẑ_i = z_i / max(‖z_i‖, 1e-12)``:

* invariance  ``(1/B²) Σ_ij (S(ẑ)_ij − S(Y)_ij)²`` with ``S`` the row-correlation
  similarity matrix and ``Y`` the one-hot labels;
* variance    ``(1/B)·(1/D) Σ_d max(0, 1 − sqrt(Var_b(ẑ_·d) + 1e-7))`` (unbiased
  variance; the leading ``1/B`` is the reference code's and can be turned off);
* covariance  ``(1/D) Σ_{d≠d'} Cov_dd'²`` with ``Cov = Z_cᵀ Z_c / B``.

All reductions are over the whole array, so under ``jax.jit`` with the batch
sharded over a mesh the statistics cover the global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NORMALIZE_EPS = 1e-12
_SIMILARITY_EPS = 1e-8
_VARIANCE_EPS = 1e-7


def _row_norm(x: jax.Array) -> jax.Array:
  """``‖x_i‖₂`` as ``[B, 1]``, with gradient 0 (not NaN) at a zero row, as torch."""
  squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def l2_normalize(x: jax.Array, eps: float = _NORMALIZE_EPS) -> jax.Array:
  """Rows divided by ``max(‖x_i‖₂, eps)``.  ``x``: ``[B, D]`` -> ``[B, D]``."""
  return x / jnp.maximum(_row_norm(x), eps)


def similarity_matrix(x: jax.Array) -> jax.Array:
  """Pearson correlation between rows, clamped to ``[-1, 1]``.

  Each row is centred over its own features and divided by ``1e-8 + ‖·‖₂``;
  the result is the Gram matrix of those rows.  ``x``: ``[B, D]`` -> ``[B, B]``.
  """
  centred = x - jnp.mean(x, axis=-1, keepdims=True)
  unit = centred / (_SIMILARITY_EPS + _row_norm(centred))
  gram = jnp.matmul(unit, unit.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(gram, -1.0, 1.0)


def invariance_loss(z_hat: jax.Array, one_hot: jax.Array) -> jax.Array:
  """``mean_ij (S(ẑ)_ij − S(Y)_ij)²`` over all ``B²`` entries."""
  return jnp.mean(jnp.square(similarity_matrix(z_hat) - similarity_matrix(one_hot)))


def variance_loss(z_hat: jax.Array, batch_scaling: bool = True) -> jax.Array:
  """Hinge at 1 on the per-dimension std, averaged over dimensions.

  ``σ_d = sqrt(Var_b(ẑ_·d) + 1e-7)`` with the unbiased variance; the result is
  ``mean_d relu(1 − σ_d)``, divided by ``B`` when ``batch_scaling`` (reference).
  """
  batch = z_hat.shape[0]
  std = jnp.sqrt(jnp.var(z_hat, axis=0, ddof=1) + _VARIANCE_EPS)
  loss = jnp.mean(jax.nn.relu(1.0 - std))
  return loss / batch if batch_scaling else loss


def covariance_loss(z_hat: jax.Array) -> jax.Array:
  """``(1/D) Σ_{d≠d'} Cov_dd'²`` with the ``1/B`` batch covariance."""
  batch, dim = z_hat.shape
  centred = z_hat - jnp.mean(z_hat, axis=0, keepdims=True)
  cov = jnp.matmul(centred.T, centred, precision=jax.lax.Precision.HIGHEST) / batch
  off_diagonal = jnp.sum(jnp.square(cov)) - jnp.sum(jnp.square(jnp.diagonal(cov)))
  return off_diagonal / dim


def deinforeg_loss(
  z: jax.Array,
  labels: jax.Array,
  num_classes: int,
  *,
  weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
  variance_batch_scaling: bool = True,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The DeInfoReg information-regularisation loss of one block (arXiv 2506.18193).

  As the reference ``DeInfoReg.forward`` (which hard-codes the weights to 1).
  The block classifier's cross-entropy is not part of it.

  Args:
    z: ``[B, D]`` projector output (un-normalised).
    labels: ``[B]`` integer class ids in ``[0, num_classes)``.
    num_classes: ``C``, the width of the one-hot label matrix.
    weights: ``(w_inv, w_var, w_cov)``.
    variance_batch_scaling: keep the reference's extra ``1/B`` on the variance.

  Returns:
    ``(total, terms)``: ``total = w_inv·inv + w_var·var + w_cov·cov`` and the
    unweighted ``terms`` ``{"invariance", "variance", "covariance"}``.

  >>> labels = jnp.array([0, 1, 1, 2])
  >>> z = 3.0 * jax.nn.one_hot(labels, 3)  # reproduces the label similarity
  >>> total, terms = deinforeg_loss(z, labels, 3)
  >>> float(terms["invariance"]) < 1e-6
  True
  """
  z = z.astype(jnp.float32)
  z_hat = l2_normalize(z)
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=z.dtype)
  terms = {
    "invariance": invariance_loss(z_hat, one_hot),
    "variance": variance_loss(z_hat, variance_batch_scaling),
    "covariance": covariance_loss(z_hat),
  }
  w_inv, w_var, w_cov = weights
  total = w_inv * terms["invariance"] + w_var * terms["variance"] + w_cov * terms["covariance"]
  return total, terms


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy.  ``logits``: ``[B, C]``, ``labels``: ``[B]``."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  picked = jnp.take_along_axis(log_probs, labels[:, None].astype(jnp.int32), axis=-1)
  return -jnp.mean(picked)


def supervised_contrastive_loss(
  z: jax.Array, labels: jax.Array, temperature: float = 0.1
) -> jax.Array:
  """SCPL's supervised contrastive loss of one block (reference ``ContrastiveLoss``).

  SCPL: Ho, Wang, Lin & Chen, arXiv 2602.00062; SupCon: Khosla et al., arXiv 2004.11362.

  With ``ẑ`` the L2-normalised rows of ``z`` and ``s_ik = ẑ_i·ẑ_k / τ``::

      p_ij = s_ij − log Σ_{k≠i} exp(s_ik)
      L    = −(1/B) Σ_i (1/|P_i|) Σ_{j≠i, y_j=y_i} p_ij,   P_i = {j : y_j = y_i}

  ``|P_i|`` counts the anchor itself, as the reference does (SupCon does not).
  Args: ``z`` ``[B, D]``, ``labels`` ``[B]`` ints, ``temperature`` ``τ``.

  >>> z = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
  >>> float(supervised_contrastive_loss(z, jnp.array([0, 0, 1, 1]), 0.1)) < 0.01
  True
  """
  z_hat = l2_normalize(z.astype(jnp.float32))
  batch = z_hat.shape[0]
  logits = jnp.matmul(z_hat, z_hat.T, precision=jax.lax.Precision.HIGHEST) / temperature
  others = ~jnp.eye(batch, dtype=bool)
  log_denominator = jax.nn.logsumexp(jnp.where(others, logits, -jnp.inf), axis=1, keepdims=True)
  log_prob = logits - log_denominator
  same = labels[:, None] == labels[None, :]
  positives = jnp.sum(jnp.where(same & others, log_prob, 0.0), axis=1)
  return -jnp.mean(positives / jnp.sum(same, axis=1))


def mean_squared_error(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """``mean((prediction − target)²)`` over every element (``nn.MSELoss``)."""
  return jnp.mean(jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32)))


def associated_learning_loss(
  bridge: jax.Array, target: jax.Array, decoded: jax.Array, previous_target: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """One associated-learning block's loss (reference ``ALComponent``).

  AL: Kao & Chen, Neural Computation 33(1), 2021, arXiv 1906.05560.

  ``L = MSE(b(s), sg(t)) + MSE(inv(t), sg(t_prev))``: the bridge ``b`` maps the
  input-side feature ``s`` onto the label-side code ``t = g(t_prev)`` (which the
  bridge term does not move), and the decoder ``inv`` reconstructs ``t_prev``
  (the one-hot labels for the first block) from ``t``.

  Args:
    bridge: ``[B, H]`` bridge output ``b(s)``.
    target: ``[B, H]`` label-side code ``t``.
    decoded: ``[B, H_prev]`` decoder output ``inv(t)``.
    previous_target: ``[B, H_prev]`` the label-side input ``t_prev``.

  Returns:
    ``(total, {"bridge", "reconstruction"})``.
  """
  terms = {
    "bridge": mean_squared_error(bridge, jax.lax.stop_gradient(target)),
    "reconstruction": mean_squared_error(decoded, jax.lax.stop_gradient(previous_target)),
  }
  return terms["bridge"] + terms["reconstruction"], terms
