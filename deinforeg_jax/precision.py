"""Compute dtype and matmul precision: ``config.model.dtype`` and ``config.model.matmul_precision``.

``dtype="bfloat16"`` is mixed precision: every Conv, Dense, LSTM and attention layer computes
in bfloat16 (``layers.Conventions.dtype``), while parameters, optimizer state, BatchNorm
statistics and every loss stay float32 (parameters are cast to bf16 where a product reads them;
the losses cast what they read).  Parameter gradients are float32 sums of exact products
(``modules.mixed``: a layer's weight gradient is a bf16 x bf16 product of its input and output
gradient with float32 results; biases are added in float32), so they are all-reduced in float32
under data parallelism.  Block outputs, which the next block or pipeline stage reads, are bf16;
the exits' logits leave the model as float32.
There is no ``"float16"``: its 5-bit exponent needs loss scaling, which this project does not do.

``matmul_precision`` is the ``jax.lax.Precision`` of every layer's matmul and convolution
(``"default"``: the backend's choice).  It decides how float32 operands are multiplied;
bf16 operands give bf16 products summed in float32 at every setting.  The loss terms' own
matmuls (similarity, covariance, contrastive) are ``HIGHEST`` whatever the setting.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# None: Flax's default, the parameters' own dtype (float32, or float64 in an x64 replay).
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
DTYPE_REQUIREMENT = (
  "must be 'float32' or 'bfloat16' (float16 would need loss scaling, which this project does "
  "not do)"
)
MATMUL_PRECISIONS = {
  "default": None,  # no precision= at all: the float32 programs are unchanged
  "high": jax.lax.Precision.HIGH,
  "highest": jax.lax.Precision.HIGHEST,
}

# How XLA multiplies float32 operands at each precision (JAX's "Matmul precision" docs).
FLOAT32_MATMULS = {
  "cpu": {"default": "float32", "high": "float32", "highest": "float32"},
  "gpu": {  # NVIDIA Ampere (compute capability 8.0) and newer; older GPUs: float32 throughout
    "default": "TF32 tensor cores (10-bit mantissa products, float32 sums)",
    "high": "TF32 tensor cores or 3 bfloat16 passes (XLA's choice)",
    "highest": "float32",
  },
  "tpu": {
    "default": "1 bfloat16 pass (bf16 products, float32 sums)",
    "high": "3 bfloat16 passes (about float32 products)",
    "highest": "6 bfloat16 passes (float32)",
  },
}
BFLOAT16_MATMULS = "bfloat16 operands, float32 sums (the same at every precision)"


def compute_dtype(name: str) -> Any:
  """``config.model.dtype`` -> the ``dtype=`` of every layer (None: the parameters')."""
  return DTYPES[name]


def at_least_float32(x: jax.Array) -> jax.Array:
  """``x`` as float32 if it is narrower (bf16), else unchanged (float32, float64)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def lax_precision(name: str) -> jax.lax.Precision | None:
  """``config.model.matmul_precision`` -> the ``precision=`` every layer passes (None: default)."""
  return MATMUL_PRECISIONS[name]


def _float32_meaning(precision: str, device) -> str:
  platform = device.platform
  if platform == "gpu" and float(getattr(device, "compute_capability", "0") or 0) < 8.0:
    return "float32"
  return FLOAT32_MATMULS.get(platform, {}).get(precision, "unknown on this platform")


def describe(dtype: str, precision: str, device=None) -> dict[str, str]:
  """What a run's ``dtype`` and ``matmul_precision`` mean on ``device`` (default: the first),
  for ``results.json``: ``{"dtype", "matmul_precision", "platform", "device_kind",
  "layer_matmuls"}``, the last saying how the layers' matmuls and convolutions multiply."""
  device = device or jax.devices()[0]
  layers = BFLOAT16_MATMULS if dtype == "bfloat16" else _float32_meaning(precision, device)
  return {
    "dtype": dtype,
    "matmul_precision": precision,
    "platform": device.platform,
    "device_kind": device.device_kind,
    "layer_matmuls": layers,
  }
