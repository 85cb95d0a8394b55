"""Throughput and model FLOPs utilisation (MFU) of the train step.

A step's FLOPs are XLA's count for the compiled program (``Compiled.cost_analysis()["flops"]``,
``step_flops``): per device for an SPMD program, so a step over ``N`` data-parallel devices
does ``N x`` that, and a pipeline step the sum over its stages.  They count what the devices
execute (the optimizer update on every replica included), which is the numerator of MFU here:

  samples/s = steps x batch / train s         TFLOP/s per device = FLOPs/step x steps/s / N / 1e12
  MFU = TFLOP/s per device / peak TFLOP/s per device

The peak is the device's dense datasheet figure for the arithmetic the layers' matmuls use
(``config.model.dtype`` and ``config.model.matmul_precision``: bf16, TF32 or fp32,
``arithmetic``), or ``config.train.peak_tflops`` when set; an unknown peak (the CPU, a device
or arithmetic the table lacks) leaves MFU ``None`` with the reason (``Peak.source``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Dense peak TFLOP/s per device (one JAX device: a TPU chip, a GPU) by arithmetic, from the
# vendors' datasheets; a figure quoted "with sparsity" is halved.
# * TPU v4 275, v5e 197, v5p 459, v6e (Trillium) 918 bf16 TFLOP/s per chip: Google Cloud's
#   TPU pages (https://cloud.google.com/tpu/docs/v4, .../v5e, .../v5p, .../v6e).  No float32
#   figure is published: float32 matmuls run as 1 (precision "default"), 3 ("high") or 6
#   ("highest") bf16 passes, so only the first has a known peak (the bf16 one).
# * A100 (SXM and PCIe): 19.5 fp32, 156 TF32, 312 bf16 (NVIDIA A100 datasheet, 2021).
# * H100 SXM: 67 fp32, 494.5 TF32 (989 sparse), 989.5 bf16 (1979 sparse); H100 PCIe: 51, 378,
#   756; H100 NVL: 60, 417.5, 835.5 (NVIDIA H100 datasheet, 2023).
# * H200 SXM: as H100 SXM; H200 NVL: as H100 NVL (NVIDIA H200 datasheet, 2024).
# Keys are matched against ``device.device_kind`` (JAX's names: "TPU v5 lite" is v5e, "TPU v5"
# v5p, "TPU v6 lite" v6e); the first key contained in it wins, so specific names come first.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
  "TPU v4": {"bf16": 275.0},
  "TPU v5 lite": {"bf16": 197.0},
  "TPU v5e": {"bf16": 197.0},
  "TPU v5p": {"bf16": 459.0},
  "TPU v5": {"bf16": 459.0},
  "TPU v6 lite": {"bf16": 918.0},
  "TPU v6e": {"bf16": 918.0},
  "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
  "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0},
  "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
  "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5},
  "H100": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},
  "H200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5},
}


@dataclasses.dataclass(frozen=True)
class StepCost:
  """What one train step costs: XLA's FLOPs over all its devices, and those devices."""

  flops: float
  num_devices: int
  platform: str  # "cpu" | "gpu" | "tpu"
  device_kind: str  # jax.Device.device_kind, e.g. "TPU v5 lite", "NVIDIA H100 80GB HBM3"


@dataclasses.dataclass(frozen=True)
class Peak:
  """A device's peak TFLOP/s for the run's arithmetic (None: unknown) and where it comes from
  (or why it is unknown)."""

  tflops: float | None
  source: str


def step_flops(compiled) -> float:
  """FLOPs of a compiled program on one device (``jax.stages.Compiled``; 0 if XLA gives none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older JAX: one dict per device
  return float((cost or {}).get("flops", 0.0))


def arithmetic(platform: str, dtype: str, matmul_precision: str) -> str | None:
  """The peak the layers' matmuls can reach: "bf16", "tf32" or "fp32" (None: no published
  peak, a TPU's multi-pass float32)."""
  if dtype == "bfloat16":
    return "bf16"
  if platform == "tpu":
    return "bf16" if matmul_precision == "default" else None
  if platform == "gpu":
    return "fp32" if matmul_precision == "highest" else "tf32"
  return "fp32"


def peak(config, cost: StepCost) -> Peak:
  """The peak MFU is measured against: ``config.train.peak_tflops`` if > 0, else the table's."""
  given = config.train.peak_tflops
  if given:
    return Peak(float(given), "config.train.peak_tflops")
  dtype, precision = config.model.dtype, config.model.matmul_precision
  kind = arithmetic(cost.platform, dtype, precision)
  known = next((peaks for key, peaks in PEAK_TFLOPS.items() if key in cost.device_kind), None)
  if known is None or kind not in known:
    what = f"{kind} " if kind else f"{dtype} at matmul_precision={precision!r} "
    return Peak(
      None,
      f"no peak known for {what}on {cost.platform} device {cost.device_kind!r}; set "
      "config.train.peak_tflops to the device's peak TFLOP/s to get MFU",
    )
  return Peak(known[kind], f"{cost.device_kind} {kind} dense peak (datasheet)")


def rates(
  steps: int, seconds: float, flops: float, batch_size: int, cost: StepCost, peak_tflops
) -> dict[str, Any]:
  """``{samples_per_s, flops_per_step, tflops_per_s_per_device, mfu}`` of ``steps`` train
  steps that took ``seconds`` and ``flops`` FLOPs in all (None where undefined)."""
  if steps <= 0 or seconds <= 0:
    return {"samples_per_s": None, "flops_per_step": None, "tflops_per_s_per_device": None,
            "mfu": None}
  per_device = flops / seconds / cost.num_devices / 1e12 if flops else None
  return {
    "samples_per_s": steps * batch_size / seconds,
    "flops_per_step": flops / steps if flops else None,
    "tflops_per_s_per_device": per_device,
    "mfu": per_device / peak_tflops if per_device and peak_tflops else None,
  }
