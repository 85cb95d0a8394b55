"""Pipeline-parallel decoupled training: groups of consecutive blocks on their own devices.

A *stage* is a run of consecutive blocks ``[start, stop)`` placed on one device
with its own parameters, BatchNorm statistics and optimizer state (the subtrees
``params["block_XX"]`` of the one-program ``TrainState``).  At every tick each
stage runs forward, its local losses, its backward pass and its optimizer
update on the input the previous stage sent at the previous tick, then sends
the detached activation ``stop_gradient(h)`` and the labels on to the next
stage.  No message ever flows backwards (SPEC 10).

Schedules (``config.parallel.pipeline_schedule``):

* ``"pipelined"``: at tick ``t`` stage ``k`` trains on batch ``t - k``; the
  pipeline fills at the start of each epoch and drains at its end, so every
  batch trains every stage exactly once per epoch (``T + K - 1`` ticks for
  ``T`` batches and ``K`` stages).
* ``"synchronous"``: at tick ``t`` all stages train on batch ``t`` one after
  another and wait for each other (a barrier per tick): no overlap.

**Staleness.**  In the pipelined schedule stage ``k`` trains at tick ``t`` on
batch ``t - k``, whose activation went through stages ``0 .. k-1`` during ticks
``t - k .. t - 1``: with parameter versions up to ``k`` ticks older than the
ones those stages hold at tick ``t`` (wall-clock staleness ``k``).  Measured in
*batches* the staleness is zero: stage ``j`` processed batch ``s`` with the
parameters it had after ``s`` updates, exactly the ones the one-program step
(``train.make_train_step``) uses for batch ``s``, and the forward pass that
made the activation is the one whose loss stage ``j`` then minimised (the
pre-update parameters, as in the one-program step).  Because decoupled blocks
exchange no gradients, pipelining only reorders independent work in time:
**both schedules reproduce the one-program trajectory** (up to floating-point
reassociation; ``tests/test_pipeline.py`` checks both at ``rtol=1e-5``, and on
CPU they agree bit for bit).  This holds for per-parameter optimizers (LARS,
Adam, SGD in ``optim``); a transform coupling all parameters (global-norm
clipping) would differ, and so would evaluating mid-epoch without a drain.

**MPMD, not SPMD.**  Each stage is its own jitted program committed to its
device (MPMD).  An SPMD pipeline (``jax.shard_map`` over a ``stage`` axis with
``jax.lax.ppermute``) needs one program whose per-device state and activations
have one shape; the blocks of a VGG/ResNet stack differ in activation shape
(``32x32x128`` ... ``2x2x512``), parameter count and code, so SPMD needs every
stage's state and activation raveled into padded buffers and a ``lax.switch``
on the stage index.  ``benchmarks/pipeline.py --spmd`` times such a prototype
(its states match MPMD to a relative L2 difference of 7e-7): on XLA:CPU a
stage step inside ``lax.switch``/``lax.cond`` ran 20x slower than the same step
on its own (1.83 s vs 0.089 s, SPEC VGG at width 1/8, batch 32), so a 2-stage
epoch of 4 batches took 12.8 s vs 0.42 s for MPMD (compile and warm-up 17.6 s vs
10.3 s).  Besides,
padding costs ``K x`` the largest stage's state and the per-tick re-ravelling
copies every stage's state.  MPMD keeps each stage's native layout and memory,
allows stages of unequal shape and work (balanced by cost), and compiles each
stage on its own.

**Overlap.**  ``dispatch="ticks"`` (the default) runs the tick schedule from one
host thread and relies on asynchronous dispatch: it never waits for a result
inside a tick (the host may run ``num_stages + queue_size`` ticks ahead), so
each device works through its own queue.  This overlaps GPUs/TPUs and, as
measured here, fake CPU devices too: two 400-step 128x128 matmul loops on two
CPU devices took 15.8 ms for one, 32.0 ms for two when the host waited after
each, 16.8 ms dispatched from one thread without waiting, 18.7 ms from two
threads (DESIGN 5 saw one thread serialise; here that happens only when the
host waits between calls).  ``dispatch="threads"`` runs one host thread per stage with bounded
queues; it waits for each step, which gives per-stage busy times.  Both run
the same per-stage updates in the same order.

Stage balancing assigns blocks to stages by contiguous min-max partition of
per-block costs: XLA's FLOP estimate of a one-block train step
(``Lowered.cost_analysis()``), measured step time, or a uniform cost.
``StagePlan.ideal_speedup`` is ``total cost / max stage cost``.

Entry point for the launcher (``config.parallel.mode == "pipeline"``):
``train_pipelined(config, workdir)``, which returns the same results dict as
``train.train_and_evaluate`` plus a ``"pipeline"`` entry.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, SingleDeviceSharding

from deinforeg_jax import checkpoint, optim, parallel, rules, stack, train
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data import (
  eval_batches,
  load_dataset,
  make_augment,
  steps_per_epoch,
  train_batches,
)
from deinforeg_jax.reporting import ProgressBar, RunLog

SCHEDULES = ("pipelined", "synchronous")
DISPATCH_MODES = ("auto", "threads", "ticks")
BALANCE_METHODS = ("flops", "time", "uniform")
LOCAL_RULES = ("deinforeg",)  # rules whose loss is a sum of per-block local losses


class StageStack(nn.Module):
  """Blocks ``first_block ...`` of a ``DecoupledStack``, named ``block_XX`` as in the full stack.

  Returns ``({"z": [...], "logits": [...]}, stop_gradient(h_last))``.
  """

  blocks: Sequence[stack.BlockSpec]
  num_classes: int
  first_block: int = 0

  @nn.compact
  def __call__(self, x: Any, train: bool) -> tuple[dict[str, list[jax.Array]], Any]:
    outputs: dict[str, list[jax.Array]] = {"z": [], "logits": []}
    for i, spec in enumerate(self.blocks):
      block = stack.Block(spec, self.num_classes, name=stack.block_name(self.first_block + i))
      h, z, logits = block(x, train)
      outputs["z"].append(z)
      outputs["logits"].append(logits)
      x = jax.lax.stop_gradient(h)
    return outputs, x


# ------------------------------------------------------------------ stage balancing


def partition_blocks(costs: Sequence[float], num_stages: int) -> tuple[tuple[int, int], ...]:
  """Contiguous ``[start, stop)`` ranges, one per stage, minimising the largest stage cost.

  Exact dynamic programme over split points (ties go to the earliest split).

  >>> partition_blocks([4.0, 3.0, 2.0, 1.0], 2)
  ((0, 1), (1, 4))
  """
  n = len(costs)
  if not 1 <= num_stages <= n:
    raise ValueError(f"cannot split {n} blocks into {num_stages} stages: use 1..{n} stages.")
  prefix = np.concatenate([[0.0], np.cumsum(costs)])
  # best[s][i]: minimal max-stage cost of blocks [0, i) in s stages; cut[s][i]: last split.
  best = np.full((num_stages + 1, n + 1), np.inf)
  cut = np.zeros((num_stages + 1, n + 1), int)
  best[0][0] = 0.0
  for s in range(1, num_stages + 1):
    for i in range(s, n + 1):
      for j in range(s - 1, i):
        value = max(best[s - 1][j], prefix[i] - prefix[j])
        if value < best[s][i]:
          best[s][i], cut[s][i] = value, j
  bounds, stop = [], n
  for s in range(num_stages, 0, -1):
    start = int(cut[s][stop])
    bounds.append((start, stop))
    stop = start
  return tuple(reversed(bounds))


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """Block ranges per stage and the per-block costs they were chosen from."""

  bounds: tuple[tuple[int, int], ...]
  block_costs: tuple[float, ...]
  cost_kind: str  # "flops" | "time" | "uniform"

  @property
  def stage_costs(self) -> tuple[float, ...]:
    return tuple(float(sum(self.block_costs[a:b])) for a, b in self.bounds)

  @property
  def ideal_speedup(self) -> float:
    """Steady-state bound ``total cost / max stage cost`` (transfers ignored)."""
    return float(sum(self.block_costs) / max(self.stage_costs))

  def ideal_epoch_speedup(self, num_batches: int) -> float:
    """The bound with fill and drain: ``T·Σc / (Σc + (T − 1)·max c)``."""
    total, worst = sum(self.block_costs), max(self.stage_costs)
    return float(num_batches * total / (total + (num_batches - 1) * worst))

  def as_dict(self) -> dict[str, Any]:
    return {
      "stage_blocks": [list(range(a, b)) for a, b in self.bounds],
      "cost_kind": self.cost_kind,
      "block_costs": list(self.block_costs),
      "stage_costs": list(self.stage_costs),
      "ideal_speedup": self.ideal_speedup,
    }


# ------------------------------------------------------------------ per-stage programs


def make_stage_train_step(
  stage: StageStack,
  objective: rules.Objective,
  tx: optax.GradientTransformation,
  num_classes: int,
  loss_cfg,
):
  """``(state, x, labels) -> (state, stop_gradient(h), metrics)``.

  ``metrics`` holds ``[blocks]`` arrays per loss term and the stage's scalar ``total``.
  """

  def step(state: train.TrainState, x, labels):

    def loss_fn(params):
      (outputs, h), updated = stage.apply(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      total, metrics = objective(outputs, labels, num_classes, loss_cfg)
      return total, (metrics, updated["batch_stats"], h)

    (total, (metrics, batch_stats, h)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics["total"] = total
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, h, metrics

  return step


def make_stage_eval_step(stage: StageStack):
  """``(state, x, labels, mask) -> (h, correct [blocks])``."""

  def step(state: train.TrainState, x, labels, mask):
    outputs, h = stage.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, x, train=False
    )
    predictions = jnp.stack([jnp.argmax(logits, axis=-1) for logits in outputs["logits"]])
    hits = (predictions == labels[None]).astype(jnp.float32) * mask[None]
    return h, jnp.sum(hits, axis=1)

  return step


@dataclasses.dataclass
class EpochRecord:
  """What one epoch did, per stage and per batch (host values)."""

  batch_ids: list[list[int]]  # per stage, in the order the stage trained on them
  updates: list[int]  # per stage: optimizer updates applied (``state.step`` delta)
  busy_s: list[float | None]  # per stage: seconds from dequeue to result ready (None: "ticks")
  ticks: list[list[int]] | None  # per stage: the tick of each batch (None: "threads")
  wall_s: float
  metrics: list[dict[str, np.ndarray]]  # per batch: per-block arrays + "total_loss"
  schedule: str
  dispatch: str


class _Stop(Exception):
  """Another stage failed; this one stops quietly."""


_END = object()


class Pipeline:
  """Stage programs of a ``DecoupledStack`` over ``devices`` (one stage per device).

  ``model`` is the full stack (``stack.build_model``); ``bounds`` the block range
  of each stage (``partition_blocks``); ``input_shape`` one example's shape.
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
    self.stages = [StageStack(tuple(model.blocks[a:b]), model.num_classes, a) for a, b in bounds]
    self.input_shapes = stage_input_shapes(self.stages, input_shape)
    self._train_steps = [
      jax.jit(
        make_stage_train_step(s, objective, tx, model.num_classes, loss_cfg), donate_argnums=0
      )
      for s in self.stages
    ]
    self._eval_steps = [jax.jit(make_stage_eval_step(s)) for s in self.stages]
    self._inits: dict[jax.Device, Callable] = {}

  @property
  def num_stages(self) -> int:
    return len(self.stages)

  # ---------------------------------------------------------------- state

  def init(self, rng: jax.Array, device: jax.Device | None = None) -> list[train.TrainState]:
    """Per-stage states on their devices, equal to the full stack's init at ``rng``.

    All stages are initialised by one program on ``device`` (default: stage 0's;
    one compilation instead of one per stage), then moved to their devices.
    """

    device = device or self.devices[0]
    if device not in self._inits:

      def init_all(key):
        return [
          train.create_train_state(stage, self.tx, key, shape)
          for stage, shape in zip(self.stages, self.input_shapes)
        ]

      self._inits[device] = jax.jit(init_all, out_shardings=SingleDeviceSharding(device))
    states = self._inits[device](rng)
    return [jax.device_put(s, d) for s, d in zip(states, self.devices)]

  def to_train_state(self, states: Sequence[train.TrainState]) -> train.TrainState:
    """The one-program ``TrainState`` holding every stage's subtrees (arrays stay on their
    stage's device; shared counters come from stage 0)."""
    params = {k: v for s in states for k, v in s.params.items()}
    batch_stats = {k: v for s in states for k, v in s.batch_stats.items()}
    flat, treedef = jax.tree_util.tree_flatten_with_path(jax.eval_shape(self.tx.init, params))
    leaves = [dict(jax.tree_util.tree_flatten_with_path(s.opt_state)[0]) for s in states]
    opt_state = jax.tree_util.tree_unflatten(
      treedef, [leaves[self._owner(path)][path] for path, _ in flat]
    )
    return train.TrainState(
      step=states[0].step, params=params, batch_stats=batch_stats, opt_state=opt_state
    )

  def from_train_state(self, state: train.TrainState) -> list[train.TrainState]:
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
          train.TrainState(
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
    states: list[train.TrainState],
    batches: Iterable[dict[str, np.ndarray]],
    schedule: str = "pipelined",
    dispatch: str = "auto",
    on_batch: Callable[[int, dict[str, Any]], None] | None = None,
    first_batch: int = 0,
    queue_size: int = 1,
  ) -> tuple[list[train.TrainState], EpochRecord]:
    """Train every stage once on every batch (fill and drain included).

    Batches are numbered from ``first_batch``.  ``on_batch(batch_id, {"total_loss":
    ...})`` is called once a batch has left the last stage.  ``dispatch``: "ticks"
    (one host thread, asynchronous dispatch; "auto") or "threads" (one host thread
    per stage).  ``queue_size``: how many batches may wait between two stages
    ("threads"), or how many ticks beyond ``num_stages`` the host may run ahead
    of the devices ("ticks").  Returns the new states and an ``EpochRecord``.
    """
    if schedule not in SCHEDULES:
      raise ValueError(
        f"config.parallel.pipeline_schedule={schedule!r} is unknown; choose one of {SCHEDULES}."
      )
    if dispatch not in DISPATCH_MODES:
      raise ValueError(
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
    return self._train_steps[k](state, x, labels) + (labels,)

  def _run_synchronous(self, states, batches, ctx, queue_size):
    del queue_size
    for tick, (t, batch) in enumerate(batches):
      x, labels = train.model_inputs(batch), batch["label"]
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
          pending[0] = (t, train.model_inputs(batch), batch["label"])
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
        put(queues[0], (t, train.model_inputs(batch), batch["label"]))
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

  def eval_step(self, states: Sequence[train.TrainState], batch: dict[str, Any]) -> dict:
    """``train.evaluate``-compatible: ``{"correct": [num_blocks]}`` through all stages."""
    x, labels, mask = train.model_inputs(batch), batch["label"], batch["mask"]
    correct = []
    for k, (state, device) in enumerate(zip(states, self.devices)):
      x, labels, mask = jax.device_put((x, labels, mask), device)
      x, hits = self._eval_steps[k](state, x, labels, mask)
      correct.append(hits)
    return {"correct": np.concatenate(jax.device_get(correct))}


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
      totals = [jax.device_put(m[t]["total"], self._last_device) for m in self._metrics]
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
        if name != "total"
      }
      row["total_loss"] = np.float32(sum(m["total"] for m in per_stage))
      merged.append(row)
    return merged


def stage_input_shapes(
  stages: Sequence[StageStack], input_shape: tuple[int, ...]
) -> list[tuple[int, ...]]:
  """One example's input shape for each stage (the previous stage's output shape)."""
  shapes, shape = [], tuple(input_shape)
  for stage in stages:
    shapes.append(shape)
    (_, h), _ = jax.eval_shape(
      functools.partial(stage.init_with_output, train=False),
      jax.random.key(0),
      jax.ShapeDtypeStruct((2, *shape), jnp.float32),
    )
    shape = tuple(h.shape[1:])
  return shapes


# ------------------------------------------------------------------ block costs


def block_costs(
  model: stack.DecoupledStack,
  tx,
  objective,
  loss_cfg,
  input_shape,
  batch_size: int,
  method: str = "flops",
  device: jax.Device | None = None,
  repeats: int = 3,
) -> list[float]:
  """Cost of one train step of each block alone at ``batch_size``.

  ``"flops"``: XLA's estimate of the lowered step (no compilation, no memory);
  ``"time"``: median seconds of ``repeats`` compiled steps on ``device``;
  ``"uniform"``: 1 per block.
  """
  if method not in BALANCE_METHODS:
    raise ValueError(
      f"config.parallel.pipeline_balance={method!r} is unknown; choose one of {BALANCE_METHODS}."
    )
  num_blocks = len(model.blocks)
  if method == "uniform":
    return [1.0] * num_blocks
  singles = [StageStack((spec,), model.num_classes, i) for i, spec in enumerate(model.blocks)]
  shapes = stage_input_shapes(singles, input_shape)
  device = device or jax.devices()[0]
  costs = []
  for single, shape in zip(singles, shapes):
    init = functools.partial(train.create_train_state, single, tx, input_shape=shape)
    step = jax.jit(make_stage_train_step(single, objective, tx, model.num_classes, loss_cfg))
    x = jax.ShapeDtypeStruct((batch_size, *shape), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    if method == "flops":
      state = jax.eval_shape(init, jax.random.key(0))
      cost = step.lower(state, x, labels).cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      costs.append(float(cost["flops"]))
      continue
    state = jax.jit(init, out_shardings=SingleDeviceSharding(device))(jax.random.key(0))
    rng = np.random.default_rng(0)
    data = jax.device_put(
      (
        rng.standard_normal(x.shape, np.float32),
        (np.arange(batch_size) % model.num_classes).astype(np.int32),
      ),
      device,
    )
    compiled = step.lower(state, *data).compile()
    jax.block_until_ready(compiled(state, *data))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(state, *data))
      times.append(time.perf_counter() - start)
    costs.append(float(np.median(times)))
  return costs


def plan_stages(
  model,
  tx,
  objective,
  loss_cfg,
  input_shape,
  batch_size: int,
  num_stages: int,
  method: str = "flops",
  device: jax.Device | None = None,
) -> StagePlan:
  """Balance ``model``'s blocks over ``num_stages`` stages by ``method`` cost."""
  costs = block_costs(model, tx, objective, loss_cfg, input_shape, batch_size, method, device)
  return StagePlan(partition_blocks(costs, num_stages), tuple(costs), method)


# ------------------------------------------------------------------ training loop


def pipeline_settings(config, num_blocks: int) -> dict[str, Any]:
  """Read and check ``config.parallel``'s pipeline fields; a clear error names the bad field."""
  par = config.parallel
  settings = {
    "num_stages": par.get("num_stages", 0),
    "schedule": par.get("pipeline_schedule", "pipelined"),
    "balance": par.get("pipeline_balance", "flops"),
    "dispatch": par.get("pipeline_dispatch", "auto"),
  }
  if config.rule not in LOCAL_RULES:
    raise ValueError(
      f"config.rule={config.rule!r} cannot be pipelined: its gradient crosses block "
      f"boundaries, so stages cannot update independently. Use one of {LOCAL_RULES}, or "
      "data parallelism (config.parallel.mode='data')."
    )
  if jax.process_count() > 1:
    raise ValueError(
      "config.parallel.mode='pipeline' runs on the devices of one host; use data "
      "parallelism for multi-host jobs (docs/tpu_vm.md)."
    )
  for field, allowed in (
    ("schedule", SCHEDULES),
    ("balance", BALANCE_METHODS),
    ("dispatch", DISPATCH_MODES),
  ):
    if settings[field] not in allowed:
      raise ValueError(
        f"config.parallel.pipeline_{field}={settings[field]!r} is unknown; choose one of {allowed}."
      )
  devices = jax.local_devices()
  limit = min(len(devices), num_blocks)
  stages = settings["num_stages"] or limit
  if not isinstance(stages, int) or not 1 <= stages <= limit:
    raise ValueError(
      f"config.parallel.num_stages={settings['num_stages']!r} must be 0 (auto) or 1..{limit}: "
      f"one device per stage ({len(devices)} visible) and at least one block per stage "
      f"({num_blocks} blocks). For fake CPU devices set "
      "XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts."
    )
  settings["num_stages"], settings["devices"] = stages, devices[:stages]
  return settings


def train_pipelined(config, workdir: str) -> dict[str, Any]:
  """``train.train_and_evaluate`` with the stack split into stages on their own devices.

  Reads ``config.parallel.num_stages`` (0: one stage per device, at most one per
  block), ``pipeline_schedule`` ("pipelined" | "synchronous"), ``pipeline_balance``
  ("flops" | "time" | "uniform") and ``pipeline_dispatch`` ("auto" | "threads" |
  "ticks"); ``config.parallel.num_devices`` is not used.  Checkpoints are the
  one-program ``TrainState`` (``Pipeline.to_train_state``) saved at the same
  steps as ``train_and_evaluate``, so either trainer resumes the other's run.
  Writes ``metrics.jsonl``, ``checkpoints/``, ``results.json`` and
  ``pipeline.json``; returns the results dict plus a ``"pipeline"`` entry.
  """
  validate_config(config)
  data = load_dataset(config.data)
  train_split, test_split, info = data.train, data.test, data.info
  model = stack.build_model(config, info.num_classes)
  settings = pipeline_settings(config, len(getattr(model, "blocks", ())))
  objective = rules.get_objective(config.rule)
  steps = steps_per_epoch(info.num_train, config.data.batch_size)
  schedule = optim.make_schedule(config.optim, steps * config.train.num_epochs, steps)
  tx = optim.make_optimizer(config.optim, schedule)
  plan = plan_stages(
    model,
    tx,
    objective,
    config.loss,
    info.input_shape,
    config.data.batch_size,
    settings["num_stages"],
    settings["balance"],
    settings["devices"][0],
  )
  pipe = Pipeline(
    model, tx, objective, config.loss, info.input_shape, plan.bounds, settings["devices"]
  )
  states = pipe.init(jax.random.key(config.seed))

  log = RunLog(workdir, config)
  checkpointer = checkpoint.RunCheckpointer(
    workdir, keep=config.checkpoint.keep, use_async=config.checkpoint.use_async
  )
  try:
    if checkpointer.latest_step() is not None:
      full = pipe.to_train_state(states)
      full, saved = checkpointer.restore(full, checkpoint.make_metadata(config, full, info))
      states = pipe.from_train_state(full)
      log.resume(saved)
    log.info(
      f"{config.rule} on {info.name}: {info.num_train} train / {info.num_test} test, "
      f"{pipe.num_stages} stage(s) {plan.as_dict()['stage_blocks']} on "
      f"{[str(d) for d in pipe.devices]}, {settings['schedule']} schedule; {plan.cost_kind} "
      f"cost per stage {[f'{c:.3g}' for c in plan.stage_costs]}, ideal speedup "
      f"{plan.ideal_speedup:.2f}; from step {int(states[0].step)}"
    )
    if data.label_noise:
      log.set_label_noise(data.label_noise)
    loop = _EpochLoop(config, pipe, settings, schedule, log, checkpointer, info, steps)
    states, test_accuracy = loop.run(states, train_split, test_split)
    checkpointer.wait()
  finally:
    checkpointer.close()
  results = log.finish(test_accuracy, int(states[0].step), info)
  results["pipeline"] = {
    **plan.as_dict(),
    "devices": [str(d) for d in pipe.devices],
    "schedule": settings["schedule"],
    "dispatch": loop.dispatch,
    "stage_busy_s": loop.busy.tolist(),
    "pipeline_wall_s": loop.wall_s,
  }
  with open(os.path.join(workdir, "pipeline.json"), "w") as f:
    json.dump(results["pipeline"], f, indent=2)
  return results


class _EpochLoop:
  """``train._train_epochs`` for a pipeline: drain at epoch ends and at checkpoint steps."""

  def __init__(self, config, pipe, settings, schedule, log, checkpointer, info, steps):
    self.config, self.pipe, self.settings, self.schedule = config, pipe, settings, schedule
    self.log, self.checkpointer, self.info, self.steps = log, checkpointer, info, steps
    self.busy, self.wall_s, self.dispatch = np.zeros(pipe.num_stages), 0.0, None
    self.augment = make_augment(config.data.augment, info)
    self.eval_mesh = Mesh(
      np.asarray(pipe.devices[:1]), (parallel.DATA_AXIS,), axis_types=(AxisType.Auto,)
    )

  def _save(self, states) -> None:
    full = self.pipe.to_train_state(states)
    self.checkpointer.save(
      full, checkpoint.make_metadata(self.config, full, self.info, **self.log.bookkeeping())
    )

  def _test(self, states, test_split) -> np.ndarray:
    return train.evaluate(
      self.pipe.eval_step,
      states,
      eval_batches(test_split, self.info, global_batch_size=self.config.data.eval_batch_size),
      self.eval_mesh,
    )

  def run(self, states, train_split, test_split):
    config, steps, every = self.config, self.steps, self.config.checkpoint.every_steps
    step, num_epochs = int(states[0].step), config.train.num_epochs
    test_accuracy = self._test(states, test_split) if step == steps * num_epochs else None
    for epoch in range(step // steps, num_epochs):
      bar = ProgressBar(steps, f"epoch {epoch + 1}/{num_epochs}", initial=step % steps)
      batches = iter(
        train_batches(
          train_split,
          self.info,
          global_batch_size=config.data.batch_size,
          seed=config.seed,
          epoch=epoch,
          start_step=step % steps,
          augment=self.augment,
        )
      )
      metrics = []
      while step < (epoch + 1) * steps:  # one drained segment per checkpoint interval
        stop = min((epoch + 1) * steps, (step // every + 1) * every if every else steps * 10**9)
        states, record = self.pipe.train_epoch(
          states,
          itertools.islice(batches, stop - step),
          self.settings["schedule"],
          self.settings["dispatch"],
          on_batch=lambda t, m, bar=bar: bar.update(m),
          first_batch=step % steps,
        )
        step, metrics = stop, metrics + record.metrics
        self.busy += [b or 0.0 for b in record.busy_s]
        self.wall_s += record.wall_s
        self.dispatch = record.dispatch
        summary = self.log.check_finite(
          {k: np.mean([m[k] for m in metrics], axis=0) for k in metrics[0]}, epoch
        )
        self.log.add_train_time(record.wall_s)
        if step % steps:
          self._save(states)
      bar.close()
      test_accuracy = self._test(states, test_split)
      self.log.epoch(epoch, step, summary, test_accuracy, self.schedule(step))
      self._save(states)
    return states, test_accuracy
