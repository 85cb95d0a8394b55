"""Pipeline cost model: the steady-state speedup of ``K`` stages on ``K`` chips over one chip.

Stage ``k`` spends ``c_k = F_k / peak`` seconds on a batch (``F_k``: its train step's FLOPs) and
sends ``B_k`` bytes to stage ``k + 1`` (its detached output ``h`` and the int32 labels) in
``x_k = B_k / link`` seconds.  The send goes over the interconnect while the chip computes
its next batch, so in the pipelined schedule (every stage busy on its own batch each tick) a
stage keeps up when ``max(c_k, x_k)`` does, and the slowest stage sets the rate:

  tick = max_k max(c_k, x_k)           one chip, stages back to back, nothing sent: Σ_k c_k
  speedup = Σ_k c_k / tick             (≤ K; = Σ F_k / max F_k when every stage is compute-bound)

An epoch of ``T`` batches also fills and drains the pipeline: its first batch takes the latency
``Σ_k c_k + Σ_{k<K-1} x_k``, every later one a tick, so ``epoch speedup = T·Σc /
(latency + (T − 1)·tick)``.  Every chip is assumed to run at the same fraction of ``peak``
(the ratio, not the seconds, is the prediction); host input, dispatch and contention are left out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class PipelineCost:
  """Per-stage FLOPs and bytes sent per batch, and the chip's rates; the predicted speedup."""

  stage_flops: tuple[float, ...]
  sent_bytes: tuple[int, ...]  # to the next stage; 0 for the last
  peak_flops_per_s: float
  link_bytes_per_s: float

  @property
  def compute_s(self) -> tuple[float, ...]:
    return tuple(f / self.peak_flops_per_s for f in self.stage_flops)

  @property
  def transfer_s(self) -> tuple[float, ...]:
    return tuple(b / self.link_bytes_per_s for b in self.sent_bytes)

  @property
  def bound(self) -> tuple[str, ...]:
    """Per stage, what limits its rate: ``"compute"`` or ``"transfer"``."""
    return tuple("transfer" if x > c else "compute" for c, x in zip(self.compute_s, self.transfer_s))

  @property
  def tick_s(self) -> float:
    """Seconds per batch in the steady state: the slowest stage's ``max(c_k, x_k)``."""
    return max(max(c, x) for c, x in zip(self.compute_s, self.transfer_s))

  @property
  def slowest_stage(self) -> int:
    stage_s = [max(c, x) for c, x in zip(self.compute_s, self.transfer_s)]
    return stage_s.index(max(stage_s))

  @property
  def one_chip_s(self) -> float:
    """Seconds per batch with every stage on one chip: ``Σ c_k``."""
    return sum(self.compute_s)

  @property
  def speedup(self) -> float:
    """Steady-state speedup over one chip: ``Σ c_k / tick``."""
    return self.one_chip_s / self.tick_s

  def epoch_speedup(self, num_batches: int) -> float:
    """Speedup over an epoch of ``num_batches`` batches, fill and drain included."""
    latency = self.one_chip_s + sum(self.transfer_s[:-1])
    return num_batches * self.one_chip_s / (latency + (num_batches - 1) * self.tick_s)

  def as_dict(self) -> dict[str, Any]:
    return {
      **dataclasses.asdict(self),
      "compute_s": list(self.compute_s),
      "transfer_s": list(self.transfer_s),
      "bound": list(self.bound),
      "slowest_stage": self.slowest_stage,
      "tick_s": self.tick_s,
      "one_chip_s": self.one_chip_s,
      "speedup": self.speedup,
    }


def stage_inputs(
  train_steps: Sequence, states: Sequence, batch: jax.ShapeDtypeStruct
) -> list[jax.ShapeDtypeStruct]:
  """Each stage's input batch, abstract: ``batch`` for stage 0, then what each stage's train
  step returns as its detached output (its shape and dtype, by ``jax.eval_shape``); the last
  entry is the last stage's output.  ``states``: the stages' (abstract) ``TrainState``s."""
  labels = jax.ShapeDtypeStruct(batch.shape[:1], jnp.int32)
  inputs = [jax.ShapeDtypeStruct(batch.shape, batch.dtype)]
  for step, state in zip(train_steps, states):
    _, _, h = jax.eval_shape(step, state, inputs[-1], labels)
    inputs.append(jax.ShapeDtypeStruct(h.shape, h.dtype))
  return inputs


def sent_bytes(inputs: Sequence[jax.ShapeDtypeStruct]) -> tuple[int, ...]:
  """Bytes stage ``k`` sends per batch (``stage_inputs``' entry ``k + 1`` and the int32 labels);
  0 for the last stage, which sends nothing."""
  batch = inputs[0].shape[0]
  sends = [math.prod(x.shape) * x.dtype.itemsize + 4 * batch for x in inputs[1:-1]]
  return (*sends, 0)
