"""The engine interface of the training loop, and the engine of each ``config.parallel.mode``.

``train.run_epochs`` owns the loop (resume position, progress, the NaN stop, checkpoint cadence,
evaluation, logging, results); an engine only runs the steps:

* ``"data"`` (``data_parallel.DataParallelEngine``): one jitted program holds every block's
  local loss; the batch is sharded over the ``data`` axis of a device mesh.
* ``"pipeline"`` (``pipeline.PipelineEngine``): groups of blocks on their own devices.

An engine's state may be any pytree that converts to and from the one-program
``steps.TrainState`` (what checkpoints hold), so either engine resumes the other's run.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
import numpy as np

from deinforeg_jax import data_parallel, growth, pipeline, steps, throughput
from deinforeg_jax.run import Run


class Engine(Protocol):
  """How a parallel mode runs the steps; ``run_epochs`` owns everything else."""

  name: str

  def init(self, rng: jax.Array) -> Any:
    """The engine's initial state (equal to ``steps.create_train_state`` of the model)."""

  def to_train_state(self, state: Any) -> steps.TrainState:
    """The one-program ``TrainState`` (what checkpoints hold)."""

  def from_train_state(self, full: steps.TrainState) -> Any:
    """The inverse of ``to_train_state``."""

  def set_phase(self, phase: growth.Phase) -> float | None:
    """Run ``phase``'s model and frozen blocks from now on; seconds spent compiling."""

  def train_segment(
    self, state: Any, batches, position: int, on_step: Callable[[dict], None]
  ) -> tuple[Any, list[dict]]:
    """Train on every batch (numbered from ``position`` in the epoch); per-step metrics."""

  def check_state(self, state: Any) -> str:
    """Why ``state`` must not be saved (non-finite values, or a non-finite loss of its own
    parameters on the last trained batch), or "" when it is good."""

  def evaluate(self, state: Any, batches) -> np.ndarray:
    """Per-exit accuracy ``[K]`` over every example of ``batches`` (global)."""

  def variables(self, state: Any) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of the whole model, usable on the default device."""

  def describe(self) -> str:
    """Where the run executes, for the start-up line."""

  def step_cost(self) -> throughput.StepCost:
    """The current phase's train step: XLA's FLOPs over all devices, and the devices."""

  def report(self) -> dict[str, Any] | None:
    """An entry for ``results.json`` (written also as ``<name>.json``), or None."""


ENGINES = {"data": data_parallel.DataParallelEngine, "pipeline": pipeline.PipelineEngine}


def create_engine(run: Run) -> Engine:
  """The engine of ``run.config.parallel.mode``."""
  return ENGINES[run.config.parallel.mode](run)
