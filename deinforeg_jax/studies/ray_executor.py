"""A grid's cells as Ray tasks on a Ray cluster (``launch.experiments --executor=ray``).

Each cell is one Ray task, in a worker process of whichever node has the grid's
``cell_resources`` free (e.g. ``{"GPU": 1}``; default ``{"CPU": 1}``): Ray sets the worker's
``CUDA_VISIBLE_DEVICES`` / TPU chips to what it reserved, so at most as many cells run at once as
the cluster has room for.  No more cells are handed to Ray than fit at once, so the grid's budget
and a stop are decided just before each cell starts, as with the local executor.  The task runs
the same ``train_cell`` as a local grid, so its summary is the same; every node must see the
grid root at the same path (``check_shared_folder``, before any cell).

Faults:

* a worker or node that dies mid-cell (kill -9, ``ray stop``, an out-of-memory kill) or whose
  run was stopped by a signal: the cell is started again, up to ``max_retries`` times, and
  resumes from its own checkpoint;
* a cell that raises (a config error, a NaN refusal, a bug): ``CellFailed`` with its one line,
  once; the other cells go on;
* ``stop_requested()`` (the driver got SIGTERM/SIGINT): the running tasks are cancelled, which
  Ray delivers to each worker as SIGINT, so each run saves a checkpoint at its next step as a
  single run does; once every stopped cell has let go of its workdir
  (``workdir_lock``), ``user_errors.Interrupted`` (exit 75): the same command continues.

One line per state change: ``[start]`` (node, pid), ``[done]`` (the grid's metric),
``[failed]`` (the reason), ``[retry]`` (why), each with the tally of done / running / failed /
pending cells.  Ray is the optional extra ``[cluster]``; without it ``import_ray`` says so in one
line.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from deinforeg_jax import user_errors, workdir_lock
from deinforeg_jax.studies.executors import CellFailed, Outcome, Summary
from deinforeg_jax.studies.grid import DEFAULT_RESOURCES, CellRun

RAY_MISSING = (
  "--executor=ray needs Ray, an optional extra: pip install \"deinforeg-jax[cluster]\" (in a "
  "clone: pip install -e \".[cluster]\"), which pins ray==2.60.0."
)
POLL_S = 0.25  # how often the driver looks for a signal while cells run
STOP_TIMEOUT_S = 600.0  # how long stopped cells get to save before the driver gives up waiting


def import_ray():
  """The ``ray`` module, or ``user_errors.UserError`` naming the extra that installs it."""
  try:
    import ray  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise user_errors.UserError(RAY_MISSING) from None
  return ray


def cells_per_node(node_resources: Mapping[str, float], cell: Mapping[str, float]) -> int:
  """How many cells of resources ``cell`` fit on a node at once: ``min_r floor(node_r /
  cell_r)`` over the resources the cell asks for."""
  fits = [int(node_resources.get(name, 0) // amount) for name, amount in cell.items() if amount]
  return min(fits) if fits else 0


# ------------------------------------------------------------------ in the worker


def _cell_task(train_cell, run: CellRun, compilation_cache_dir: str | None) -> Iterator[Any]:
  """A Ray generator task: first where it runs, then the cell's summary.  JAX's persistent
  cache is ``compilation_cache_dir`` unless the node sets ``JAX_COMPILATION_CACHE_DIR``."""
  yield {"node": socket.gethostname(), "pid": os.getpid()}
  if compilation_cache_dir and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    import jax  # pylint: disable=import-outside-toplevel

    jax.config.update("jax_compilation_cache_dir", compilation_cache_dir)
  yield train_cell(run)


def _see_folder(folder: str, path: str, token: str) -> tuple[str, str | None]:
  """On one node: ``(host, problem)``, None when ``path`` holds ``token`` and the node can write
  beside it (``<path>.<host>``)."""
  host = socket.gethostname()
  try:
    with open(path, encoding="utf-8") as f:
      seen = f.read()
  except OSError as error:
    return host, f"cannot read {path} written by the driver ({error.strerror or error})"
  if seen != token:
    return host, f"{folder} is another folder there (it holds another check file)"
  try:
    with open(f"{path}.{host}", "w", encoding="utf-8") as f:
      f.write(token)
  except OSError as error:
    return host, f"cannot write in {folder} ({error.strerror or error})"
  return host, None


# ------------------------------------------------------------------ in the driver


@dataclasses.dataclass
class _Attempt:
  run: CellRun
  number: int  # 1, 2, ...: the first run and its retries
  node: str = ""


class RayExecutor:
  """Cells as Ray tasks on the cluster at ``address`` (``"auto"``, ``HOST:PORT``; None: a
  local Ray instance sized to this machine, shut down at the end).

  ``resources``: one cell's Ray resources (the grid's ``cell_resources``).  ``metric``: the
  summary field the ``[done]`` lines show.  ``stop_requested() -> signal name | None``: asked
  while cells run.  ``compilation_cache_dir``: JAX's persistent cache in the workers.
  """

  def __init__(
    self,
    address: str | None = None,
    resources: Mapping[str, float] | None = None,
    *,
    max_retries: int = 3,
    metric: str = "best_test_accuracy",
    stop_requested: Callable[[], str | None] = lambda: None,
    compilation_cache_dir: str | None = None,
  ):
    self.address = address
    self.resources = dict(resources or DEFAULT_RESOURCES)
    self.max_retries = max_retries
    self.metric = metric
    self.stop_requested = stop_requested
    self.compilation_cache_dir = compilation_cache_dir
    self._ray = None
    self._connected_here = False  # then ray.shutdown at the end (a cluster stays up)

  # ---------------------------------------------------------------- the cluster

  def _connect(self):
    """``ray``, connected (``ray.init`` replaces the SIGTERM handler: put ours back)."""
    ray = import_ray()
    if not ray.is_initialized():
      handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
      ray.init(address=self.address, include_dashboard=False, log_to_driver=True)
      for sig, handler in handlers.items():
        if handler is not None:
          signal.signal(sig, handler)
      self._connected_here = True
    self._ray = ray
    return ray

  def _disconnect(self) -> None:
    if self._connected_here:
      self._ray.shutdown()
      self._connected_here = False

  def _nodes(self) -> list[dict]:
    return [node for node in self._ray.nodes() if node.get("Alive")]

  def _capacity(self) -> int:
    """Cells that fit on the alive nodes at once; ``UserError`` when none fits anywhere."""
    nodes = self._nodes()
    total = sum(cells_per_node(node["Resources"], self.resources) for node in nodes)
    if total == 0:
      have = "; ".join(
        f"{node['NodeManagerAddress']}: {_resource_text(node['Resources'])}" for node in nodes
      )
      raise user_errors.UserError(
        f"no node of the Ray cluster has the resources of one cell, {self.resources} (the grid's "
        f"cell_resources); the nodes have {have}. Lower cell_resources or add nodes."
      )
    return total

  def check_shared_folder(self, folder: str) -> None:
    """Refuse ``folder`` unless every alive node reads what the driver wrote there and can
    write beside it (``UserError`` naming the node and the reason)."""
    ray = self._ray
    from ray.util.scheduling_strategies import (  # pylint: disable=import-outside-toplevel
      NodeAffinitySchedulingStrategy,
    )

    os.makedirs(folder, exist_ok=True)
    token = secrets.token_hex(8)
    path = os.path.join(folder, f".shared-check-{token}")
    with open(path, "w", encoding="utf-8") as f:
      f.write(token)
    see = ray.remote(num_cpus=0, max_retries=0)(_see_folder)
    try:
      answers = ray.get([
        see.options(
          scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        ).remote(folder, path, token)
        for node in self._nodes()
      ])
      problems = [f"on node {host}: {problem}" for host, problem in answers if problem]
      problems += [
        f"on node {host}: what it wrote there is not seen here"
        for host, problem in answers
        if not problem and not os.path.exists(f"{path}.{host}")
      ]
    finally:
      for name in os.listdir(folder):
        if name.startswith(os.path.basename(path)):
          os.remove(os.path.join(folder, name))
    if problems:
      raise user_errors.UserError(
        f"the grid root is not shared by every node of the Ray cluster: {'; '.join(problems)}. "
        "Put --root on storage that every node mounts at the same path (NFS, a bucket through "
        "gcsfuse); docs/cluster.md."
      )

  # ---------------------------------------------------------------- the executor interface

  def describe(self, runs: Sequence[CellRun]) -> list[str]:
    """The nodes, how many cells each takes at once, and where the first cells would go."""
    self._connect()
    try:
      slots = [
        (node["NodeManagerAddress"], cells_per_node(node["Resources"], self.resources))
        for node in self._nodes()
      ]
      lines = [
        f"ray: {len(slots)} node(s), {sum(n for _, n in slots)} cell(s) at once, each "
        f"{self.resources}:"
      ]
      order = iter(runs)
      for address, count in slots:
        first = [run.name for _, run in zip(range(count), order)]
        lines.append(f"  {address}: {count} at once; first {', '.join(first) or '-'}")
      lines.append(f"  then each of the other cells where one ends ({len(runs)} in all)")
      return lines
    finally:
      self._disconnect()

  def run(
    self,
    runs: Sequence[CellRun],
    train_cell: Callable[[CellRun], Summary],
    may_start: Callable[[CellRun], bool],
  ) -> Iterator[tuple[CellRun, Outcome]]:
    if not runs:
      return
    ray = self._connect()
    try:
      self.check_shared_folder(os.path.dirname(runs[0].summary_path))
      yield from self._run(ray, runs, train_cell, may_start)
    finally:
      self._disconnect()

  def _run(self, ray, runs, train_cell, may_start) -> Iterator[tuple[CellRun, Outcome]]:
    task = ray.remote(max_retries=0, **_task_resources(self.resources))(_cell_task)
    pending = collections.deque(runs)
    running: dict[Any, _Attempt] = {}
    tally = collections.Counter()

    def say(tag: str, text: str) -> None:
      counts = (
        f"done {tally['done']}, running {len(running)}, failed {tally['failed']}, "
        f"pending {len(pending)}"
      )
      print(f"[{tag}]{' ' * max(1, 8 - len(tag))}{text} ({counts})", flush=True)

    def submit(attempt: _Attempt) -> None:
      running[task.remote(train_cell, attempt.run, self.compilation_cache_dir)] = attempt

    while pending or running:
      signal_name = self.stop_requested()
      if signal_name:
        self._stop(list(running.items()), signal_name, len(pending))
      capacity = self._capacity()
      while pending and len(running) < capacity:
        run = pending.popleft()
        try:
          if may_start(run):
            submit(_Attempt(run, 1))
        except user_errors.Interrupted:  # a signal between our check and the grid's
          self._stop(list(running.items()), self.stop_requested() or "a signal", len(pending))
      if not running:
        continue
      ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
      for generator in ready:
        attempt = running.pop(generator)
        try:
          value = ray.get(next(generator))
        except StopIteration:  # cannot happen: the task yields twice or raises
          value = RuntimeError("the cell's task ended without a summary")
        except ray.exceptions.RayError as error:
          value = error
        if isinstance(value, dict) and not attempt.node:  # the task's first item: where
          attempt.node = value["node"]
          running[generator] = attempt
          say("start", f"{attempt.run.name} on node {value['node']} (pid {value['pid']}), "
              f"attempt {attempt.number}")
          continue
        if isinstance(value, dict):
          tally["done"] += 1
          say("done", f"{attempt.run.name} on node {attempt.node}: "
              f"{self.metric}={value.get(self.metric)}")
          yield attempt.run, value
          continue
        reason, retry = _failure(ray, value)
        if retry and attempt.number <= self.max_retries:
          submit(_Attempt(attempt.run, attempt.number + 1))
          say("retry", f"{attempt.run.name}: {reason}; attempt {attempt.number + 1} of "
              f"{self.max_retries + 1} resumes from its checkpoint")
          continue
        if retry:
          reason = f"{reason}, {attempt.number} time(s): no retry left (max_retries)"
        tally["failed"] += 1
        say("failed", f"{attempt.run.name}: {reason}")
        yield attempt.run, CellFailed(reason)

  def _stop(self, running: list[tuple[Any, _Attempt]], signal_name: str, pending: int) -> None:
    """Cancel the running cells (each saves at its next step), wait until each has let go of
    its workdir, then raise ``user_errors.Interrupted``."""
    for generator, _ in running:
      self._ray.cancel(generator)
    names = [attempt.run.name for _, attempt in running]
    print(
      f"{signal_name} received: stopping {len(names)} running cell(s), each saves a checkpoint "
      "at its next step ...", flush=True,
    )
    deadline = time.monotonic() + STOP_TIMEOUT_S
    busy = [attempt.run.workdir for _, attempt in running]
    while busy and time.monotonic() < deadline:
      busy = [workdir for workdir in busy if _held(workdir)]
      if busy:
        time.sleep(0.2)
    unsaved = f"; {', '.join(busy)} did not stop within {STOP_TIMEOUT_S:.0f} s" if busy else ""
    raise user_errors.Interrupted(
      f"{signal_name} received: stopped {len(names)} running cell(s) "
      f"({', '.join(names) or 'none'}), each with a checkpoint of its last completed step"
      f"{unsaved}; {pending} cell(s) not started, finished cells kept. Run the same command "
      "again to continue."
    )


def _held(workdir: str) -> bool:
  """Whether a run holds ``workdir``'s lock (``workdir_lock``; a lock file alone is not)."""
  if not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME)):
    return False
  try:
    with workdir_lock.WorkdirLock(workdir, info=lambda _: None):
      return False
  except workdir_lock.WorkdirLockedError:
    return True


def _failure(ray, error: BaseException) -> tuple[str, bool]:
  """``(one-line reason, whether a retry may succeed)`` of a cell's task that failed.

  Retried: the worker or its node died (any Ray error but the task's own exception), or the
  run was stopped by a signal (``user_errors.Interrupted``: a node going down).  Not retried:
  the task's own exception, one line as the command line would print it (a bug: its type and
  first line; its traceback is printed).
  """
  if not isinstance(error, ray.exceptions.RayTaskError):
    first = next((line for line in str(error).splitlines() if line.strip()), "")
    return f"the worker was lost ({type(error).__name__}: {first})", True
  cause = error.cause
  if isinstance(cause, user_errors.Interrupted):
    return f"the run was stopped ({cause})", True
  message, _ = user_errors.one_line(cause)
  if message is None:
    print(error, flush=True)  # a bug: the worker's traceback
    first = next((line for line in str(cause).splitlines() if line.strip()), "")
    message = f"{type(cause).__name__}: {first}"
  return message, False


def _task_resources(resources: Mapping[str, float]) -> dict[str, Any]:
  """``ray.remote`` options of one cell: ``num_cpus``, ``num_gpus`` and custom ``resources``."""
  rest = {k: v for k, v in resources.items() if k not in ("CPU", "GPU")}
  options = {"num_cpus": resources.get("CPU", 0), "num_gpus": resources.get("GPU", 0)}
  return {**options, "resources": rest} if rest else options


def _resource_text(resources: Mapping[str, float]) -> str:
  """``CPU=8, GPU=2``: a node's resources without Ray's bookkeeping ones."""
  bookkeeping = ("node:", "memory", "object_store_memory")
  return ", ".join(
    f"{name}={amount:g}" for name, amount in sorted(resources.items())
    if not name.startswith(bookkeeping)
  )
