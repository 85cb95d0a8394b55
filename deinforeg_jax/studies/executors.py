"""Where and when a grid's cells train, behind one interface.

``executor.run(runs, train_cell, may_start)`` gets the unfinished cells in run order,
``train_cell(run) -> summary`` (train, summarize, write the summary: the whole of one cell)
and ``may_start(run) -> bool``, which the grid answers just before a cell starts (False: skip
it, the budget is spent; an exception: stop the grid).  It yields ``(run, outcome)`` as each
cell ends, in any order: the summary, or ``CellFailed`` for a cell that failed for a reason a
rerun would not change (the grid reports it and goes on); the grid tabulates the summaries in
run order.  ``train_cell`` is a module-level function of a picklable ``CellRun``, so an executor
may call it in another process or on another machine that sees the same grid root
(``ray_executor.RayExecutor``).  ``describe(runs)`` says, for ``--dry_run``, where the cells
would train.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from deinforeg_jax.studies.grid import CellRun

Summary = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CellFailed:
  """A cell that failed deterministically (a config error, a NaN refusal): its one-line
  reason."""

  reason: str


Outcome = Summary | CellFailed


class Executor(Protocol):
  """Trains cells and yields each one that ended with its summary or ``CellFailed``."""

  def run(
    self,
    runs: Sequence[CellRun],
    train_cell: Callable[[CellRun], Summary],
    may_start: Callable[[CellRun], bool],
  ) -> Iterator[tuple[CellRun, Outcome]]: ...

  def describe(self, runs: Sequence[CellRun]) -> list[str]: ...


class LocalExecutor:
  """One cell after another in this process; an error in a cell stops the grid with it."""

  def run(
    self,
    runs: Sequence[CellRun],
    train_cell: Callable[[CellRun], Summary],
    may_start: Callable[[CellRun], bool],
  ) -> Iterator[tuple[CellRun, Outcome]]:
    for run in runs:
      if may_start(run):
        yield run, train_cell(run)

  def describe(self, runs: Sequence[CellRun]) -> list[str]:
    return [f"local: {len(runs)} cell(s) one after another in this process"]
