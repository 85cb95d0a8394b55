"""Will a run fit a Cloud TPU topology?  Its steps compiled ahead of time, without a TPU.

``check_topology(config, "v5e:2x2")`` takes libtpu's compile-only devices of the topology
(``topology_devices``: one per chip), builds the run (``run.build_run``, ``conv_impl`` resolved
for TPU; the final growth phase runs every block, and blocks a grown run would freeze are
compiled as trainable, an upper bound on memory) and lowers and compiles its programs with
abstract arguments (``jax.ShapeDtypeStruct`` carrying each argument's sharding; no array is
materialised, the state comes from ``jax.eval_shape``):

* data parallel (``config.parallel.mode="data"``): ``Run.jit_steps`` over a ``data`` mesh of
  ``config.parallel.num_devices`` chips (0: all), the global batch sharded, the state
  replicated or, with ``config.parallel.shard_state``, split (``parallel.state_shardings``);
* pipeline (``"pipeline"``): the stages ``pipeline.plan_stages`` balances over the chips of
  one host, each stage's ``pipeline.Pipeline`` programs lowered for its own chip.

Each compiled step gives a ``StepReport`` per chip: ``Compiled.memory_analysis()``'s argument,
temporary, output, aliased (outputs reusing the donated state) and code bytes, and
``Compiled.cost_analysis()``'s FLOPs.  A ``TopologyReport`` holds them per step (per stage in
pipeline mode) and judges the fit: the largest step's bytes against ``(1 - headroom)`` of the
chip's HBM.  In pipeline mode it also holds ``pipeline.cost``'s prediction: each stage's
train-step FLOPs and the bytes it sends to the next stage, against the chip's peak and one ICI
link (``throughput.peak``, ``ICI``), give the steady-state speedup over one chip.
``check_topologies`` is the ``launch.aot`` command: a report per topology, and one ``AotError``
naming the config fields to change for those that do not compile or fit.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import time
from collections.abc import Sequence
from typing import Any

# Compiling for a topology never opens a TPU, so libtpu's lock against a second process on the
# same chips (its lock file in the system's temporary directory) is not needed; without this
# every other running JAX process that tried the TPU backend (libtpu installed) would make the
# topology fail to load.  libtpu reads it when it loads (not at ``import jax``).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import AxisType, Mesh, SingleDeviceSharding

from deinforeg_jax import parallel, pipeline, safe_files, throughput
from deinforeg_jax.config_error import ConfigError
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data.tfds_source import TEXT_MAX_LEN
from deinforeg_jax.pipeline.cost import PipelineCost, sent_bytes, stage_inputs
from deinforeg_jax.run import DatasetShape, Run, build_run

GIB = 2**30

# HBM per chip by JAX device kind, from Google Cloud's TPU documentation
# (https://cloud.google.com/tpu/docs/system-architecture-tpu-vm and the per-version pages
# https://cloud.google.com/tpu/docs/v4, .../v5e, .../v5p, .../v6e): v4 32 GiB, v5e 16 GiB,
# v5p 95 GiB, v6e (Trillium) 32 GiB (the pages write "GB" for some generations; the runtime
# keeps a little of it, which the headroom covers).  One JAX device per chip (v4 in megacore mode).
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}



@dataclasses.dataclass(frozen=True)
class Interconnect:
  """A chip's inter-chip interconnect (ICI), for the pipeline cost model (``pipeline.cost``)."""

  bytes_per_s: float  # bidirectional, all ports together
  ports: int

  @property
  def link_bytes_per_s(self) -> float:
    """One port, one direction: what a stage's send to its neighbour chip gets."""
    return self.bytes_per_s / (2 * self.ports)


# Bidirectional ICI bandwidth and ports per chip, from the same Google Cloud pages as HBM_GIB:
# v4 2400 Gbps each way (600 GB/s both ways), 6 ports (3D mesh); v5e 400 GB/s, 4 ports;
# v5p 1200 GB/s, 6 ports (3D torus); v6e 800 GB/s, 4 ports.  The chips' peak FLOP/s are
# ``throughput.PEAK_TFLOPS``'s.
ICI = {
  "TPU v4": Interconnect(600e9, 6),
  "TPU v5 lite": Interconnect(400e9, 4),
  "TPU v5": Interconnect(1200e9, 6),
  "TPU v6 lite": Interconnect(800e9, 4),
}

# The chip configuration libtpu uses on Cloud TPU VMs, as in JAX's own AOT tests: v4 runs
# its two TensorCores as one device ("megacore"); without it the topology has 2 devices
# per chip.  Keys are the generation before ':' in the topology name.
CHIP_CONFIG = {"v4": "megacore", "v5p": "megachip_tccontrol", "v6e": "megachip_tccontrol"}

# config.data.name -> (one example's shape or None for text, classes, training examples).
# The training size is that of the split a run of the dataset reads (imdb_reviews: TFDS's
# 25,000-review train split, as launch/configs/imdb_*.py train on; the reference's 80/20 split
# of 50,000 reviews trains on 40,000); it only sets the learning-rate schedule's length
# (constants in the step) and, in pipeline mode, the epoch the cost model fills and drains.
DATASETS = {
  "digits": ((8, 8, 1), 10, 1437),
  "cifar10": ((32, 32, 3), 10, 50000),
  "cifar100": ((32, 32, 3), 100, 50000),
  "tiny_imagenet": ((32, 32, 3), 200, 100000),  # launch.prepare_data --resize=32
  "imdb_reviews": (None, 2, 25000),
  "ag_news_subset": (None, 4, 120000),
  "dbpedia": (None, 14, 560000),
}

LIBTPU_MISSING = (
  "libtpu is not installed, so TPU programs cannot be compiled here. Install the TPU extra "
  "of the pinned JAX: pip install -e \".[tpu]\" (or pip install \"jax[tpu]==0.10.2\")."
)

CHANGE_FIELDS = (
  "config.data.batch_size / config.data.eval_batch_size (activations, temporaries), "
  "config.model.width and config.model.projector (parameters and optimizer state), "
  "config.parallel.shard_state=True (data parallel: the state split over the chips), "
  "config.parallel.num_devices (data parallel: more chips share the batch) or "
  "config.parallel.num_stages (pipeline: fewer blocks per chip)"
)


class AotError(Exception):
  """A run that cannot be compiled or checked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class StepReport:
  """One compiled step on one chip: bytes from ``memory_analysis``, FLOPs, compile seconds."""

  name: str  # "train" | "eval", with the stage in pipeline mode
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  code_bytes: int
  flops: float  # per chip and step
  compile_s: float

  @property
  def total_bytes(self) -> int:
    """Per-chip bytes live while the step runs (aliased outputs reuse argument buffers)."""
    return (
      self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes
    )


@dataclasses.dataclass
class TopologyReport:
  """Every step of one run compiled for one topology, and whether each fits in HBM."""

  topology: str
  device_kind: str
  chips: int
  hosts: int
  mode: str
  chips_used: int  # data: mesh size; pipeline: stages
  hbm_bytes: int | None  # None: device kind not in HBM_GIB
  headroom: float
  steps: list[StepReport]
  note: str = ""
  pipeline_cost: PipelineCost | None = None  # pipeline mode, a chip with known rates
  cost_source: str = ""  # where the cost model's peak comes from, or why there is no model
  batches_per_epoch: int = 0

  @property
  def budget_bytes(self) -> float | None:
    return None if self.hbm_bytes is None else self.hbm_bytes * (1.0 - self.headroom)

  @property
  def peak_bytes(self) -> int:
    return max(s.total_bytes for s in self.steps)

  @property
  def fits(self) -> bool | None:
    return None if self.budget_bytes is None else self.peak_bytes <= self.budget_bytes

  def as_dict(self) -> dict[str, Any]:
    cost = self.pipeline_cost
    return {
      **{k: v for k, v in dataclasses.asdict(self).items() if k not in ("steps", "pipeline_cost")},
      "steps": [{**dataclasses.asdict(s), "total_bytes": s.total_bytes} for s in self.steps],
      "peak_bytes": self.peak_bytes,
      "fits": self.fits,
      "pipeline_cost": None if cost is None else {
        **cost.as_dict(), "epoch_speedup": cost.epoch_speedup(self.batches_per_epoch)
      },
    }


# ------------------------------------------------------------------ devices and shapes


def require_libtpu() -> None:
  """Raise ``AotError`` with the install command when libtpu is not importable."""
  if importlib.util.find_spec("libtpu") is None:
    raise AotError(LIBTPU_MISSING)


def topology_devices(name: str) -> list[jax.Device]:
  """Compile-only devices of TPU topology ``name`` (one per chip), e.g. ``"v5e:2x2"``."""
  require_libtpu()
  kwargs = {}
  if name.partition(":")[0] in CHIP_CONFIG:
    kwargs["chip_config_name"] = CHIP_CONFIG[name.partition(":")[0]]
  try:
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices)
  except Exception as e:  # pylint: disable=broad-except  # libtpu raises JaxRuntimeError
    raise AotError(
      f"--topology={name!r} is not a TPU topology libtpu knows ({str(e).splitlines()[0]}); "
      "use <generation>:<chips per axis>, e.g. v5e:2x2, v5e:4x4, v4:2x2x1, v5p:2x2x1, v6e:2x2."
    ) from e


def run_shapes(
  config, num_classes: int = 0, input_shape: tuple[int, ...] = ()
) -> DatasetShape:
  """Input shape, classes and training size of ``config``'s dataset from ``DATASETS`` or the
  overrides (``--num_classes``, ``--input_shape``); never reads the data."""
  name = config.data.name
  known_shape, known_classes, num_train = DATASETS.get(name, (None, 0, 50000))
  if config.data.kind == "text":
    max_len = config.data.max_len or TEXT_MAX_LEN.get(name, 0)
    known_shape = (max_len,) if max_len else None
    if input_shape and tuple(input_shape) != known_shape:
      raise AotError(
        f"text inputs are (config.data.max_len,) token ids; set --config.data.max_len instead "
        f"of --input_shape={','.join(map(str, input_shape))}."
      )
  shape = tuple(input_shape) or known_shape
  classes = num_classes or known_classes
  if not shape or not classes:
    what = "config.data.max_len" if config.data.kind == "text" else "--input_shape=H,W,C"
    raise AotError(
      f"config.data.name={name!r} is not a dataset launch.aot knows ({sorted(DATASETS)}); give "
      f"{what} and --num_classes=N (launch.aot never reads the data)."
    )
  return DatasetShape(shape, classes, num_train, config.data.kind)


# ------------------------------------------------------------------ compiling


def compile_step(name: str, jitted, *args) -> StepReport:
  """Lower and compile ``jitted`` for abstract ``args``; its per-chip bytes and FLOPs."""
  start = time.perf_counter()
  try:
    compiled = jitted.lower(*args).compile()
  except Exception as e:  # pylint: disable=broad-except  # XLA errors have no common type
    first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
    raise AotError(
      f"the {name} step does not compile: {first[:500]}. If this is RESOURCE_EXHAUSTED "
      f"(HBM), reduce {CHANGE_FIELDS}."
    ) from e
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # never report optimal_seconds
  return StepReport(
    name=name,
    argument_bytes=int(memory.argument_size_in_bytes),
    temp_bytes=int(memory.temp_size_in_bytes),
    output_bytes=int(memory.output_size_in_bytes),
    alias_bytes=int(memory.alias_size_in_bytes),
    code_bytes=int(memory.generated_code_size_in_bytes),
    flops=float(cost.get("flops", 0.0)),
    compile_s=seconds,
  )


def _placed(state, shardings):
  """Abstract ``state`` with a sharding per array (a pytree of them, or one for all)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, state)
  return jax.tree.map(
    lambda s, p: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=p), state, shardings
  )


def _batch_args(config, input_shape, dtype, sharding, eval_step: bool):
  """Abstract ``(inputs, labels[, mask])`` of a global train (or eval) batch."""
  batch = config.data.eval_batch_size if eval_step else config.data.batch_size
  args = [
    jax.ShapeDtypeStruct((batch, *input_shape), dtype, sharding=sharding),
    jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding),
  ]
  if eval_step:
    args.append(jax.ShapeDtypeStruct((batch,), jnp.float32, sharding=sharding))
  return args


def _data_parallel(run: Run, devices) -> tuple[int, list[StepReport]]:
  config = run.config
  count = config.parallel.num_devices or len(devices)
  if count > len(devices):
    raise AotError(
      f"config.parallel.num_devices={config.parallel.num_devices} but the topology has "
      f"{len(devices)} chips; use 0 (all chips) or a number up to {len(devices)}."
    )
  mesh = Mesh(np.asarray(devices[:count]), (parallel.DATA_AXIS,), axis_types=(AxisType.Auto,))
  parallel.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
  parallel.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  state = run.abstract_state()
  state_sharding = parallel.state_shardings(state, mesh, config.parallel.shard_state)
  programs = run.jit_steps(run.plan.final, mesh, state_sharding)
  state = _placed(state, state_sharding)
  batch = functools.partial(
    _batch_args, config, run.info.input_shape, run.info.dtype, parallel.batch_sharding(mesh)
  )
  return count, [
    compile_step("train", programs.train, state, *batch(False)),
    compile_step("eval", programs.eval, state, *batch(True)),
  ]


def _pipeline(run: Run, devices) -> tuple[int, list[StepReport], str, tuple[int, ...]]:
  config, model = run.config, run.model
  num_blocks = len(getattr(model, "blocks", ()))
  checked = config.copy_and_resolve_references()
  checked.parallel.num_stages = 1  # the stage count is checked against the topology below
  pipeline.pipeline_settings(checked, num_blocks)  # rule, text, growth, schedule names
  host = [d for d in devices if d.process_index == devices[0].process_index]
  limit = min(len(host), num_blocks)
  stages = config.parallel.num_stages or limit
  if not 1 <= stages <= limit:
    raise AotError(
      f"config.parallel.num_stages={config.parallel.num_stages} must be 0 (auto) or 1..{limit}: "
      f"the pipeline runs on the {len(host)} chips of one host, one stage per chip, at least one "
      f"of the {num_blocks} blocks per stage."
    )
  balance, note = config.parallel.pipeline_balance, ""
  if balance == "time":  # needs the chip itself
    balance, note = "flops", "pipeline_balance='time' needs a TPU; stages balanced by FLOPs"
  input_shape = run.info.input_shape
  plan = pipeline.plan_stages(
    model, run.tx, run.objective, config.loss, input_shape, config.data.batch_size, stages,
    balance,
  )
  pipe = pipeline.Pipeline(
    model, run.tx, run.objective, config.loss, input_shape, plan.bounds, host,
    log_grad_norms=config.train.log_grad_norms,
  )
  states = pipe.abstract_states()
  inputs = stage_inputs(
    pipe.train_steps, states,
    jax.ShapeDtypeStruct((config.data.batch_size, *input_shape), run.info.dtype),
  )
  reports = []
  for k, state in enumerate(states):
    place = SingleDeviceSharding(pipe.devices[k])
    state = _placed(state, place)
    batch = functools.partial(_batch_args, config, inputs[k].shape[1:], inputs[k].dtype, place)
    first, stop = pipe.bounds[k]  # images only: pipeline_settings refuses text
    reports.append(
      compile_step(f"train stage {k} (blocks {first}-{stop - 1})", pipe.train_steps[k], state,
                   *batch(False))
    )
    reports.append(compile_step(f"eval stage {k}", pipe.eval_steps[k], state, *batch(True)))
  return stages, reports, note, sent_bytes(inputs)


def _pipeline_cost(
  config, kind: str, reports: Sequence[StepReport], sends: tuple[int, ...]
) -> tuple[PipelineCost | None, str]:
  """The stages' cost model on chip ``kind`` (its peak for the run's dtype and precision, one ICI
  link), and where the peak comes from; ``(None, why)`` when a rate is unknown."""
  stage_flops = tuple(s.flops for s in reports if s.name.startswith("train"))
  peak = throughput.peak(config, throughput.StepCost(sum(stage_flops), 1, "tpu", kind))
  if peak.tflops is None:
    return None, peak.source
  if kind not in ICI:
    return None, f"no ICI bandwidth known for {kind!r} (deinforeg_jax.aot.ICI)"
  return PipelineCost(stage_flops, sends, peak.tflops * 1e12, ICI[kind].link_bytes_per_s), (
    peak.source
  )


def check_topology(
  config,
  topology: str,
  *,
  num_classes: int = 0,
  input_shape: tuple[int, ...] = (),
  headroom: float = 0.1,
  hbm_gib: float = 0.0,
) -> TopologyReport:
  """Compile ``config``'s steps for ``topology``; raises ``AotError`` when it cannot.

  ``hbm_gib`` (> 0) overrides the chip's HBM from ``HBM_GIB``; a step fits when its
  per-chip bytes are at most ``(1 - headroom)`` of the HBM.
  """
  try:
    validate_config(config)
  except ConfigError as e:
    raise AotError(str(e)) from e
  shapes = run_shapes(config, num_classes, input_shape)
  devices = topology_devices(topology)
  kind = devices[0].device_kind
  hbm = int(hbm_gib * GIB) if hbm_gib > 0 else (HBM_GIB[kind] * GIB if kind in HBM_GIB else None)
  note, cost, source = "", None, ""
  try:
    run = build_run(config, shapes, platform="tpu", num_old=0)
    if config.parallel.mode == "pipeline":
      used, reports, note, sends = _pipeline(run, devices)
      cost, source = _pipeline_cost(config, kind, reports, sends)
    else:
      used, reports = _data_parallel(run, devices)
  except ConfigError as e:
    raise AotError(str(e)) from e
  return TopologyReport(
    topology=topology,
    device_kind=kind,
    chips=len(devices),
    hosts=len({d.process_index for d in devices}),
    mode=config.parallel.mode,
    chips_used=used,
    hbm_bytes=hbm,
    headroom=headroom,
    steps=reports,
    note=note,
    pipeline_cost=cost,
    cost_source=source,
    batches_per_epoch=run.steps_per_epoch,
  )


def check_topologies(
  config,
  topology_names: Sequence[str],
  *,
  json_path: str = "",
  **options,
) -> list[TopologyReport]:
  """``check_topology`` for each name, printing each report (``format_report``) or why it does
  not compile, and appending one JSON line per report to ``json_path`` if given.
  ``options``: ``check_topology``'s keywords.

  Raises:
    AotError: some topology does not compile or fit; one line each, with the fields to change.
  """
  reports, failures = [], []
  for topology in topology_names:
    try:
      report = check_topology(config, topology, **options)
    except AotError as e:
      print(f"{topology}: DOES NOT COMPILE: {e}", flush=True)
      failures.append(f"{topology}: {e}")
      continue
    print(format_report(report, config), flush=True)
    if json_path:
      with safe_files.open_for_append(json_path) as f:
        f.write(json.dumps({"config": config.to_dict(), **report.as_dict()}) + "\n")
    if report.fits is False:
      failures.append(no_fit_message(report))
    reports.append(report)
  if failures:
    raise AotError("\n".join(failures))
  return reports


# ------------------------------------------------------------------ text


def _gib(n: float) -> str:
  """Bytes as GiB (MiB below 1 GiB)."""
  return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 2**20:.2f} MiB"


def _duration(seconds: float) -> str:
  """Seconds as ms (µs below 0.1 ms)."""
  return f"{1e3 * seconds:.2f} ms" if seconds >= 1e-4 else f"{1e6 * seconds:.2f} µs"


def format_report(report: TopologyReport, config) -> str:
  """The human-readable block printed for one topology."""
  hbm = "HBM unknown" if report.hbm_bytes is None else f"{_gib(report.hbm_bytes)} HBM per chip"
  if report.mode == "pipeline":
    where = f"pipeline, {report.chips_used} stage(s) on the chips of one host"
  else:
    per_chip = config.data.batch_size // report.chips_used
    state = "sharded (parallel.shard_state)" if config.parallel.shard_state else "replicated"
    where = (f"data parallel over {report.chips_used} chip(s), global batch "
             f"{config.data.batch_size} ({per_chip} per chip), state {state}")
  lines = [
    f"{report.topology}: {report.device_kind}, {report.chips} chip(s) on {report.hosts} "
    f"host(s), {hbm}; {where}",
    f"  {'step':<28}{'arguments':>12}{'temporaries':>12}{'outputs':>12}{'aliased':>12}"
    f"{'code':>12}{'per chip':>12}{'FLOPs/chip':>12}{'compile':>9}",
  ]
  for s in report.steps:
    lines.append(
      f"  {s.name:<28}{_gib(s.argument_bytes):>12}{_gib(s.temp_bytes):>12}"
      f"{_gib(s.output_bytes):>12}{_gib(s.alias_bytes):>12}{_gib(s.code_bytes):>12}"
      f"{_gib(s.total_bytes):>12}{s.flops:>12.3e}{s.compile_s:>8.1f}s"
    )
  train_flops = sum(s.flops for s in report.steps if s.name.startswith("train"))
  if report.mode == "data":
    train_flops *= report.chips_used
  lines.append(
    f"  per chip = arguments + temporaries + outputs - aliased (outputs reusing the donated "
    f"state) + code; train FLOPs per step, all chips: {train_flops:.3e} (XLA's estimate)"
  )
  if report.mode == "pipeline":
    lines.extend(_pipeline_cost_lines(report))
  if report.note:
    lines.append(f"  note: {report.note}")
  if report.fits is None:
    lines.append(f"  fit not judged: no HBM size known for {report.device_kind!r}; pass --hbm_gib")
  else:
    verdict = "FITS" if report.fits else "DOES NOT FIT"
    lines.append(
      f"  {verdict}: peak {_gib(report.peak_bytes)} per chip "
      f"({100 * report.peak_bytes / report.hbm_bytes:.1f}% of HBM) against "
      f"{_gib(report.budget_bytes)} ({report.headroom:.0%} of the HBM kept as headroom for "
      f"the runtime, input buffers and fragmentation); "
      f"{_gib(report.budget_bytes - report.peak_bytes)} to spare"
    )
  return "\n".join(lines)


def _pipeline_cost_lines(report: TopologyReport) -> list[str]:
  """The cost model's per-stage compute and transfer and its predicted speedup."""
  cost = report.pipeline_cost
  if cost is None:
    return [f"  pipeline cost model: none, {report.cost_source}"]
  lines = [
    f"  pipeline cost model, per batch ({cost.peak_flops_per_s / 1e12:.0f} TFLOP/s, "
    f"{report.cost_source}; one ICI link, {cost.link_bytes_per_s / 1e9:.0f} GB/s each way):"
  ]
  for k, (flops, sent, c, x, bound) in enumerate(
    zip(cost.stage_flops, cost.sent_bytes, cost.compute_s, cost.transfer_s, cost.bound)
  ):
    lines.append(
      f"    stage {k}: {flops:.3e} FLOPs -> {_duration(c)}; sends {_gib(sent)} -> "
      f"{_duration(x)} ({bound}-bound)"
    )
  lines.append(
    f"  predicted speedup over one chip: {cost.speedup:.2f}x in the steady state (stage "
    f"{cost.slowest_stage} sets the rate, {_duration(cost.tick_s)} per batch, against "
    f"{_duration(cost.one_chip_s)} for every stage on one chip); "
    f"{cost.epoch_speedup(report.batches_per_epoch):.2f}x over an epoch of "
    f"{report.batches_per_epoch} batches (fill and drain)"
  )
  return lines


def no_fit_message(report: TopologyReport) -> str:
  """Why ``report`` does not fit and which fields to change, largest cause first."""
  worst = max(report.steps, key=lambda s: s.total_bytes)
  state_heavy = worst.argument_bytes >= worst.temp_bytes
  first = (
    "config.parallel.shard_state=True or config.model.width / config.model.projector (the "
    "state dominates)"
    if state_heavy
    else "config.data.batch_size / config.data.eval_batch_size (temporaries dominate)"
  )
  return (
    f"{report.topology}: the {worst.name} step needs {_gib(worst.total_bytes)} per chip, more "
    f"than {_gib(report.budget_bytes)} ({1 - report.headroom:.0%} of {_gib(report.hbm_bytes)}). "
    f"Change {first} first; the fields that matter: {CHANGE_FIELDS}."
  )
