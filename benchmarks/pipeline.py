"""Throughput of pipeline-parallel decoupled training vs one device vs data parallelism.

  python -m benchmarks.pipeline --devices=2
  python -m benchmarks.pipeline --devices=4 --spmd

Model: the reference VGG (4 blocks) scaled by ``--width`` with a ``--projector`` head,
on synthetic ``[batch, 32, 32, 3]`` images, LARS, the default loss, computing in ``--dtype``
(``config.model.dtype``; every method builds from the same ``run.build_run``).  Every
method trains the same model on the same ``--batches`` batches (one "epoch",
fill and drain included for the pipeline), ``--repeats`` times round-robin
after one untimed warm-up epoch each; the median wall time gives samples/s.

Methods (one JSON line each, ``"benchmark": "pipeline_throughput"``):

* ``one_program``: ``run.Run.jit_steps`` on one device (the reference).
* ``data_parallel``: the same step with the batch split over ``--devices``.
* ``pipeline_synchronous``: stages on ``--devices`` devices, one batch at a
  time through all stages (no overlap); its per-stage busy times ``c_k`` are
  the stage costs measured without contention.
* ``pipeline_ticks``: the pipelined schedule dispatched from one host thread
  without waiting (asynchronous dispatch overlaps the devices; the default).
* ``pipeline_threads``: the pipelined schedule, one host thread per stage
  (waits for every step, so it also reports per-stage busy times).
* ``pipeline_spmd`` (``--spmd``): a prototype SPMD pipeline, ``jax.shard_map``
  over a ``stage`` axis, ``lax.switch`` on the stage index, state and
  activations raveled into padded buffers, ``lax.ppermute`` between stages.

Then ``"benchmark": "pipeline_summary"``: speedups over ``one_program`` and over
``pipeline_synchronous``, the ideal bounds (FLOP-based and from the measured
``c_k``: ``Σc / max c`` steady state, ``T·Σc / (Σc + (T−1)·max c)`` for the
``T``-batch epoch), and the overlap actually achieved:
``overlap_efficiency = (T·Σc − wall) / (T·Σc − (Σc + (T−1)·max c))`` (0: none,
1: the ideal pipeline) and ``stage_slowdown`` (a stage's busy time when
overlapped / alone: contention for the host's cores and memory).  With ``one_program``,
``cost_model`` is ``deinforeg_jax.pipeline.cost``'s prediction (what ``launch.aot`` prints for
a TPU) with this machine as the chip: the one-program FLOP rate as the peak, a measured copy
between two devices as the link (docs/performance.md compares it with the measured speedup).
``XLA_FLAGS`` is set for ``--devices`` fake CPU devices before JAX is imported
(``--platform=gpu`` uses the real devices instead; see ``pipeline_gpu.sh``).

Measured on the 2-core CPU machine (fake devices share the two cores, so the
bound is the cores, not the stage balance), defaults (width 0.25, projector
512-512-512, batch 64, T=12, 3 repeats), quietest runs::

  --devices=4: one_program 101.8 samples/s; data_parallel 79.2; synchronous 89.5;
    threads 103.9; ticks 107.8 (1.06x one program, 1.20x synchronous, overlap
    efficiency 0.48); FLOP ideal 1.98x (1.83x with fill/drain), measured-cost
    ideal 1.64x (1.55x); stages 1.4-1.7x slower each when overlapped.
  --devices=2 --single_thread_devices: one_program 109.9; data_parallel 100.5;
    synchronous 94.5; threads 108.5; ticks 111.1 (1.01x, 1.18x, 0.43).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.pipeline",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--devices", type=int, default=2, help="devices (and pipeline stages)")
  parser.add_argument("--stages", type=int, default=0, help="pipeline stages (0: --devices)")
  parser.add_argument(
    "--platform",
    default="cpu",
    choices=("cpu", "gpu", "tpu"),
    help="cpu: --devices fake CPU devices; gpu/tpu: the real devices",
  )
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--width", type=float, default=0.25, help="reference VGG channel multiplier")
  parser.add_argument("--projector", default="512-512-512")
  parser.add_argument(
    "--dtype", default="float32", choices=("float32", "bfloat16"), help="config.model.dtype"
  )
  parser.add_argument("--batches", type=int, default=12, help="batches per timed epoch (T)")
  parser.add_argument("--repeats", type=int, default=3, help="timed epochs per method")
  parser.add_argument("--balance", default="flops", choices=("flops", "time", "uniform"))
  parser.add_argument(
    "--methods",
    default="one_program,data_parallel,pipeline_synchronous,pipeline_threads,pipeline_ticks",
    help="comma list (see above)",
  )
  parser.add_argument("--spmd", action="store_true", help="also time the SPMD prototype")
  parser.add_argument(
    "--single_thread_devices",
    action="store_true",
    help="cpu: one thread per fake device (XLA_FLAGS "
    "--xla_cpu_multi_thread_eigen=false), so "
    "devices compete only by running at the same time, as separate chips do",
  )
  parser.add_argument("--seed", type=int, default=0)
  return parser


def _force_host_devices(count: int, single_thread: bool) -> None:
  if "jax" in sys.modules:
    raise RuntimeError("--devices must be applied before jax is imported.")
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
  flags += f" --xla_force_host_platform_device_count={count}"
  if single_thread:
    flags += " --xla_cpu_multi_thread_eigen=false"
  os.environ["XLA_FLAGS"] = flags.strip()


if __name__ == "__main__":
  _ARGS = _parser().parse_known_args()[0]
  if _ARGS.platform == "cpu":
    _force_host_devices(_ARGS.devices, _ARGS.single_thread_devices)

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from deinforeg_jax import parallel, pipeline, steps
from deinforeg_jax.pipeline import cost
from deinforeg_jax.run import DatasetShape, build_run
from launch.configs import default

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def make_config(args):
  config = default.get_config()
  config.model.update(
    {
      "arch": "vgg",
      "vgg_blocks": "spec",
      "num_blocks": 4,
      "width": args.width,
      "projector": args.projector,
      "dtype": args.dtype,
    }
  )
  config.data.batch_size = args.batch_size
  return config


def synthetic_batches(count, batch_size, seed):
  rng = np.random.default_rng(seed)
  return [
    {
      "image": rng.standard_normal((batch_size, *INPUT_SHAPE), np.float32),
      "label": rng.integers(0, NUM_CLASSES, batch_size, dtype=np.int32),
    }
    for _ in range(count)
  ]


# ------------------------------------------------------------------ one program / data parallel


class OneProgram:
  """``run.Run.jit_steps`` over a ``data`` mesh of ``devices`` devices."""

  def __init__(self, run, devices, batches):
    self.mesh = parallel.make_data_mesh(devices)
    init = jax.jit(run.create_state, out_shardings=parallel.replicated(self.mesh))
    self.state = init(jax.random.key(0))
    self.step = run.jit_steps(run.plan.final, self.mesh).train
    self.batches = batches

  def epoch(self):
    start = time.perf_counter()
    for batch in self.batches:
      sharded = parallel.shard_batch(batch, self.mesh)
      self.state, metrics, _ = self.step(self.state, sharded["image"], sharded["label"])
    jax.block_until_ready((self.state, metrics))
    return {"wall_s": time.perf_counter() - start}


class PipelineRun:
  """``pipeline.Pipeline.train_epoch`` with one schedule/dispatch."""

  def __init__(self, pipe, states, batches, schedule, dispatch):
    self.pipe, self.states, self.batches = pipe, states, batches
    self.schedule, self.dispatch = schedule, dispatch

  def epoch(self):
    self.states, record = self.pipe.train_epoch(
      self.states, self.batches, self.schedule, self.dispatch
    )
    assert record.updates == [len(self.batches)] * self.pipe.num_stages
    return {"wall_s": record.wall_s, "busy_s": record.busy_s}


# ------------------------------------------------------------------ SPMD prototype


class SpmdPipeline:
  """The pipelined schedule as one SPMD program (prototype, for measurement).

  Stage ``k``'s ``TrainState`` is raveled into row ``k`` of a ``[K, P]`` buffer
  sharded over the ``stage`` axis (padded to the largest stage); activations
  into a ``[K, A]`` buffer.  Each tick every device runs ``lax.switch`` on its
  stage index (its own stage's step, only where its batch is valid: fill and
  drain), then ``ppermute`` sends activations and labels to the next stage.  The stage steps
  are built here unjitted (``steps.make_train_step`` of ``pipe.stages``, as ``pipe`` builds
  them): ``pipe.train_steps`` are top-level programs with their own ``compiler_options``, which
  ``jax.jit`` refuses inside another program.
  """

  def __init__(self, pipe: pipeline.Pipeline, states, batches, objective, loss_cfg):
    self.pipe, self.batches, k = pipe, batches, pipe.num_stages
    self.stage_steps = [
      steps.make_train_step(stage, objective, pipe.tx, pipe.num_classes, loss_cfg)
      for stage in pipe.stages
    ]
    self.mesh = Mesh(np.asarray(pipe.devices), ("stage",), axis_types=(AxisType.Auto,))
    host = jax.device_get(states)
    flats = [ravel_pytree(s) for s in host]
    self.unravel = [u for _, u in flats]
    self.sizes = [int(v.size) for v, _ in flats]
    batch = batches[0]["image"].shape[0]
    self.in_shapes = [(batch, *s) for s in pipe.input_shapes]
    self.act = max(int(np.prod(s)) for s in self.in_shapes[1:]) if k > 1 else 1
    width = max(self.sizes)
    buf = np.zeros((k, width), np.float32)
    for i, (v, _) in enumerate(flats):
      buf[i, : v.size] = v
    shard = NamedSharding(self.mesh, P("stage"))
    self.state_buf = jax.device_put(buf, shard)
    self.act_buf = jax.device_put(np.zeros((k, self.act), np.float32), shard)
    self.label_buf = jax.device_put(np.zeros((k, batch), np.int32), shard)
    self.replicated = NamedSharding(self.mesh, P())
    self.shard = shard
    self.tick = jax.jit(self._make_tick(), donate_argnums=(0, 1, 2))

  def _make_tick(self):
    k, width, act, stage_steps = self.pipe.num_stages, max(self.sizes), self.act, self.stage_steps

    def branch(j):

      def run(svec, avec, labels, x0, y0):
        state = self.unravel[j](svec[: self.sizes[j]])
        x = x0 if j == 0 else avec[: int(np.prod(self.in_shapes[j]))].reshape(self.in_shapes[j])
        y = y0 if j == 0 else labels
        new, metrics, h = stage_steps[j](state, x, y)
        new_vec = jnp.pad(ravel_pytree(new)[0], (0, width - self.sizes[j]))
        h = jnp.ravel(h)[:act] if j + 1 < k else jnp.zeros((act,))
        h = h.astype(jnp.float32)  # the activation buffer's dtype, in every branch (bf16 runs)
        return new_vec, jnp.pad(h, (0, act - h.size)), y, metrics["total_loss"]

      return run

    def body(svec, avec, labels, x0, y0, valid):
      index = jax.lax.axis_index("stage")
      new, h, y, total = jax.lax.switch(
        index, [branch(j) for j in range(k)], svec[0], avec[0], labels[0], x0, y0
      )
      new = jnp.where(valid[0], new, svec[0])
      perm = [(j, j + 1) for j in range(k - 1)]
      h = jax.lax.ppermute(h, "stage", perm)
      y = jax.lax.ppermute(y, "stage", perm)
      return new[None], h[None], y[None], jnp.where(valid[0], total, 0.0)[None]

    spec = P("stage")
    return jax.shard_map(
      body,
      mesh=self.mesh,
      in_specs=(spec, spec, spec, P(), P(), spec),
      out_specs=(spec, spec, spec, spec),
      check_vma=False,
    )

  def epoch(self):
    k, count = self.pipe.num_stages, len(self.batches)
    start = time.perf_counter()
    for tick in range(count + k - 1):
      batch = self.batches[min(tick, count - 1)]
      valid = np.asarray([0 <= tick - j < count for j in range(k)])
      x0, y0 = jax.device_put((batch["image"], batch["label"]), self.replicated)
      self.state_buf, self.act_buf, self.label_buf, total = self.tick(
        self.state_buf, self.act_buf, self.label_buf, x0, y0, jax.device_put(valid, self.shard)
      )
    jax.block_until_ready((self.state_buf, total))
    return {"wall_s": time.perf_counter() - start}

  def states(self):
    buf = np.asarray(jax.device_get(self.state_buf))
    return [u(buf[i, :n]) for i, (u, n) in enumerate(zip(self.unravel, self.sizes))]


# ------------------------------------------------------------------ cost model


def _link_bytes_per_s(devices, nbytes: int, repeats: int = 5) -> float:
  """Measured bytes/s of one ``nbytes`` array copied from ``devices[0]`` to ``devices[1]``."""
  x = jax.device_put(np.ones(max(nbytes // 4, 1), np.float32), devices[0])
  jax.block_until_ready(jax.device_put(x, devices[1]))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(jax.device_put(x, devices[1]))
    times.append(time.perf_counter() - start)
  return x.nbytes / statistics.median(times)


def predicted_cost(pipe, batch_size, one_program_s_per_batch) -> cost.PipelineCost:
  """``pipeline.cost``'s model of ``pipe`` with this machine's rates as the chip's: the peak
  is the one-program step's FLOP rate (its stages' XLA FLOPs over its measured time per batch)
  and the link a measured copy of stage 0's output between the first two devices."""
  states = pipe.abstract_states()
  batch = jax.ShapeDtypeStruct((batch_size, *INPUT_SHAPE), jnp.float32)
  inputs = cost.stage_inputs(pipe.train_steps, states, batch)
  labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
  flops = []
  for step, state, x in zip(pipe.train_steps, states, inputs):
    analysis = step.lower(state, x, labels).cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    flops.append(float(analysis["flops"]))
  sends = cost.sent_bytes(inputs)
  link = _link_bytes_per_s(pipe.devices, sends[0]) if pipe.num_stages > 1 else float("inf")
  return cost.PipelineCost(tuple(flops), sends, sum(flops) / one_program_s_per_batch, link)


# ------------------------------------------------------------------ main


def _emit(row):
  print(json.dumps(row), flush=True)


def _rel_l2_diff(a, b):
  """``‖a − b‖ / ‖b‖`` over all leaves of two trees (per-leaf ratios are meaningless for
  leaves that only hold rounding noise, e.g. a Dense bias followed by BatchNorm)."""
  leaves = [
    (np.asarray(x, np.float64), np.asarray(y, np.float64))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  ]
  return float(
    np.sqrt(sum(np.sum((x - y) ** 2) for x, y in leaves))
    / np.sqrt(sum(np.sum(y**2) for _, y in leaves))
  )


def main(argv=None):
  args = _parser().parse_args(argv)
  devices = jax.devices()[: args.devices]
  if len(devices) < args.devices:
    raise ValueError(f"--devices={args.devices} but only {len(jax.devices())} visible.")
  num_stages = args.stages or args.devices
  config = make_config(args)
  config.train.num_epochs = args.repeats + 1  # the schedule: one epoch per repeat (and warm-up)
  info = DatasetShape(INPUT_SHAPE, NUM_CLASSES, num_train=args.batches * args.batch_size)
  run = build_run(config, info)
  model, objective, tx = run.model, run.objective, run.tx
  batches = synthetic_batches(args.batches, args.batch_size, args.seed)
  common = {
    "devices": args.devices,
    "stages": num_stages,
    "platform": devices[0].platform,
    "single_thread_devices": args.single_thread_devices,
    "batch_size": args.batch_size,
    "width": args.width,
    "projector": args.projector,
    "dtype": args.dtype,
    "batches": args.batches,
  }

  start = time.perf_counter()
  plan = pipeline.plan_stages(
    model,
    tx,
    objective,
    config.loss,
    INPUT_SHAPE,
    args.batch_size,
    num_stages,
    args.balance,
    devices[0],
  )
  _emit(
    {
      "benchmark": "pipeline_plan",
      **common,
      **plan.as_dict(),
      "ideal_epoch_speedup": plan.ideal_epoch_speedup(args.batches),
      "plan_s": time.perf_counter() - start,
    }
  )
  pipe = pipeline.Pipeline(model, tx, objective, config.loss, INPUT_SHAPE, plan.bounds, devices)

  runs = {}
  methods = args.methods.split(",") + (["pipeline_spmd"] if args.spmd else [])
  for method in methods:
    start = time.perf_counter()
    if method == "one_program":
      runs[method] = OneProgram(run, 1, batches)
    elif method == "data_parallel":
      runs[method] = OneProgram(run, args.devices, batches)
    elif method == "pipeline_spmd":
      runs[method] = SpmdPipeline(
        pipe, pipe.init(jax.random.key(0)), batches, objective, config.loss
      )
    elif method.startswith("pipeline_"):
      mode = method.removeprefix("pipeline_")
      schedule = "synchronous" if mode == "synchronous" else "pipelined"
      runs[method] = PipelineRun(
        pipe,
        pipe.init(jax.random.key(0)),
        batches,
        schedule,
        "auto" if mode == "synchronous" else mode,
      )
    else:
      raise ValueError(f"--methods: {method!r} is unknown.")
    runs[method].epoch()  # compile + warm-up
    _emit(
      {
        "benchmark": "pipeline_setup",
        "method": method,
        "setup_and_warmup_s": time.perf_counter() - start,
      }
    )

  if "pipeline_spmd" in runs and "pipeline_threads" in runs:  # same updates as MPMD?
    mpmd = jax.device_get(runs["pipeline_threads"].states)
    _emit(
      {
        "benchmark": "pipeline_spmd_check",
        "epochs": 1,
        "rel_l2_diff_vs_mpmd": _rel_l2_diff(runs["pipeline_spmd"].states(), mpmd),
      }
    )

  results = {m: [] for m in runs}
  for _ in range(args.repeats):  # round-robin, so drift hits every method alike
    for method, run in runs.items():
      results[method].append(run.epoch())

  walls = {}
  for method, rows in results.items():
    wall = statistics.median(r["wall_s"] for r in rows)
    walls[method] = wall
    row = {
      "benchmark": "pipeline_throughput",
      **common,
      "method": method,
      "samples_per_s": args.batches * args.batch_size / wall,
      "median_wall_s": wall,
      "wall_s": [r["wall_s"] for r in rows],
    }
    if rows[0].get("busy_s") and rows[0]["busy_s"][0] is not None:
      row["stage_busy_s"] = [
        statistics.median(r["busy_s"][k] for r in rows) for k in range(num_stages)
      ]
    _emit(row)

  summary = {
    "benchmark": "pipeline_summary",
    **common,
    "stage_blocks": plan.as_dict()["stage_blocks"],
    "ideal_speedup_flops": plan.ideal_speedup,
    "ideal_epoch_speedup_flops": plan.ideal_epoch_speedup(args.batches),
  }
  base = walls.get("one_program")
  for method, wall in walls.items():
    if base:
      summary[f"speedup_{method}_vs_one_program"] = base / wall
  if base:
    model = predicted_cost(pipe, args.batch_size, base / args.batches)
    summary["cost_model"] = {**model.as_dict(), "epoch_speedup": model.epoch_speedup(args.batches)}
  sync = results.get("pipeline_synchronous")
  if sync:
    per_batch = [
      statistics.median(r["busy_s"][k] for r in sync) / args.batches for k in range(num_stages)
    ]
    total, worst, count = sum(per_batch), max(per_batch), args.batches
    ideal_wall = total + (count - 1) * worst
    summary.update(
      {
        "stage_cost_s": per_batch,
        "ideal_speedup_measured": total / worst,
        "ideal_epoch_speedup_measured": count * total / ideal_wall,
        "ideal_pipeline_wall_s": ideal_wall,
      }
    )
    for method in ("pipeline_threads", "pipeline_ticks", "pipeline_spmd"):
      if method in walls:
        summary[f"speedup_{method}_vs_synchronous"] = walls["pipeline_synchronous"] / walls[method]
        summary[f"overlap_efficiency_{method}"] = (
          (count * total - walls[method]) / (count * total - ideal_wall)
          if count * total > ideal_wall
          else None
        )
    if "pipeline_threads" in results:
      busy = results["pipeline_threads"]
      summary["stage_slowdown_threads"] = [
        statistics.median(r["busy_s"][k] for r in busy) / (per_batch[k] * count)
        for k in range(num_stages)
      ]
      summary["stages_busy_at_once_threads"] = statistics.median(
        sum(r["busy_s"]) / r["wall_s"] for r in busy
      )
  _emit(summary)


if __name__ == "__main__":
  main()
