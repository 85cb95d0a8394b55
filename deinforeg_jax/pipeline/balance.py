"""Stage balancing: contiguous min-max partition of per-block costs.

Costs are XLA's FLOP estimate of a one-block train step
(``Lowered.cost_analysis()``), measured step time, or uniform.
``StagePlan.ideal_speedup`` is ``total cost / max stage cost``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from deinforeg_jax import stack, steps, xla_cpu
from deinforeg_jax.pipeline.executor import stage_input_shapes, stage_model
from deinforeg_jax.config_error import ConfigError

BALANCE_METHODS = ("flops", "time", "uniform")


def partition_blocks(costs: Sequence[float], num_stages: int) -> tuple[tuple[int, int], ...]:
  """Contiguous ``[start, stop)`` ranges, one per stage, minimising the largest stage cost.

  Exact dynamic programme over split points (ties go to the earliest split).

  >>> partition_blocks([4.0, 3.0, 2.0, 1.0], 2)
  ((0, 1), (1, 4))
  """
  n = len(costs)
  if not 1 <= num_stages <= n:
    raise ValueError(f"cannot split {n} blocks into {num_stages} stages: use 1..{n} stages.")
  prefix = np.concatenate([[0.0], np.cumsum(costs)])
  # best[s][i]: minimal max-stage cost of blocks [0, i) in s stages; cut[s][i]: last split.
  best = np.full((num_stages + 1, n + 1), np.inf)
  cut = np.zeros((num_stages + 1, n + 1), int)
  best[0][0] = 0.0
  for s in range(1, num_stages + 1):
    for i in range(s, n + 1):
      for j in range(s - 1, i):
        value = max(best[s - 1][j], prefix[i] - prefix[j])
        if value < best[s][i]:
          best[s][i], cut[s][i] = value, j
  bounds, stop = [], n
  for s in range(num_stages, 0, -1):
    start = int(cut[s][stop])
    bounds.append((start, stop))
    stop = start
  return tuple(reversed(bounds))


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """Block ranges per stage and the per-block costs they were chosen from."""

  bounds: tuple[tuple[int, int], ...]
  block_costs: tuple[float, ...]
  cost_kind: str  # "flops" | "time" | "uniform"

  @property
  def stage_costs(self) -> tuple[float, ...]:
    return tuple(float(sum(self.block_costs[a:b])) for a, b in self.bounds)

  @property
  def ideal_speedup(self) -> float:
    """Steady-state bound ``total cost / max stage cost`` (transfers ignored)."""
    return float(sum(self.block_costs) / max(self.stage_costs))

  def ideal_epoch_speedup(self, num_batches: int) -> float:
    """The bound with fill and drain: ``T·Σc / (Σc + (T − 1)·max c)``."""
    total, worst = sum(self.block_costs), max(self.stage_costs)
    return float(num_batches * total / (total + (num_batches - 1) * worst))

  def as_dict(self) -> dict[str, Any]:
    return {
      "stage_blocks": [list(range(a, b)) for a, b in self.bounds],
      "cost_kind": self.cost_kind,
      "block_costs": list(self.block_costs),
      "stage_costs": list(self.stage_costs),
      "ideal_speedup": self.ideal_speedup,
    }


def block_costs(
  model: stack.DecoupledStack,
  tx,
  objective,
  loss_cfg,
  input_shape,
  batch_size: int,
  method: str = "flops",
  device: jax.Device | None = None,
  repeats: int = 3,
) -> list[float]:
  """Cost of one train step of each block alone at ``batch_size``.

  ``"flops"``: XLA's estimate of the lowered step (no compilation, no memory);
  ``"time"``: median seconds of ``repeats`` compiled steps on ``device``;
  ``"uniform"``: 1 per block.
  """
  if method not in BALANCE_METHODS:
    raise ConfigError(
      f"config.parallel.pipeline_balance={method!r} is unknown; choose one of {BALANCE_METHODS}."
    )
  num_blocks = len(model.blocks)
  if method == "uniform":
    return [1.0] * num_blocks
  singles = [stage_model(model, i, i + 1) for i in range(num_blocks)]
  shapes = stage_input_shapes(singles, input_shape)
  device = device or jax.devices()[0]
  costs = []
  for single, shape in zip(singles, shapes):
    init = functools.partial(steps.create_train_state, single, tx, input_shape=shape)
    step = jax.jit(steps.make_train_step(single, objective, tx, model.num_classes, loss_cfg))
    x = jax.ShapeDtypeStruct((batch_size, *shape), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    if method == "flops":
      state = jax.eval_shape(init, jax.random.key(0))
      cost = step.lower(state, x, labels).cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      costs.append(float(cost["flops"]))
      continue
    state = jax.jit(
      init,
      out_shardings=SingleDeviceSharding(device),
      compiler_options=xla_cpu.init_options(device.platform),
    )(jax.random.key(0))
    rng = np.random.default_rng(0)
    data = jax.device_put(
      (
        rng.standard_normal(x.shape, np.float32),
        (np.arange(batch_size) % model.num_classes).astype(np.int32),
      ),
      device,
    )
    compiled = step.lower(state, *data).compile()
    jax.block_until_ready(compiled(state, *data))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(state, *data))
      times.append(time.perf_counter() - start)
    costs.append(float(np.median(times)))
  return costs


def plan_stages(
  model,
  tx,
  objective,
  loss_cfg,
  input_shape,
  batch_size: int,
  num_stages: int,
  method: str = "flops",
  device: jax.Device | None = None,
) -> StagePlan:
  """Balance ``model``'s blocks over ``num_stages`` stages by ``method`` cost."""
  costs = block_costs(model, tx, objective, loss_cfg, input_shape, batch_size, method, device)
  return StagePlan(partition_blocks(costs, num_stages), tuple(costs), method)
