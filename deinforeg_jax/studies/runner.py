"""Running a grid: finished cells reused, the others trained by an executor, then the report.

Every cell trains in ``<root>/<dataset>/<rule>/noise<rate>/seed<seed>`` and gets one summary
``<root>/cells/<name>.json`` (``report.summarize``), written atomically as soon as the cell
finishes.  Running the grid again resumes it: a cell with a summary is not trained again, and
an unfinished cell continues from its checkpoints; a finished cell whose config differs from
the grid's is refused with the first differing field.  A cell that an executor reports failed
(``executors.CellFailed``) does not stop the others: the table is written from the cells that
finished, and the grid then ends with ``CellsFailedError`` naming each failed cell and why.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from deinforeg_jax import safe_files, user_errors
from deinforeg_jax.studies import grid_cost, report
from deinforeg_jax.studies.executors import CellFailed, Executor, LocalExecutor
from deinforeg_jax.studies.grid import CellRun, GridError, cell_runs, check_same_config
from deinforeg_jax.train import train_and_evaluate


class CellsFailedError(GridError):
  """Cells failed deterministically (the message names each with its reason); the others ran."""


def train_cell(run: CellRun) -> dict[str, Any]:
  """Train one cell (resuming from its checkpoints); write its summary and return it."""
  results = train_and_evaluate(run.config, run.workdir)
  summary = report.summarize(run.cell, results, run.workdir)
  safe_files.write_atomic(run.summary_path, json.dumps(summary, indent=1))
  return summary


def _read_json_object(path: str) -> dict | None:
  """The JSON object in ``path``; None if it is missing, cut short, or not an object."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    return None
  return value if isinstance(value, dict) else None


def _finished_summary(run: CellRun) -> dict | None:
  """The summary of a finished cell: ``run.summary_path``, or, when that file is unreadable
  (cut short by a kill on an older version, or edited), rebuilt from the run's
  ``results.json`` and written again; None when neither is readable (the cell is run again,
  resuming from its checkpoints).  A ``results.json`` of other settings is an error."""
  results_path = os.path.join(run.workdir, "results.json")
  results = _read_json_object(results_path)
  if results is not None:
    check_same_config(results["config"], run.config, run.workdir)
  summary = _read_json_object(run.summary_path)
  if summary is not None:
    return summary
  if results is None:
    print(
      f"note: {run.summary_path} is unreadable and {results_path} too: running the cell "
      "again (it resumes from its last checkpoint)",
      flush=True,
    )
    return None
  summary = report.summarize(run.cell, results, run.workdir)
  safe_files.write_atomic(run.summary_path, json.dumps(summary, indent=1))
  print(f"note: {run.summary_path} was unreadable: rebuilt from {results_path}", flush=True)
  return summary


def run_grid(
  grid,
  root: str,
  *,
  executor: Executor | None = None,
  dry_run: bool = False,
  report_only: bool = False,
  stop_requested: Callable[[], str | None] = lambda: None,
) -> list[dict[str, Any]]:
  """Train every unfinished cell (until ``grid.budget_minutes`` is spent; 0: no limit) with
  ``executor`` (default ``LocalExecutor``); write ``<root>/table.md`` and the plots.

  ``dry_run``: list the cells, where ``executor`` would train them and what they would cost
  (``grid_cost.estimate_lines``), write nothing.  ``report_only``: train nothing, write table and
  plots from the finished cells' summaries.  ``stop_requested() -> signal name | None`` is asked
  before each cell starts; a name raises ``user_errors.Interrupted`` (exit 75; the cells that
  ran are saved).  Returns the summaries of the finished cells, in run order; cells that
  failed raise ``CellsFailedError`` after the table is written.
  """
  executor = executor or LocalExecutor()
  os.makedirs(os.path.join(root, "cells"), exist_ok=True)
  budget_s = 60.0 * grid.budget_minutes
  start = time.perf_counter()
  runs = cell_runs(grid, root)
  finished, failed, todo, skipped = {}, {}, [], []
  for run in runs:
    summary = _finished_summary(run) if os.path.exists(run.summary_path) else None
    if summary is None:
      todo.append(run)
      continue
    finished[run.name] = {**summary, "workdir": run.workdir}  # the root may have moved
    print(f"[done]    {run.name}", flush=True)

  def may_start(run: CellRun) -> bool:
    elapsed = time.perf_counter() - start
    if budget_s and elapsed > budget_s:
      skipped.append(run)
      print(f"[budget]    {run.name}", flush=True)
      return False
    signal_name = stop_requested()
    if signal_name:  # arrived between cells (a cell's own run saves and stops)
      raise user_errors.Interrupted(
        f"{signal_name} received before cell {run.name} started: {len(finished)} "
        f"finished cell(s) are saved in {os.path.join(root, 'cells')}. Run the same command "
        "again to continue."
      )
    print(f"[run]     {run.name} in {run.workdir} ({elapsed / 60:.1f} min elapsed)", flush=True)
    return True

  if dry_run or report_only:
    skipped.extend(todo)
    for run in todo:
      print(f"[todo]    {run.name}", flush=True)
  else:
    for run, outcome in executor.run(todo, train_cell, may_start):
      if isinstance(outcome, CellFailed):
        failed[run.name] = outcome.reason
      else:
        finished[run.name] = outcome
  summaries = [finished[run.name] for run in runs if run.name in finished]
  if dry_run:
    for line in executor.describe(todo) + grid_cost.estimate_lines(grid, todo, summaries):
      print(line, flush=True)
    return summaries
  table = report.markdown_table(grid, summaries)
  if skipped:
    if report_only:
      table += f"\n{len(skipped)} cell(s) not run yet.\n"
    else:
      table += (
        f"\n{len(skipped)} cell(s) not run: the budget of {grid.budget_minutes} min was spent.\n"
      )
  failures = [f"{name}: {reason}" for name, reason in failed.items()]
  if failures:
    table += f"\n{len(failures)} cell(s) failed:\n" + "".join(f"- {f}\n" for f in failures)
  safe_files.write_atomic(os.path.join(root, "table.md"), table)
  print(table)
  for path in report.make_plots(root, grid, summaries):
    print(f"wrote {path}")
  if failures:
    raise CellsFailedError(
      f"{len(failures)} cell(s) failed ({'; '.join(failures)}); the {len(summaries)} finished "
      f"cell(s) are in {os.path.join(root, 'table.md')}. Fix the grid and run the same command "
      "again: finished cells are kept."
    )
  return summaries
