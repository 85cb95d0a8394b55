"""A run's start-up: the compilation cache it reads, and the time it takes to its first step.

``RunStart`` is made when a run starts (``train.train_and_evaluate``): it points JAX's
persistent compilation cache at ``config.train.compile_cache`` (``compile_cache.use``), counts
the programs read from it and compiled, and measures ``time_to_first_step_s``: seconds from the
run's start to its first completed train step (waiting for that step's outputs).

A run's start is the start of its process for the first run a process makes (on a command
line the interpreter's start-up, the imports, JAX's initialisation, loading the data, building
and compiling the programs or reading them from the cache all count), and the call of
``train_and_evaluate`` for every later run in the same process (the next cells of a grid, a
notebook's second run; in a notebook the first run's figure counts the time before its call
too).  The process's start is read from Linux's ``/proc`` (``/proc/uptime`` less the
process's start time in ``/proc/self/stat``, 10 ms resolution); elsewhere every run counts from
its call.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax

from deinforeg_jax import compile_cache

_runs_started = 0  # runs this process has started; only the first counts from the process start


def process_age_s() -> float | None:
  """Seconds since this process started (Linux), else None."""
  try:
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    with open("/proc/self/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: starttime
  except (OSError, ValueError, IndexError):
    return None


class RunStart:
  """The start of one run: its clock, and the compilation cache it uses (``folder``: ``""``
  for none)."""

  def __init__(self, folder: str):
    global _runs_started
    age = process_age_s() if _runs_started == 0 else None
    _runs_started += 1
    self.since = "the process start" if age is not None else "the train_and_evaluate call"
    self._origin = time.monotonic() - (age or 0.0)
    self.cache_dir = compile_cache.use(folder)
    self._programs = compile_cache.Counter()
    self.first_step_s: float | None = None

  def around(self, on_step: Callable[[dict], None]) -> Callable[[dict], None]:
    """``on_step`` that, after the run's first step, waits for its outputs and reads the clock."""
    if self.first_step_s is not None:
      return on_step

    def first(metrics: dict[str, Any]) -> None:
      on_step(metrics)
      if self.first_step_s is None:
        jax.block_until_ready(metrics)
        self.first_step_s = time.monotonic() - self._origin

    return first

  def report(self, info: Callable[[str], None]) -> dict[str, Any]:
    """The ``results.json`` fields (``time_to_first_step_s``, ``compile_cache``: its folder and
    the programs read and compiled), after saying them with ``info``."""
    programs = self._programs.counts()
    first = (
      f"first train step done {self.first_step_s:.1f} s after {self.since}"
      if self.first_step_s is not None else "no train step in this run"
    )
    cache = (
      f"compilation cache {self.cache_dir}: {programs['read']} programs read, "
      f"{programs['compiled']} compiled" if self.cache_dir else "no compilation cache"
    )
    info(f"{first}; {cache}")
    return {
      "time_to_first_step_s": self.first_step_s,
      "compile_cache": {"dir": self.cache_dir, **programs},
    }
