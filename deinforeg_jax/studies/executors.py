"""Where and when a grid's cells train, behind one interface.

``executor.run(runs, train_cell, may_start)`` gets the unfinished cells in run order,
``train_cell(run) -> summary`` (train, summarize, write the summary: the whole of one cell)
and ``may_start(run) -> bool``, which the grid answers just before a cell starts (False: skip
it, the budget is spent; an exception: stop the grid).  It yields ``(run, summary)`` as each
cell finishes, in any order; the grid tabulates the summaries in run order.  ``train_cell`` is
a module-level function of a picklable ``CellRun``, so an executor may call it in another
process or on another machine that sees the same grid root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from deinforeg_jax.studies.grid import CellRun

Summary = dict[str, Any]


class Executor(Protocol):
  """Trains cells and yields each finished one with its summary."""

  def run(
    self,
    runs: Sequence[CellRun],
    train_cell: Callable[[CellRun], Summary],
    may_start: Callable[[CellRun], bool],
  ) -> Iterator[tuple[CellRun, Summary]]: ...


class LocalExecutor:
  """One cell after another in this process; an error in a cell stops the grid with it."""

  def run(
    self,
    runs: Sequence[CellRun],
    train_cell: Callable[[CellRun], Summary],
    may_start: Callable[[CellRun], bool],
  ) -> Iterator[tuple[CellRun, Summary]]:
    for run in runs:
      if may_start(run):
        yield run, train_cell(run)
