"""Stopping a run at a safe point on SIGTERM / SIGINT or a multi-host preemption notice.

``StopRequests`` turns the signal into a request that the training loop checks before every
step; the loop saves the last completed step and raises ``Preempted``, so the same command
continues exactly there.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

from deinforeg_jax.user_errors import Interrupted


class Preempted(Interrupted):
  """SIGTERM/SIGINT stopped the run at a safe point; the message says what was saved.

  ``saved_step``: the step checkpointed on the way out (None: nothing new was saved, because no
  step had completed since ``latest_step``, the checkpoint a rerun resumes from, or None when
  there is none).
  """

  def __init__(
    self, signal_name: str, when: str, workdir: str, saved_step: int | None, latest_step=None
  ):
    if saved_step is not None:
      what = f"saved a checkpoint at step {saved_step}, the last completed step"
    elif latest_step is not None:
      what = (
        f"no step had completed since the checkpoint at step {latest_step}, which a rerun "
        "resumes from; nothing new was saved"
      )
    else:
      what = "no training step had completed and there is no checkpoint yet; nothing was saved"
    super().__init__(
      f"{signal_name} received {when}: {what}. Run the same command again to continue "
      f"(workdir {workdir})."
    )
    self.saved_step = saved_step
    self.latest_step = saved_step if saved_step is not None else latest_step


class StopRequests:
  """Turns SIGTERM/SIGINT into a request to stop at the next safe point, for the whole run.

  One process: Python signal handlers set a flag, checked before every train step, at the end
  of each start-up stage and around the final evaluation (``check``); a second SIGINT stops at
  once (``KeyboardInterrupt``).  Several processes: JAX's preemption notice
  (``jax.distributed``) is polled with ``multihost_utils.reached_preemption_sync_point``, so
  every process stops after the same step.  A signal that arrived after the last safe point (the
  run completed) is passed on to the handler it replaced, when that is a Python function that is
  not Python's own ``KeyboardInterrupt``: a grid (``launch.experiments``) then stops before its
  next cell instead of losing the request.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.signal_name = ""
    self._signum = None
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._request)
    return self

  def __exit__(self, error_type, *_):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    previous = self._previous.get(self._signum)
    if error_type is None and callable(previous) and previous is not signal.default_int_handler:
      signal.raise_signal(self._signum)  # unanswered: the run completed after it arrived

  def _request(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signal_name and signum == signal.SIGINT:
      raise KeyboardInterrupt(f"a second {name}: stopped at once")
    if not self.signal_name:
      print(f"{name} received: stopping at the next safe point ...", flush=True)
      self.signal_name, self._signum = name, signum

  def requested(self, step: int) -> bool:
    """Whether to stop before training step ``step`` (every process answers alike)."""
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      self.signal_name = self.signal_name or "a preemption notice"
    return bool(self.signal_name)

  def check(self, when: str, latest_step: int | None) -> None:
    """Outside the train steps (nothing unsaved): raise ``Preempted`` if a signal arrived."""
    if self.signal_name:
      raise Preempted(self.signal_name, when, self.workdir, None, latest_step)

  def until_requested(self, batches, step: int):
    """``batches`` until a stop is requested (checked before each step)."""
    for batch in batches:
      if self.requested(step):
        return
      step += 1
      yield batch
