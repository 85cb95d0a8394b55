"""Independent float64 NumPy reference for the DeInfoReg local loss (arXiv 2506.18193).

The loss is that of the reference code's ``DeInfoReg.forward`` (with its helpers
``similarity_matrix`` and ``off_diagonal``, ``utils/utils.py`` of
github.com/ianzih/Decoupled-Supervised-Learning-for-Information-Regularization), written
out again from the formulas below, with explicit loops where that makes them easier to
check by eye. Speed is irrelevant here. This module must not import ``deinforeg_jax``:
it is the yardstick the JAX implementation is tested against.

The loss, in short (z is the B x D projector output, y the labels, C classes):

* norm zhat_i = z_i / max(||z_i||_2, 1e-12)                    (all three terms use zhat)
* inv  S(A): centre each row over its features, divide by (1e-8 + ||row||_2),
       Gram matrix, clamp to [-1, 1].
       L_inv = (1 / B^2) * sum_{i,j} (S(zhat)_ij - S(onehot(y))_ij)^2
* var  sigma_d = sqrt(unbiased Var_b(zhat[:, d]) + 1e-7)
       L_var = (1 / B) * (1 / D) * sum_d max(0, 1 - sigma_d)   (the 1/B factor is optional)
* cov  Zc = zhat - mean_b(zhat);  Cov = Zc^T Zc / B
       L_cov = (1 / D) * sum_{d != d'} Cov_{dd'}^2
* sum  L = w_inv * L_inv + w_var * L_var + w_cov * L_cov  (the reference: all weights 1)
"""

from __future__ import annotations

import numpy as np

NORMALIZE_EPS = 1e-12  # F.normalize's default
SIM_EPS = 1e-8  # the reference's similarity_matrix
VAR_EPS = 1e-7  # inside the reference's std


def ref_l2_normalize(x, eps: float = NORMALIZE_EPS) -> np.ndarray:
  """Divide each row by max(its L2 norm, eps)."""
  x = np.asarray(x, dtype=np.float64)
  out = np.empty_like(x)
  for i in range(x.shape[0]):
    norm = np.sqrt(np.sum(x[i] ** 2))
    out[i] = x[i] / max(norm, eps)
  return out


def ref_similarity_matrix(a) -> np.ndarray:
  """Row-centred, row-normalised Gram matrix clamped to [-1, 1] (B x B)."""
  a = np.asarray(a, dtype=np.float64)
  b = a.shape[0]
  rows = []
  for i in range(b):
    centred = a[i] - np.mean(a[i])
    rows.append(centred / (SIM_EPS + np.sqrt(np.sum(centred**2))))
  s = np.empty((b, b), dtype=np.float64)
  for i in range(b):
    for j in range(b):
      s[i, j] = np.sum(rows[i] * rows[j])
  return np.clip(s, -1.0, 1.0)


def ref_one_hot(labels, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  out = np.zeros((labels.shape[0], num_classes), dtype=np.float64)
  for i, c in enumerate(labels):
    out[i, int(c)] = 1.0
  return out


def ref_invariance(z, labels, num_classes: int) -> float:
  zhat = ref_l2_normalize(z)
  s_z = ref_similarity_matrix(zhat)
  s_y = ref_similarity_matrix(ref_one_hot(labels, num_classes))
  b = zhat.shape[0]
  total = 0.0
  for i in range(b):
    for j in range(b):
      total += (s_z[i, j] - s_y[i, j]) ** 2
  return total / (b * b)


def ref_variance(z, batch_scaling: bool = True) -> float:
  zhat = ref_l2_normalize(z)
  b, d = zhat.shape
  total = 0.0
  for k in range(d):
    col = zhat[:, k]
    var_unbiased = np.sum((col - np.mean(col)) ** 2) / (b - 1)
    sigma = np.sqrt(var_unbiased + VAR_EPS)
    total += max(0.0, 1.0 - sigma)
  loss = total / d
  if batch_scaling:
    loss /= b
  return loss


def ref_covariance(z) -> float:
  zhat = ref_l2_normalize(z)
  b, d = zhat.shape
  zc = zhat - np.mean(zhat, axis=0, keepdims=True)
  cov = np.zeros((d, d), dtype=np.float64)
  for i in range(b):
    cov += np.outer(zc[i], zc[i])
  cov /= b
  total = 0.0
  for p in range(d):
    for q in range(d):
      if p != q:
        total += cov[p, q] ** 2
  return total / d


def ref_deinforeg_loss(
  z, labels, num_classes: int, weights=(1.0, 1.0, 1.0), variance_batch_scaling: bool = True
):
  """Weighted sum of the three terms.

  Returns (total, {"invariance", "variance", "covariance"}) as Python floats.
  """
  inv = ref_invariance(z, labels, num_classes)
  var = ref_variance(z, variance_batch_scaling)
  cov = ref_covariance(z)
  w_inv, w_var, w_cov = weights
  total = w_inv * inv + w_var * var + w_cov * cov
  return total, {"invariance": inv, "variance": var, "covariance": cov}
