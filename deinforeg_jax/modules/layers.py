"""Layer conventions: Flax's or PyTorch's initialisers, BatchNorm running variance, and how
3x3 convolutions are computed.

Every module that creates a Dense, Conv or BatchNorm layer carries a
``Conventions`` value (attribute ``conventions``, set by
``models.create_model`` from ``config.model.init`` and
``config.model.bn_running_var``) and creates those layers through it.  Layer
names and parameter shapes do not depend on the conventions.

``init`` (every Dense and Conv kernel and bias; ``fan_in`` = ``in_features``
for Dense, ``kh * kw * in_channels`` for Conv):

* ``"flax"`` (default): Flax's defaults, kernel LeCun normal
  (truncated normal, variance ``1 / fan_in``), bias 0.
* ``"torch"``: PyTorch's ``nn.Linear`` / ``nn.Conv2d`` defaults
  (``kaiming_uniform_(a=sqrt(5))``): kernel and bias ``U(-b, b)`` with
  ``b = 1 / sqrt(fan_in)``, so ``std = b / sqrt(3)``.

``bn_running_var`` (BatchNorm in training mode, momentum ``m = 0.9``,
i.e. PyTorch's 0.1; normalisation always uses the biased batch variance
``s2 = mean((x - mean(x))^2)`` over the ``n`` values of a feature):

* ``"unbiased"`` (default): PyTorch's ``var <- m var + (1 - m) s2 n / (n - 1)``, as the
  original DeInfoReg code (its BatchNorm layers), so evaluation-mode statistics are the
  original's.
* ``"biased"``: Flax's ``var <- m var + (1 - m) s2`` (the default before 2026-12; a checkpoint
  without the field has it, ``config_fields.FIELDS``).

``conv_impl`` (``config.model.conv_impl``, ``"auto"`` resolved by ``resolve_conv_impl``):
``"xla"`` computes every convolution with ``lax.conv_general_dilated``; ``"winograd"``
computes the stride-1 3x3 ones with ``winograd.winograd_conv3x3`` (matmuls; the same
parameters, equal results up to fp32 rounding).

``dtype`` and ``matmul_precision`` (``config.model``, ``deinforeg_jax.precision``): every
Dense and Conv computes in ``dtype`` with that ``precision=``, its float32 kernel cast where the
product reads it and its gradient float32 (``mixed``), the float32 bias added before the output
is cast to ``dtype``; BatchNorm normalises from float32 statistics and returns ``dtype``; exit
logits are float32 (``logits``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from deinforeg_jax import precision, xla_cpu
from deinforeg_jax.modules import mixed, winograd
from deinforeg_jax.config_error import ConfigError

INITS = ("flax", "torch")
BN_RUNNING_VARS = ("biased", "unbiased")
CONV_IMPLS = ("auto", "xla", "winograd")


def resolve_conv_impl(name: str, platform: str | None = None) -> str:
  """``"xla"`` or ``"winograd"``: ``name``, with ``"auto"`` the fastest measured choice
  (``benchmarks/step_time.py``) for ``platform`` (default: the default backend's).

  On XLA:CPU that is XLA's own convolution when ``xla_cpu.fast_convolutions()`` (the package set
  the flag that keeps convolutions off YNNPACK: reference VGG DeInfoReg step 7.2 s vs 8.0 s with
  Winograd, ResNet-18 4.3 vs 5.3 s), and Winograd matmuls otherwise (YNNPACK's convolutions:
  VGG 8.0 s vs 13.0 s with XLA's).  GPU/TPU: XLA's, whose libraries choose their own algorithms.
  """
  if name != "auto":
    return name
  if (platform or jax.default_backend()) != "cpu":
    return "xla"
  return "xla" if xla_cpu.fast_convolutions() else "winograd"

Initializer = Callable[..., jax.Array]


def torch_uniform(fan_in: int) -> Initializer:
  """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``: PyTorch's Linear/Conv kernel and bias default."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class BatchNorm(nn.BatchNorm):
  """``nn.BatchNorm`` whose running variance takes the unbiased batch variance (PyTorch).

  Same class name, so auto-named instances (``BatchNorm_0``) and the variables
  match ``nn.BatchNorm``'s.  After Flax's update ``var = m v + (1 - m) s2`` it adds
  ``(1 - m) s2 / (n - 1)``, giving ``m v + (1 - m) s2 n / (n - 1)``.
  """

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    y = super().__call__(x, use_running_average)
    training = not nn.merge_param(
      "use_running_average", self.use_running_average, use_running_average
    )
    if training and not self.is_initializing():
      axes = tuple(range(x.ndim - 1))
      n = math.prod(x.shape[:-1])
      s2 = jnp.var(x.astype(jnp.float32), axis=axes)
      var = self.get_variable("batch_stats", "var")
      self.put_variable("batch_stats", "var", var + (1 - self.momentum) * s2 / max(n - 1, 1))
    return y


@dataclasses.dataclass(frozen=True)
class Conventions:
  """How Dense/Conv layers are initialised and compute, and BatchNorm keeps its running variance."""

  init: str = "flax"
  bn_running_var: str = "unbiased"
  conv_impl: str = "xla"
  dtype: str = "float32"
  matmul_precision: str = "default"

  def __post_init__(self):
    if self.init not in INITS:
      raise ConfigError(f"config.model.init={self.init!r} must be one of {list(INITS)}.")
    if self.bn_running_var not in BN_RUNNING_VARS:
      raise ConfigError(
        f"config.model.bn_running_var={self.bn_running_var!r} must be one of "
        f"{list(BN_RUNNING_VARS)}."
      )
    if self.dtype not in precision.DTYPES:
      raise ConfigError(f"config.model.dtype={self.dtype!r} {precision.DTYPE_REQUIREMENT}.")
    if self.matmul_precision not in precision.MATMUL_PRECISIONS:
      raise ConfigError(
        f"config.model.matmul_precision={self.matmul_precision!r} must be one of "
        f"{list(precision.MATMUL_PRECISIONS)}."
      )
    if self.conv_impl not in ("xla", "winograd"):
      raise ValueError(
        f"conv_impl={self.conv_impl!r} must be 'xla' or 'winograd' (resolve 'auto' first)."
      )

  @property
  def compute_dtype(self) -> Any:
    """The ``dtype=`` of every layer: ``bfloat16``, or None (the parameters' own, float32)."""
    return precision.compute_dtype(self.dtype)

  def cast(self, x: jax.Array) -> jax.Array:
    """``x`` in the compute dtype (unchanged unless that is ``bfloat16``)."""
    return x if self.compute_dtype is None else x.astype(self.compute_dtype)

  @property
  def lax_precision(self) -> jax.lax.Precision | None:
    """The ``precision=`` of every matmul and convolution (None: the backend's default)."""
    return precision.lax_precision(self.matmul_precision)

  def bias_init(self, fan_in: int) -> Initializer:
    """Bias initialiser of a layer with ``fan_in`` inputs: 0 (flax) or ``torch_uniform``."""
    return torch_uniform(fan_in) if self.init == "torch" else nn.initializers.zeros_init()

  def _inits(self, fan_in: int) -> dict[str, Initializer]:
    if self.init == "flax":
      return {}
    return {"kernel_init": torch_uniform(fan_in), "bias_init": torch_uniform(fan_in)}

  def _products(self, conv_base: Callable[..., jax.Array] | None = None) -> dict[str, Any]:
    """A Flax Dense/DenseGeneral's (or, with ``conv_base``, a Conv's) keyword arguments for the
    conventions' dtype and precision: under bf16 the kernel and bias stay float32 and their
    gradients float32 (``mixed``); the output is then cast by ``cast``."""
    hooks: dict[str, Any] = {"dtype": self.compute_dtype, "precision": self.lax_precision}
    if conv_base is not None:
      hooks["conv_general_dilated"] = conv_base
    if self.compute_dtype is None:
      return hooks
    hooks["promote_dtype"] = mixed.promote_inputs
    if conv_base is None:
      hooks["dot_general"] = mixed.dot_general
    else:
      hooks["conv_general_dilated"] = mixed.conv_general_dilated(conv_base)
    return hooks

  def dense(self, x: jax.Array, features: int, **kwargs) -> jax.Array:
    """``nn.Dense(features, **kwargs)(x)`` initialised by the convention (``kwargs`` first) and
    computed in its dtype (in a compact scope)."""
    return self.cast(self._dense(x, features, **kwargs))

  def _dense(self, x: jax.Array, features: int, **kwargs) -> jax.Array:
    inits = {**self._inits(x.shape[-1]), **kwargs}
    return nn.Dense(features, **self._products(), **inits)(x)

  def dense_general(self, x: jax.Array, features, axis, **kwargs) -> jax.Array:
    """``nn.DenseGeneral(features, axis, **kwargs)(x)`` in the conventions' dtype and precision
    (initialisers from ``kwargs``)."""
    return self.cast(nn.DenseGeneral(features, axis=axis, **self._products(), **kwargs)(x))

  def logits(self, x: jax.Array, num_classes: int) -> jax.Array:
    """An exit's output layer: ``dense(x, num_classes)`` returned as float32 ``[B, C]`` (the
    losses, the exit rule, predictions and exported models read float32 logits)."""
    return precision.at_least_float32(self._dense(x, num_classes))

  def conv(self, x: jax.Array, features: int, kernel_size: tuple[int, ...], **kwargs) -> jax.Array:
    """``nn.Conv(features, kernel_size, **kwargs)(x)``, initialised by the convention and computed
    in its dtype (3x3 stride-1 layers by Winograd's matmuls with ``conv_impl="winograd"``)."""
    fan_in = x.shape[-1] * math.prod(kernel_size)
    winograd_path = self.conv_impl == "winograd"
    base = winograd.conv_general_dilated if winograd_path else lax.conv_general_dilated
    layer = nn.Conv(
      features, kernel_size, **self._products(base), **self._inits(fan_in), **kwargs
    )
    return self.cast(layer(x))

  def einsum(self, spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """``jnp.einsum(spec, x, w)`` of an input ``x`` and a float32 parameter ``w``, computed in
    the conventions' dtype and precision (``w``'s gradient float32)."""
    return mixed.einsum(spec, x, w, self.compute_dtype, self.lax_precision)

  def batch_norm(self, train: bool, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1, i.e. Flax 0.9; epsilon 1e-5); float32
    statistics, output in the compute dtype."""
    cls = BatchNorm if self.bn_running_var == "unbiased" else nn.BatchNorm
    return cls(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.compute_dtype,
      name=name,
    )


DEFAULT_CONVENTIONS = Conventions()
