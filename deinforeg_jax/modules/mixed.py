"""Mixed-precision layer products: bf16 products, float32 parameter gradients.

A Flax layer with ``dtype=bfloat16`` casts its float32 kernel ``W`` to bf16 before the matmul
or convolution.  JAX transposes that product into a gradient of the bf16 cast, so ``dW`` is
summed in float32 but returned rounded to bf16 (8 significant bits) and only then widened; under
data parallelism XLA all-reduces it in bf16.  ``float32_weight_gradient`` makes a product
``y = op(x, W)`` (``x`` bf16, ``W`` float32; ``op`` linear in each: ``dot_general``, a
convolution, an einsum) a ``jax.custom_vjp`` whose weight gradient is float32 throughout::

  forward   y  = op(x, bf16(W))                 bf16 operands, float32 sums, bf16 result
  backward  dx = (d/dx op(x, bf16(W)))^T g      bf16, as Flax's
            dW = (d/dW op(f32(x), W))^T f32(g)  float32

``f32(x)`` and ``f32(g)`` hold bf16 values exactly, so each product in ``dW`` is exact (8 x 8
significant bits fit in float32's 24) and only the float32 sum rounds.  The matmuls (``einsum``,
``dot_general``) and the vision stacks' convolutions compute that ``dW`` as one bf16 x bf16
einsum or convolution with float32 results (``preferred_element_type``), without widened copies;
other convolutions (Winograd's, dilated, grouped) through the widened operands, which a TPU at
``matmul_precision="default"`` multiplies in one bf16 pass (exact here) and an NVIDIA GPU in TF32
(exact too, at TF32's rate).

Biases stay float32 where they are added: ``promote_inputs`` casts only a layer's input to the
compute dtype, so ``y + b`` is float32 and the layer's output is cast back to the compute dtype
(``layers.Conventions``); a bias's gradient is then a float32 sum of ``g``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

Product = Callable[[jax.Array, jax.Array], jax.Array]


def float32_weight_gradient(
  op: Product, x: jax.Array, w: jax.Array, weight_gradient: Product | None = None
) -> jax.Array:
  """``op(x, w.astype(x.dtype))`` whose gradient for ``w`` is float32 (module doc):
  ``weight_gradient(x, g)`` where given, else ``op``'s transpose on the widened ``x`` and ``g``.
  ``op`` and ``weight_gradient`` are closed over, not traced."""
  narrow = x.dtype
  if jnp.dtype(w.dtype) == jnp.dtype(narrow):
    return op(x, w)

  @jax.custom_vjp
  def product(x, w):
    return op(x, w.astype(narrow))

  def forward(x, w):
    return product(x, w), (x, w)

  def backward(saved, g):
    x, w = saved
    _, x_vjp = jax.vjp(lambda x: op(x, w.astype(narrow)), x)
    if weight_gradient is not None:
      return x_vjp(g)[0], weight_gradient(x, g)
    _, w_vjp = jax.vjp(lambda w: op(x.astype(w.dtype), w), w)
    return x_vjp(g)[0], w_vjp(g.astype(w.dtype))[0]

  product.defvjp(forward, backward)
  return product(x, w)


def promote_inputs(inputs, kernel, bias, dtype=None) -> tuple[Any, Any, Any]:
  """A Flax layer's ``promote_dtype``: ``inputs`` in ``dtype``, ``kernel`` and ``bias`` float32
  (the layer's ``dot_general`` / ``conv_general_dilated`` casts the kernel)."""
  return jnp.asarray(inputs, dtype), kernel, bias


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                preferred_element_type=None) -> jax.Array:
  """``lax.dot_general`` of a bf16 ``lhs`` and a float32 kernel ``rhs`` (no batch dimensions,
  as Flax's Dense and DenseGeneral call it), as ``einsum``."""
  (lhs_contracting, rhs_contracting), batch = dimension_numbers
  if batch != ((), ()) or preferred_element_type is not None:
    raise NotImplementedError(f"mixed.dot_general: {dimension_numbers}, {preferred_element_type}")
  letters = iter("abcdefghijklmnopqrstuvwxyz")
  lhs_spec = [next(letters) for _ in range(lhs.ndim)]
  rhs_spec = [next(letters) for _ in range(rhs.ndim)]
  for i, j in zip(lhs_contracting, rhs_contracting):
    rhs_spec[j] = lhs_spec[i]
  out_spec = [c for i, c in enumerate(lhs_spec) if i not in lhs_contracting]
  out_spec += [c for j, c in enumerate(rhs_spec) if j not in rhs_contracting]
  spec = f"{''.join(lhs_spec)},{''.join(rhs_spec)}->{''.join(out_spec)}"
  return einsum(spec, lhs, rhs, lhs.dtype, precision=precision)


_NHWC_HWIO = lax.ConvDimensionNumbers(
  lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)
# dW [kh, kw, I, O] = sum over n, y, x of x_pad[n, y s + kh, x s + kw, i] g[n, y, x, o]: a
# convolution of x (batch i, features n) with g (out features o, in features n) dilated by s.
_WEIGHT_GRADIENT = lax.ConvDimensionNumbers(
  lhs_spec=(3, 0, 1, 2), rhs_spec=(3, 0, 1, 2), out_spec=(2, 3, 0, 1)
)


def _conv_weight_gradient(window_strides, padding, precision, kernel: jax.ShapeDtypeStruct):
  """``(x, g) -> dW`` of a 2-D NHWC x HWIO convolution (``window_strides``, ``padding``; no
  dilation, one group) as one convolution of the bf16 ``x`` and ``g`` with float32 results."""

  def weight_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
    pads = padding
    if isinstance(padding, str):
      pads = lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], window_strides, padding)
    cropped = [  # the high side padded to what the last window reads (negative: cropped)
      (low, size + (out - 1) * stride - x_size - low)
      for (low, _), size, out, stride, x_size in zip(
        pads, kernel.shape[:2], g.shape[1:3], window_strides, x.shape[1:3]
      )
    ]
    return lax.conv_general_dilated(
      x, g, (1, 1), cropped, rhs_dilation=window_strides, dimension_numbers=_WEIGHT_GRADIENT,
      precision=precision, preferred_element_type=kernel.dtype,
    )

  return weight_gradient


def conv_general_dilated(base: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``base`` (``lax.conv_general_dilated`` or ``winograd.conv_general_dilated``, with
  ``lax.conv_general_dilated``'s signature) of a bf16 input and a float32 kernel, with a float32
  ``dW``: one bf16 convolution with float32 results for ``lax``'s 2-D NHWC convolutions without
  dilation or groups (every convolution of ``modules.vision``), else by the widened operands."""

  def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
           dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    args = dict(
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision, **kwargs,
    )
    op = lambda x, w: base(x, w, window_strides, padding, **args)
    plain = (
      base is lax.conv_general_dilated and not kwargs and feature_group_count == 1
      and dimension_numbers == _NHWC_HWIO and lhs.ndim == 4
      and all(d in (None, (1, 1)) for d in (lhs_dilation, rhs_dilation))
    )
    if not plain:
      return float32_weight_gradient(op, lhs, rhs)
    kernel = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)
    return float32_weight_gradient(
      op, lhs, rhs, _conv_weight_gradient(tuple(window_strides), padding, precision, kernel)
    )

  return conv


def einsum(spec: str, x: jax.Array, w: jax.Array, dtype: Any, precision=None) -> jax.Array:
  """``jnp.einsum(spec, x, w)`` (``spec`` explicit: ``"xs,ws->outs"``) computed in ``dtype``
  (None: unchanged); a float32 ``w`` gets the float32 gradient ``einsum("xs,outs->ws", x, g)``
  of the bf16 ``x`` and output gradient ``g``."""
  if dtype is None:
    return jnp.einsum(spec, x, w, precision=precision)
  operands, out_spec = spec.split("->")
  x_spec, w_spec = operands.split(",")
  return float32_weight_gradient(
    lambda a, b: jnp.einsum(spec, a, b, precision=precision),
    x.astype(dtype),
    w,
    lambda a, g: jnp.einsum(
      f"{x_spec},{out_spec}->{w_spec}", a, g, precision=precision,
      preferred_element_type=w.dtype,
    ),
  )
