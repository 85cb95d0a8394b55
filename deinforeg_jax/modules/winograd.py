"""3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3), built from matmuls.

XLA:CPU's direct convolution reaches about 0.4 of the machine's matmul rate here, while
its batched ``dot`` runs near peak.  F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016) computes each 2x2 output tile from a 4x4
input tile ``d`` as

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A

so that, summed over input channels, the convolution becomes 16 independent matmuls
``[tiles, C] @ [C, O]`` with 2.25x fewer multiplications than the direct form; the
transforms ``B``, ``G``, ``A`` hold only 0, ±1 and ±1/2, so they are exact in floating
point and only the summation order differs from ``lax.conv_general_dilated`` (fp32
rounding).  Every step is linear, so ``jax.grad`` turns the backward pass into matmuls
and transforms as well.

``conv_general_dilated`` has ``lax.conv_general_dilated``'s signature, for
``flax.linen.Conv(conv_general_dilated=...)``: it takes the Winograd path for a
stride-1, zero-padded ("SAME") 3x3 NHWC convolution with at least
``MIN_CHANNELS`` input channels and ``MIN_SIZE`` pixels a side, and falls back to XLA's
convolution otherwise.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The F(2x2, 3x3) transforms: input B^T [4, 4], filter G [4, 3], output A^T [2, 4].
B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float32)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float32)

# Below this many input channels the transforms' memory traffic outweighs the multiplications
# saved.  Forward + backward of one layer, batch 128 (64 at 16x16), 2-core CPU, Winograd over
# XLA's convolution speed: 64 channels at 32x32 0.89x; 128 at 32x32 0.98x; 256 at 16x16
# 1.33x; 512 at 8x8 1.50x.
MIN_CHANNELS = 128
# Below 4x4 pixels most of every 4x4 input tile is padding.
MIN_SIZE = 4

_NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _combine(coefficients: np.ndarray, terms: Sequence[jax.Array]) -> jax.Array:
  """``sum_i coefficients[i] * terms[i]`` without multiplying by 0 or ±1."""
  total = None
  for coefficient, term in zip(coefficients, terms):
    if coefficient == 0:
      continue
    scaled = term if coefficient == 1 else -term if coefficient == -1 else coefficient * term
    total = scaled if total is None else total + scaled
  return total


def winograd_conv3x3(x: jax.Array, kernel: jax.Array, precision: Any = None) -> jax.Array:
  """Stride-1 3x3 convolution with zero padding 1: ``x [N, H, W, C]``, ``kernel [3, 3, C, O]``
  (HWIO) -> ``[N, H, W, O]``, equal to ``lax.conv_general_dilated(x, kernel, (1, 1),
  ((1, 1), (1, 1)))`` in NHWC/HWIO up to fp32 rounding.  Odd H or W are padded up to even."""
  n, h, w, c = x.shape
  o = kernel.shape[-1]
  th, tw = (h + 1) // 2, (w + 1) // 2  # output tiles per column and per row
  xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * th - h), (1, 1 + 2 * tw - w), (0, 0)))
  # d[a][b][n, i, j, c] = xp[n, 2i + a, 2j + b, c]: the (a, b) entry of every 4x4 input tile.
  d = [[xp[:, a : a + 2 * th : 2, b : b + 2 * tw : 2, :] for b in range(4)] for a in range(4)]
  rows = [[_combine(B_T[k], [d[a][b] for a in range(4)]) for b in range(4)] for k in range(4)]
  v = jnp.stack([_combine(B_T[l], rows[k]) for k in range(4) for l in range(4)])  # (B^T d B)_kl
  u = jnp.einsum("ka,abco,lb->klco", G, kernel, G).reshape(16, c, o)  # (G g G^T)_kl
  m = lax.dot_general(
    v.reshape(16, n * th * tw, c), u, (((2,), (1,)), ((0,), (0,))), precision=precision
  ).reshape(4, 4, n, th, tw, o)
  cols = [[_combine(A_T[p], [m[k, l] for k in range(4)]) for l in range(4)] for p in range(2)]
  y = jnp.stack([jnp.stack([_combine(A_T[q], cols[p]) for q in range(2)]) for p in range(2)])
  # y[p, q, n, i, j, o] is output pixel (2i + p, 2j + q).
  y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, o)
  return y[:, :h, :w, :]


def _applies(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> bool:
  """Whether a ``conv_general_dilated`` call is a stride-1 SAME 3x3 NHWC/HWIO convolution
  with at least ``MIN_CHANNELS`` input channels on at least ``MIN_SIZE`` x ``MIN_SIZE`` pixels."""
  return (
    lhs.ndim == 4
    and min(lhs.shape[1:3]) >= MIN_SIZE
    and tuple(rhs.shape[:2]) == (3, 3)
    and rhs.shape[2] >= MIN_CHANNELS
    and tuple(window_strides) == (1, 1)
    and not isinstance(padding, str)
    and [tuple(p) for p in padding] == [(1, 1), (1, 1)]
    and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
    and (rhs_dilation is None or tuple(rhs_dilation) == (1, 1))
    and groups == 1
    and dimension_numbers == _NHWC_HWIO
  )


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
  **kwargs,
):
  """``lax.conv_general_dilated``, by ``winograd_conv3x3`` where that applies (see module doc)."""
  if not kwargs and _applies(
    lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count
  ):
    return winograd_conv3x3(lhs, rhs, precision)
  return lax.conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    precision=precision,
    **kwargs,
  )
