"""A profiler trace of train steps A..B: ``config.train.profile_steps = "A:B"`` (``""``: off).

Steps count from 1, as ``results.json``'s ``steps`` and the checkpoints do (step ``n`` is the
``n``-th train step of the run).  The trace starts just before step A (after waiting for step
A - 1, so it holds steps A..B only) and stops once step B's outputs are ready; a resumed run
already past A traces from its first step.  ``jax.profiler`` writes it to
``<workdir>/profile/plugins/profile/<time>/<host>.xplane.pb``, which TensorBoard's profile
plugin (``pip install tensorboard-plugin-profile; tensorboard --logdir <workdir>/profile``) and
XProf (``xprof --logdir <workdir>/profile``) show: per-op device time, the step's timeline,
memory.  Every process of a multi-host job writes its own host's file there.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax

SYNTAX = 'must be "" (off) or "A:B", train steps 1 <= A <= B (e.g. "3:5")'


def parse(spec: str) -> tuple[int, int] | None:
  """``"A:B"`` -> ``(A, B)``; ``""`` -> None.  Raises ValueError for anything else."""
  if spec == "":
    return None
  first, sep, last = spec.partition(":")
  if not sep or not first.strip().isdigit() or not last.strip().isdigit():
    raise ValueError(f"{spec!r} {SYNTAX}")
  first, last = int(first), int(last)
  if not 1 <= first <= last:
    raise ValueError(f"{spec!r} {SYNTAX}")
  return first, last


def is_valid(spec) -> bool:
  """Whether ``spec`` is a valid ``config.train.profile_steps``."""
  try:
    parse(spec)
  except (ValueError, AttributeError):
    return False
  return True


class StepProfiler:
  """Traces the train steps ``config.train.profile_steps`` names; a context manager that stops
  a trace still running when the run ends early (an error, a stop request, fewer steps)."""

  def __init__(self, spec: str, workdir: str, info: Callable[[str], None]):
    self.steps = parse(spec)
    self.directory = os.path.join(workdir, "profile")
    self._info = info
    self._tracing, self._first, self._done = False, 0, 0

  def around(self, step: int, on_step: Callable[[dict], None]) -> Callable[[dict], None]:
    """``on_step`` for a segment that starts after ``step`` steps: it starts and stops the
    trace at the right steps."""
    if self.steps is None or step >= self.steps[1]:
      return on_step
    first, last = self.steps
    self._done = step
    if step >= first - 1:
      self._start()

    def traced(metrics: dict[str, Any]) -> None:
      on_step(metrics)
      self._done += 1
      if self._done == first - 1:
        jax.block_until_ready(metrics)  # the trace holds steps first..last only
        self._start()
      elif self._done == last:
        jax.block_until_ready(metrics)
        self._stop()

    return traced

  def _start(self) -> None:
    if not self._tracing:
      jax.profiler.start_trace(self.directory)
      self._tracing, self._first = True, self._done + 1

  def _stop(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
      self._info(
        f"profile of train steps {self._first}-{self._done} in {self.directory} (tensorboard "
        f"--logdir {self.directory}, with tensorboard-plugin-profile; or xprof)"
      )

  def __enter__(self) -> "StepProfiler":
    return self

  def __exit__(self, *_) -> None:
    self._stop()
