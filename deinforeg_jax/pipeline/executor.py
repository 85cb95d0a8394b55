"""The pipeline executor: per-stage states on their devices and the tick schedules.

See the package docstring for the schedules, staleness and overlap.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import SingleDeviceSharding

from deinforeg_jax import rules, stack, steps, xla_cpu
from deinforeg_jax.config_error import ConfigError

LOCAL_RULES = ("deinforeg",)  # rules whose loss is a sum of per-block local losses

SCHEDULES = ("pipelined", "synchronous")
DISPATCH_MODES = ("auto", "threads", "ticks")


@dataclasses.dataclass
class EpochRecord:
  """What one epoch did, per stage and per batch (host values)."""

  batch_ids: list[list[int]]  # per stage, in the order the stage trained on them
  updates: list[int]  # per stage: optimizer updates applied (``state.step`` delta)
  busy_s: list[float | None]  # per stage: seconds from dequeue to result ready (None: "ticks")
  ticks: list[list[int]] | None  # per stage: the tick of each batch (None: "threads")
  wall_s: float
  metrics: list[dict[str, np.ndarray]]  # per batch: per-block arrays + summed "total_loss"
  schedule: str
  dispatch: str


class _Stop(Exception):
  """Another stage failed; this one stops quietly."""


_END = object()


class Pipeline:
  """Stage programs of a ``DecoupledStack`` over ``devices`` (one stage per device).

  ``model`` is the full stack (``models.create_model``); ``bounds`` the block range
  of each stage (``partition_blocks``); ``input_shape`` one example's shape.  Stage
  ``k`` runs ``stage_model(model, *bounds[k])`` with the one step builder of
  ``steps`` (``make_train_step`` / ``make_eval_step``): its jitted programs are
  ``train_steps[k]``, ``eval_steps[k]`` and ``check_steps[k]``, placed by their arguments.
  """

  def __init__(
    self,
    model: stack.DecoupledStack,
    tx: optax.GradientTransformation,
    objective: rules.Objective,
    loss_cfg,
    input_shape: tuple[int, ...],
    bounds: Sequence[tuple[int, int]],
    devices: Sequence[jax.Device],
    log_grad_norms: bool = False,
  ):
    if not isinstance(model, stack.DecoupledStack):
      raise TypeError(
        "pipeline training needs a DecoupledStack (a local-loss rule such as "
        f"{LOCAL_RULES}); got {type(model).__name__}."
      )
    if len(devices) < len(bounds):
      raise ValueError(f"{len(bounds)} stages need {len(bounds)} devices, got {len(devices)}.")
    if (
      [b for _, b in bounds][:-1] != [a for a, _ in bounds][1:]
      or bounds[0][0] != 0
      or bounds[-1][1] != len(model.blocks)
    ):
      raise ValueError(
        f"stage ranges {bounds} must cover blocks 0..{len(model.blocks) - 1} contiguously."
      )
    self.model, self.tx, self.bounds = model, tx, tuple(bounds)
    self.devices = list(devices[: len(bounds)])
    self.num_classes = model.num_classes
    self.stages = [stage_model(model, a, b) for a, b in bounds]
    self.input_shapes = stage_input_shapes(self.stages, input_shape)
    self.train_steps = [
      jax.jit(
        steps.make_train_step(
          s, objective, tx, model.num_classes, loss_cfg, log_grad_norms=log_grad_norms
        ),
        donate_argnums=0,
        compiler_options=xla_cpu.train_step_options(device.platform),
      )
      for s, device in zip(self.stages, self.devices)
    ]
    self.eval_steps = [jax.jit(steps.make_eval_step(s)) for s in self.stages]
    self.check_steps = [
      jax.jit(steps.make_check_step(s, objective, model.num_classes, loss_cfg))
      for s in self.stages
    ]
    self._inits: dict[jax.Device, Callable] = {}

  @property
  def num_stages(self) -> int:
    return len(self.stages)

  # ---------------------------------------------------------------- state

  def create_states(self, rng: jax.Array) -> list[steps.TrainState]:
    """Every stage's initial ``TrainState`` (traceable), equal to the full stack's init at
    ``rng``."""
    return [
      steps.create_train_state(stage, self.tx, rng, shape)
      for stage, shape in zip(self.stages, self.input_shapes)
    ]

  def abstract_states(self) -> list[steps.TrainState]:
    """``create_states``' shapes and dtypes, per stage (``jax.eval_shape``: nothing is built)."""
    return jax.eval_shape(self.create_states, jax.random.key(0))

  def init(self, rng: jax.Array, device: jax.Device | None = None) -> list[steps.TrainState]:
    """Per-stage states on their devices, equal to the full stack's init at ``rng``.

    All stages are initialised by one program on ``device`` (default: stage 0's;
    one compilation instead of one per stage), then moved to their devices.
    """

    device = device or self.devices[0]
    if device not in self._inits:
      self._inits[device] = jax.jit(
        self.create_states,
        out_shardings=SingleDeviceSharding(device),
        compiler_options=xla_cpu.init_options(device.platform),
      )
    states = self._inits[device](rng)
    return [jax.device_put(s, d) for s, d in zip(states, self.devices)]

  def to_train_state(self, states: Sequence[steps.TrainState]) -> steps.TrainState:
    """The one-program ``TrainState`` holding every stage's subtrees (arrays stay on their
    stage's device; shared counters come from stage 0)."""
    params = {k: v for s in states for k, v in s.params.items()}
    batch_stats = {k: v for s in states for k, v in s.batch_stats.items()}
    flat, treedef = jax.tree_util.tree_flatten_with_path(jax.eval_shape(self.tx.init, params))
    leaves = [dict(jax.tree_util.tree_flatten_with_path(s.opt_state)[0]) for s in states]
    opt_state = jax.tree_util.tree_unflatten(
      treedef, [leaves[self._owner(path)][path] for path, _ in flat]
    )
    return steps.TrainState(
      step=states[0].step, params=params, batch_stats=batch_stats, opt_state=opt_state
    )

  def from_train_state(self, state: steps.TrainState) -> list[steps.TrainState]:
    """Split a one-program ``TrainState`` into per-stage states on the stage devices."""
    full = dict(jax.tree_util.tree_flatten_with_path(state.opt_state)[0])
    out = []
    for stage, (a, b), device in zip(self.stages, self.bounds, self.devices):
      names = [stack.block_name(i) for i in range(a, b)]
      params = {n: state.params[n] for n in names}
      template = jax.eval_shape(self.tx.init, params)
      flat, treedef = jax.tree_util.tree_flatten_with_path(template)
      opt_state = jax.tree_util.tree_unflatten(treedef, [full[path] for path, _ in flat])
      out.append(
        jax.device_put(
          steps.TrainState(
            step=state.step,
            params=params,
            batch_stats={n: state.batch_stats[n] for n in names if n in state.batch_stats},
            opt_state=opt_state,
          ),
          device,
        )
      )
    return out

  def _owner(self, path) -> int:
    """The stage owning an opt-state leaf: by its ``block_XX`` key, else stage 0 (counters)."""
    for key in path:
      name = getattr(key, "key", None)
      if isinstance(name, str) and name.startswith("block_"):
        index = int(name.removeprefix("block_"))
        return next(k for k, (a, b) in enumerate(self.bounds) if a <= index < b)
    return 0

  # ---------------------------------------------------------------- training

  def train_epoch(
    self,
    states: list[steps.TrainState],
    batches: Iterable[dict[str, np.ndarray]],
    schedule: str = "pipelined",
    dispatch: str = "auto",
    on_batch: Callable[[int, dict[str, Any]], None] | None = None,
    first_batch: int = 0,
    queue_size: int = 1,
  ) -> tuple[list[steps.TrainState], EpochRecord]:
    """Train every stage once on every batch (fill and drain included).

    Batches are numbered from ``first_batch``.  ``on_batch(batch_id, {"total_loss":
    ...})`` is called once a batch has left the last stage.  ``dispatch``: "ticks"
    (one host thread, asynchronous dispatch; "auto") or "threads" (one host thread
    per stage).  ``queue_size``: how many batches may wait between two stages
    ("threads"), or how many ticks beyond ``num_stages`` the host may run ahead
    of the devices ("ticks").  Returns the new states and an ``EpochRecord``.
    """
    if schedule not in SCHEDULES:
      raise ConfigError(
        f"config.parallel.pipeline_schedule={schedule!r} is unknown; choose one of {SCHEDULES}."
      )
    if dispatch not in DISPATCH_MODES:
      raise ConfigError(
        f"config.parallel.pipeline_dispatch={dispatch!r} is unknown; choose one "
        f"of {DISPATCH_MODES}."
      )
    if schedule == "synchronous":
      dispatch = "synchronous"
    elif dispatch == "auto":
      dispatch = "ticks"
    run = {
      "synchronous": self._run_synchronous,
      "threads": self._run_threads,
      "ticks": self._run_ticks,
    }[dispatch]
    start_steps = [int(s.step) for s in states]
    ctx = _EpochContext(self.num_stages, on_batch, self.devices[-1])
    start = time.perf_counter()
    states = run(list(states), enumerate(batches, first_batch), ctx, queue_size)
    jax.block_until_ready(states)
    wall = time.perf_counter() - start
    record = EpochRecord(
      batch_ids=ctx.batch_ids,
      updates=[int(s.step) - n for s, n in zip(states, start_steps)],
      busy_s=ctx.busy if dispatch != "ticks" else [None] * self.num_stages,
      ticks=ctx.ticks if dispatch != "threads" else None,
      wall_s=wall,
      metrics=ctx.merged_metrics(),
      schedule=schedule,
      dispatch=dispatch,
    )
    return states, record

  def _stage(self, k: int, state, x, labels):
    x, labels = jax.device_put((x, labels), self.devices[k])
    state, metrics, h = self.train_steps[k](state, x, labels)
    return state, h, metrics, labels

  def _run_synchronous(self, states, batches, ctx, queue_size):
    del queue_size
    for tick, (t, batch) in enumerate(batches):
      x, labels = steps.model_inputs(batch), batch["label"]
      for k in range(self.num_stages):
        start = time.perf_counter()
        states[k], x, metrics, labels = self._stage(k, states[k], x, labels)
        jax.block_until_ready((x, metrics))  # stage k+1 waits for stage k: no overlap
        ctx.busy[k] += time.perf_counter() - start
        ctx.done(k, t, metrics, tick)
    return states

  def _run_ticks(self, states, batches, ctx, queue_size):
    pending, exhausted, tick = [None] * self.num_stages, False, 0
    in_flight = collections.deque()  # per tick: its stages' outputs, to bound the host's lead
    while not exhausted or any(p is not None for p in pending):
      if not exhausted:
        t, batch = next(batches, (None, None))
        exhausted = t is None
        if not exhausted:
          pending[0] = (t, steps.model_inputs(batch), batch["label"])
      outputs = []
      for k in reversed(range(self.num_stages)):  # stage k+1 consumes before stage k produces
        if pending[k] is None:
          continue
        (t, x, labels), pending[k] = pending[k], None
        states[k], h, metrics, labels = self._stage(k, states[k], x, labels)
        ctx.done(k, t, metrics, tick)
        outputs.append(metrics)
        if k + 1 < self.num_stages:
          pending[k + 1] = (t, h, labels)
      in_flight.append(outputs)
      if len(in_flight) > self.num_stages + queue_size:
        jax.block_until_ready(in_flight.popleft())
      tick += 1
    return states

  def _run_threads(self, states, batches, ctx, queue_size):
    queues = [queue.Queue(maxsize=queue_size) for _ in range(self.num_stages)]
    failed = threading.Event()
    errors: list[BaseException] = []

    def put(q, item):
      while not failed.is_set():
        try:
          q.put(item, timeout=0.05)
          return
        except queue.Full:
          pass
      raise _Stop

    def get(q):
      while not failed.is_set():
        try:
          return q.get(timeout=0.05)
        except queue.Empty:
          pass
      raise _Stop

    def worker(k):
      try:
        while (item := get(queues[k])) is not _END:
          t, x, labels = item
          jax.block_until_ready(x)  # waiting for stage k-1 is not stage k's busy time
          start = time.perf_counter()
          states[k], h, metrics, labels = self._stage(k, states[k], x, labels)
          ctx.done(k, t, metrics)  # before the hand-off, so stage k+1 finds it
          if k + 1 < self.num_stages:
            put(queues[k + 1], (t, h, labels))
          jax.block_until_ready(metrics)
          ctx.busy[k] += time.perf_counter() - start
        if k + 1 < self.num_stages:
          put(queues[k + 1], _END)
      except _Stop:
        pass
      except BaseException as e:  # noqa: BLE001  # re-raised in the caller
        errors.append(e)
        failed.set()

    threads = [
      threading.Thread(target=worker, args=(k,), name=f"pipeline-stage-{k}", daemon=True)
      for k in range(self.num_stages)
    ]
    for thread in threads:
      thread.start()
    try:
      for t, batch in batches:
        put(queues[0], (t, steps.model_inputs(batch), batch["label"]))
      put(queues[0], _END)
    except _Stop:
      pass
    except BaseException:
      failed.set()
      raise
    finally:
      for thread in threads:
        thread.join()
    if errors:
      raise errors[0]
    return states

  # ---------------------------------------------------------------- evaluation

  def check(self, states: Sequence[steps.TrainState], inputs, labels) -> dict[str, Any]:
    """``steps.make_check_step``'s output for the whole stack: the stages' losses summed
    and their ``finite`` maps merged (host values)."""
    x, total, finite = inputs, 0.0, {}
    for k, (state, device) in enumerate(zip(states, self.devices)):
      x, labels = jax.device_put((x, labels), device)
      out, x = self.check_steps[k](state, x, labels)
      out = jax.device_get(out)
      total += float(out["total_loss"])
      finite.update({name: ok for name, ok in out["finite"].items() if name != "optimizer state"})
      finite["optimizer state"] = finite.get("optimizer state", True) and out["finite"]["optimizer state"]
    return {"total_loss": total, "finite": finite}

  def count_correct(self, states: Sequence[steps.TrainState], batch: dict[str, Any]):
    """``(correct [num_blocks], count)`` of one masked batch through all stages (on the
    last stage's device), for ``steps.accuracy``."""
    x, labels, mask = steps.model_inputs(batch), batch["label"], batch["mask"]
    correct = []
    for k, (state, device) in enumerate(zip(states, self.devices)):
      x, labels, mask = jax.device_put((x, labels, mask), device)
      out, x = self.eval_steps[k](state, x, labels, mask)
      correct.append(out["correct"])
    last = self.devices[-1]
    return jnp.concatenate(jax.device_put(correct, last)), jnp.sum(mask)


def stage_model(model: stack.DecoupledStack, first: int, stop: int) -> stack.DecoupledStack:
  """Blocks ``[first, stop)`` of ``model``, named as in the full stack, returning the carry."""
  return model.clone(blocks=tuple(model.blocks[first:stop]), first_block=first, with_carry=True)


def stage_input_shapes(
  stages: Sequence[stack.DecoupledStack], input_shape: tuple[int, ...]
) -> list[tuple[int, ...]]:
  """One example's input shape for each stage (the previous stage's output shape)."""
  shapes, shape = [], tuple(input_shape)
  for stage in stages:
    shapes.append(shape)
    outputs, _ = jax.eval_shape(
      functools.partial(stage.init_with_output, train=False),
      jax.random.key(0),
      jax.ShapeDtypeStruct((2, *shape), jnp.float32),
    )
    shape = tuple(outputs["carry"].shape[1:])
  return shapes


class _EpochContext:
  """Thread-safe bookkeeping of one epoch: which batches each stage saw, metrics, busy time."""

  def __init__(self, num_stages: int, on_batch, last_device):
    self.batch_ids: list[list[int]] = [[] for _ in range(num_stages)]
    self.busy: list[float] = [0.0] * num_stages
    self.ticks: list[list[int | None]] = [[] for _ in range(num_stages)]
    self._metrics: list[dict[int, dict]] = [{} for _ in range(num_stages)]
    self._on_batch, self._last_device = on_batch, last_device

  def done(self, k: int, t: int, metrics: dict, tick: int | None = None) -> None:
    """Stage ``k`` trained on batch ``t``; call before handing batch ``t`` to stage ``k+1``."""
    # Each stage writes only its own entries, and the queue hand-off orders stage k's
    # write before stage k+1 (the last stage) reads it.
    self.batch_ids[k].append(t)
    self.ticks[k].append(tick)
    self._metrics[k][t] = metrics
    if self._on_batch is not None and k == len(self._metrics) - 1:
      totals = [jax.device_put(m[t]["total_loss"], self._last_device) for m in self._metrics]
      self._on_batch(t, {"total_loss": functools.reduce(jnp.add, totals)})

  def merged_metrics(self) -> list[dict[str, np.ndarray]]:
    """Per batch: per-block arrays concatenated over stages, ``total_loss`` summed."""
    host = jax.device_get(self._metrics)
    merged = []
    for t in sorted(host[-1]):
      per_stage = [stage_metrics[t] for stage_metrics in host]
      row = {
        name: np.concatenate([np.atleast_1d(m[name]) for m in per_stage])
        for name in per_stage[0]
        if name != "total_loss"
      }
      row["total_loss"] = np.float32(sum(m["total_loss"] for m in per_stage))
      merged.append(row)
    return merged
