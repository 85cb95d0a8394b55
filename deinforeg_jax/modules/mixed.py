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
significant bits fit in float32's 24) and only the float32 sum rounds: the values of a bf16 x bf16
-> float32 product (XLA:CPU cannot run that one, "Unsupported element type for DotThunk").  On a
TPU, ``matmul_precision="default"`` multiplies float32 operands in one bf16 pass (exact here); on
an NVIDIA GPU in TF32 (exact here too, at TF32's rate rather than bf16's).

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


def float32_weight_gradient(op: Product, x: jax.Array, w: jax.Array) -> jax.Array:
  """``op(x, w.astype(x.dtype))`` whose gradient for ``w`` is computed in ``w``'s dtype (float32)
  from the widened ``x`` and output gradient (module doc); ``op`` is closed over, not traced."""
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
    _, w_vjp = jax.vjp(lambda w: op(x.astype(w.dtype), w), w)
    return x_vjp(g)[0], w_vjp(g.astype(w.dtype))[0]

  product.defvjp(forward, backward)
  return product(x, w)


def promote_inputs(inputs, kernel, bias, dtype=None) -> tuple[Any, Any, Any]:
  """A Flax layer's ``promote_dtype``: ``inputs`` in ``dtype``, ``kernel`` and ``bias`` float32
  (the layer's ``dot_general`` / ``conv_general_dilated`` casts the kernel)."""
  return jnp.asarray(inputs, dtype), kernel, bias


def dot_general(lhs: jax.Array, rhs: jax.Array, *args, **kwargs) -> jax.Array:
  """``lax.dot_general`` of a bf16 ``lhs`` and a float32 kernel ``rhs``, with a float32 ``dW``."""
  return float32_weight_gradient(lambda x, w: lax.dot_general(x, w, *args, **kwargs), lhs, rhs)


def conv_general_dilated(base: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
  """``base`` (``lax.conv_general_dilated`` or ``winograd.conv_general_dilated``) of a bf16
  input and a float32 kernel, with a float32 ``dW``."""

  def conv(lhs: jax.Array, rhs: jax.Array, *args, **kwargs) -> jax.Array:
    return float32_weight_gradient(lambda x, w: base(x, w, *args, **kwargs), lhs, rhs)

  return conv


def einsum(spec: str, x: jax.Array, w: jax.Array, dtype: Any, **kwargs) -> jax.Array:
  """``jnp.einsum(spec, x, w)`` computed in ``dtype`` (None: unchanged), a float32 ``w`` receiving
  a float32 gradient."""
  if dtype is None:
    return jnp.einsum(spec, x, w, **kwargs)
  return float32_weight_gradient(
    lambda a, b: jnp.einsum(spec, a, b, **kwargs), x.astype(dtype), w
  )
