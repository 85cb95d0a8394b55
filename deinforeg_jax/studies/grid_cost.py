"""What the unfinished cells of a grid would cost, in device-hours (``--dry_run``).

Per (dataset, rule) group of cells, from one of two sources, named on its line:

* measured: the group has finished cells in this root; their ``train_time_s / steps`` (seconds
  per step on the devices they ran on) x the steps of the group's unfinished cells x the
  devices per cell (the grid's ``cell_resources`` GPUs or TPUs; else 1);
* AOT FLOPs: XLA's FLOP count of the group's train step, lowered (not compiled) for the
  dataset's shapes (``aot.DATASETS``, no data read) at the full config, x the steps of the
  cells, / ``grid.sustained_tflops`` (an assumption about the devices, default
  ``SUSTAINED_TFLOPS``).  Training steps only: evaluation adds about one forward pass over the
  test split per epoch.

Steps are ``Run.total_steps``: ``num_epochs`` x steps per epoch, cut at ``train.max_steps``.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from deinforeg_jax import aot, parallel
from deinforeg_jax.run import build_run
from deinforeg_jax.studies.grid import CellRun, cell_resources

# Sustained FLOP/s of one device that the AOT estimate assumes unless the grid sets
# ``sustained_tflops`` (``make_grid`` sets this): about 16 % of an A100's 312 TFLOP/s dense bf16
# peak, 5 % of an H100's; small convolutions at batch 128 rarely run faster.
SUSTAINED_TFLOPS = 50.0


def train_flops(config) -> tuple[float, int]:
  """``(FLOPs of one train step, steps of the run)`` of ``config``: its final phase's train
  step lowered on one local device with abstract arguments (``Lowered.cost_analysis``)."""
  shapes = aot.run_shapes(config)
  run = build_run(config, shapes, num_old=0)
  mesh = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
  programs = run.jit_steps(run.plan.final, mesh)
  batch = config.data.batch_size
  lowered = programs.train.lower(
    run.abstract_state(),
    jax.ShapeDtypeStruct((batch, *shapes.input_shape), shapes.dtype),
    jax.ShapeDtypeStruct((batch,), jnp.int32),
  )
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0)), run.total_steps


def _devices_per_cell(resources: dict[str, float]) -> float:
  return resources.get("GPU") or resources.get("TPU") or 1.0


def estimate_lines(
  grid, todo: Sequence[CellRun], finished: Sequence[dict[str, Any]]
) -> list[str]:
  """One line per (dataset, rule) group of the unfinished cells ``todo``, and the total."""
  if not todo:
    return ["cost: every cell is finished"]
  tflops = float(grid.get("sustained_tflops", 0.0) or SUSTAINED_TFLOPS)
  devices = _devices_per_cell(cell_resources(grid))
  groups = collections.defaultdict(list)
  for run in todo:
    groups[(run.cell["dataset"], run.cell["rule"])].append(run)
  lines, total = [], 0.0
  for (dataset, rule), runs in groups.items():
    done = [s for s in finished if (s["dataset"], s["rule"]) == (dataset, rule) and s["steps"]]
    try:
      flops, steps = train_flops(runs[0].config)
    except (aot.AotError, ValueError) as error:  # a dataset aot does not know, a bad config
      lines.append(f"  {dataset} / {rule}: {len(runs)} cell(s), not estimated: {error}")
      continue
    if done:
      seconds = float(np.mean([s["train_time_s"] / s["steps"] for s in done]))
      hours = len(runs) * steps * seconds * devices / 3600
      source = f"measured, {seconds:.3g} s/step x {devices:g} device(s) ({len(done)} finished)"
    else:
      hours = len(runs) * steps * flops / (tflops * 1e12) / 3600
      source = f"AOT FLOPs, {flops:.3g} per step at {tflops:g} TFLOP/s sustained"
    total += hours
    lines.append(
      f"  {dataset} / {rule}: {len(runs)} cell(s) x {steps} steps: {hours:.3g} device-hours "
      f"({source})"
    )
  return [f"cost of the {len(todo)} unfinished cell(s), training steps only:"] + lines + [
    f"  total: {total:.3g} device-hours"
  ]
