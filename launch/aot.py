"""Compile a run's train and eval steps for Cloud TPU topologies ahead of time, without a TPU.

  python -m launch.aot --config=launch/configs/cifar10_vgg.py --topology=v5e:2x2,v4:2x2x1
  python -m launch.aot --config=launch/configs/agnews_lstm.py --topology=v5e:4x4 --config.rule=bp

Takes the same ``--config`` flags as ``launch.train`` and, for every ``--topology``
(``get_topology_desc`` names: ``v5e:2x2``, ``v5e:4x4``, ``v4:2x2x1``, ``v5p:2x2x1``,
``v6e:2x2``, ...), builds the topology's compile-only TPU devices, builds the run's
model, objective and optimizer as ``train.train_and_evaluate`` does and compiles
its jitted steps with abstract arguments (``jax.ShapeDtypeStruct``; no array is
materialised, the state comes from ``jax.eval_shape``):

* data parallel (``config.parallel.mode="data"``): ``train.compile_steps`` over a
  ``data`` mesh of the topology's chips (``config.parallel.num_devices``, 0 = all):
  the global batch sharded over the chips, the state replicated, or with
  ``config.parallel.shard_state`` its large arrays split over the chips
  (``parallel.state_shardings``);
* pipeline (``"pipeline"``): the stages ``pipeline.plan_stages`` balances, each
  stage's train and eval step compiled for its own chip of one host.

It prints, per topology, the chips and hosts (as libtpu lays the topology out: 4 chips
per host, so an 8-chip single-host VM such as v5litepod-8 shows as 2 hosts; the compiled
data-parallel program is the same), per chip and step the argument,
temporary and output bytes (``Compiled.memory_analysis()``; ``aliased`` is the
part of the outputs that reuses the donated state's buffers) against the chip's
HBM, whether the step fits with ``--headroom``, XLA's FLOPs per chip and step
(``Compiled.cost_analysis()``) and the compile time.  It exits with status 1 when a
step does not fit or does not compile (the message names the config fields to
change), 2 when libtpu is missing or a flag is wrong.

No dataset is read: the input shape and class count come from ``DATASETS`` for
the shipped datasets (``digits`` 8x8x1/10, ``cifar10`` 32x32x3/10, ``cifar100``
32x32x3/100, ``tiny_imagenet`` 32x32x3/200 as prepared with ``--resize=32``; text:
``(config.data.max_len,)`` int32 token ids, the reference length when 0, with
``config.data.vocab_size`` embedding rows) or from
``--input_shape`` / ``--num_classes`` for any other ``config.data.name``.

Needs libtpu (``pip install -e ".[tpu]"``, i.e. ``jax[tpu]`` at the pinned JAX
version); libtpu prints warnings about missing TPU environment variables
(``TPU_ACCELERATOR_TYPE``, ``TPU_WORKER_HOSTNAMES``) on a machine without a TPU:
they are harmless here.  A full-size reference VGG step takes minutes to compile
on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import time
from typing import Any

# Compiling for a topology never opens a TPU, so libtpu's lock against a second process on the
# same chips (its lock file in the system's temporary directory) is not needed; without this
# every other running JAX process that tried the TPU backend (libtpu installed) would make the
# topology fail to load.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from jax.experimental import topologies
from jax.sharding import AxisType, Mesh, SingleDeviceSharding

from deinforeg_jax import growth, models, optim, parallel, pipeline, rules, safe_files, steps, train
from deinforeg_jax import user_errors
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data.tfds_source import TEXT_MAX_LEN
from deinforeg_jax.modules import layers
from launch import cli

GIB = 2**30

# HBM per chip by JAX device kind, from Google Cloud's TPU documentation
# (https://cloud.google.com/tpu/docs/system-architecture-tpu-vm and the per-version pages
# https://cloud.google.com/tpu/docs/v4, .../v5e, .../v5p, .../v6e): v4 32 GiB, v5e 16 GiB,
# v5p 95 GiB, v6e (Trillium) 32 GiB (the pages write "GB" for some generations; the runtime
# keeps a little of it, which --headroom covers).  One JAX device per chip (v4 in megacore mode).
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}

# The chip configuration libtpu uses on Cloud TPU VMs, as in JAX's own AOT tests: v4 runs
# its two TensorCores as one device ("megacore"); without it the topology has 2 devices
# per chip.  Keys are the generation before ':' in the topology name.
CHIP_CONFIG = {"v4": "megacore", "v5p": "megachip_tccontrol", "v6e": "megachip_tccontrol"}

# config.data.name -> (one example's shape or None for text, classes, training examples).
# The training size only sets the learning-rate schedule's length (constants in the step).
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
class RunShapes:
  """What the steps need to know about the data, without reading it."""

  input_shape: tuple[int, ...]
  num_classes: int
  num_train: int
  kind: str  # "image" | "text"

  @property
  def dtype(self):
    return jnp.int32 if self.kind == "text" else jnp.float32


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
    return {
      **{k: v for k, v in dataclasses.asdict(self).items() if k != "steps"},
      "steps": [{**dataclasses.asdict(s), "total_bytes": s.total_bytes} for s in self.steps],
      "peak_bytes": self.peak_bytes,
      "fits": self.fits,
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
) -> RunShapes:
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
  return RunShapes(shape, classes, num_train, config.data.kind)


# ------------------------------------------------------------------ compiling


def _compile(name: str, jitted, *args) -> StepReport:
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


def _abstract(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def state_shapes_of(model, tx, input_shape):
  """``steps.create_train_state``'s shapes and dtypes (``jax.eval_shape``: nothing is built)."""
  init = functools.partial(steps.create_train_state, model, tx, input_shape=input_shape)
  return jax.eval_shape(init, jax.random.key(0))


def _placed(state_shapes, shardings):
  """``state_shapes`` with a sharding per array (a pytree of them, or one for all)."""
  if isinstance(shardings, jax.sharding.Sharding):
    shardings = jax.tree.map(lambda _: shardings, state_shapes)
  return jax.tree.map(lambda s, p: _abstract(s.shape, s.dtype, p), state_shapes, shardings)


def _batch_args(config, input_shape, dtype, sharding, eval_step: bool):
  """Abstract ``(inputs, labels[, mask])`` of a global train (or eval) batch."""
  batch = config.data.eval_batch_size if eval_step else config.data.batch_size
  args = [
    _abstract((batch, *input_shape), dtype, sharding),
    _abstract((batch,), jnp.int32, sharding),
  ]
  if eval_step:
    args.append(_abstract((batch,), jnp.float32, sharding))
  return args


def _data_parallel(config, run, shapes: RunShapes, devices) -> tuple[int, list[StepReport]]:
  count = config.parallel.num_devices or len(devices)
  if count > len(devices):
    raise AotError(
      f"config.parallel.num_devices={config.parallel.num_devices} but the topology has "
      f"{len(devices)} chips; use 0 (all chips) or a number up to {len(devices)}."
    )
  mesh = Mesh(np.asarray(devices[:count]), (parallel.DATA_AXIS,), axis_types=(AxisType.Auto,))
  try:
    parallel.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
    parallel.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  except ValueError as e:
    raise AotError(str(e)) from e
  phase = run["phase"]
  state_shapes = state_shapes_of(run["model"], run["tx"], shapes.input_shape)
  # Replicated, or with config.parallel.shard_state every large array split over the chips.
  state_sharding = parallel.state_shardings(state_shapes, mesh, config.parallel.shard_state)
  train_step, eval_step = train.compile_steps(
    phase.model,
    run["objective"],
    run["tx"],
    shapes.num_classes,
    config.loss,
    mesh,
    state_sharding,
    log_grad_norms=config.train.log_grad_norms,
    seed=config.seed,
    frozen=phase.frozen,
  )
  sharded = parallel.batch_sharding(mesh)
  state = _placed(state_shapes, state_sharding)
  batch = functools.partial(_batch_args, config, shapes.input_shape, shapes.dtype, sharded)
  reports = [
    _compile("train", train_step, state, *batch(False)),
    _compile("eval", eval_step, state, *batch(True)),
  ]
  return count, reports


def _pipeline(config, run, shapes: RunShapes, devices) -> tuple[int, list[StepReport], str]:
  model = run["model"]
  num_blocks = len(getattr(model, "blocks", ()))
  checked = config.copy_and_resolve_references()
  checked.parallel.num_stages = 1  # the stage count is checked against the topology below
  try:
    pipeline.pipeline_settings(checked, num_blocks)  # rule, text, growth, schedule names
  except ValueError as e:
    raise AotError(str(e)) from e
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
  plan = pipeline.plan_stages(
    model, run["tx"], run["objective"], config.loss, shapes.input_shape,
    config.data.batch_size, stages, balance,
  )
  stage_models = [pipeline.stage_model(model, a, b) for a, b in plan.bounds]
  input_shapes = pipeline.stage_input_shapes(stage_models, shapes.input_shape)
  reports = []
  for k, (stage, shape, device) in enumerate(zip(stage_models, input_shapes, host)):
    place = SingleDeviceSharding(device)
    train_step = jax.jit(
      steps.make_train_step(
        stage, run["objective"], run["tx"], shapes.num_classes, config.loss,
        log_grad_norms=config.train.log_grad_norms,
      ),
      in_shardings=(place,) * 3,
      out_shardings=place,
      donate_argnums=0,
    )
    eval_step = jax.jit(steps.make_eval_step(stage), in_shardings=(place,) * 4,
                        out_shardings=place)
    state = _placed(state_shapes_of(stage, run["tx"], shape), place)
    batch = functools.partial(_batch_args, config, shape, jnp.float32, place)  # images only
    blocks = f"blocks {plan.bounds[k][0]}-{plan.bounds[k][1] - 1}"
    reports.append(_compile(f"train stage {k} ({blocks})", train_step, state, *batch(False)))
    reports.append(_compile(f"eval stage {k}", eval_step, state, *batch(True)))
  return stages, reports, note


def build_run(config, shapes: RunShapes) -> dict[str, Any]:
  """The model, final growth phase, objective and optimizer of ``config``, as
  ``train.train_and_evaluate`` builds them (the final phase runs every block; blocks a
  grown run would freeze are compiled as trainable, an upper bound on memory).
  ``config.model.conv_impl="auto"`` is resolved for TPU, not for this host's CPU."""
  config = config.copy_and_resolve_references()
  config.model.conv_impl = layers.resolve_conv_impl(config.model.conv_impl, "tpu")
  model = models.create_model(config, shapes.num_classes)
  steps_per_epoch = max(shapes.num_train // config.data.batch_size, 1)
  schedule = optim.make_schedule(
    config.optim, steps_per_epoch * config.train.num_epochs, steps_per_epoch
  )
  return {
    "model": model,
    "phase": growth.make_plan(config, model, num_old=0).final,
    "objective": rules.get_objective(config.rule),
    "tx": optim.make_optimizer(config.optim, schedule),
  }


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
  except ValueError as e:
    raise AotError(str(e)) from e
  shapes = run_shapes(config, num_classes, input_shape)
  devices = topology_devices(topology)
  kind = devices[0].device_kind
  hbm = int(hbm_gib * GIB) if hbm_gib > 0 else (HBM_GIB[kind] * GIB if kind in HBM_GIB else None)
  try:
    run = build_run(config, shapes)
  except ValueError as e:
    raise AotError(str(e)) from e
  note = ""
  if config.parallel.mode == "pipeline":
    used, reports, note = _pipeline(config, run, shapes, devices)
  else:
    used, reports = _data_parallel(config, run, shapes, devices)
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
  )


# ------------------------------------------------------------------ printing


def _gib(n: float) -> str:
  """Bytes as GiB (MiB below 1 GiB)."""
  return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / 2**20:.2f} MiB"


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


# ------------------------------------------------------------------ command line

cli.define_config(
  "config", help_string="Run config (ml_collections file), as launch.train.", lock_config=True
)
_TOPOLOGY = flags.DEFINE_list(
  "topology", None, "TPU topologies, e.g. v5e:2x2,v5e:4x4,v4:2x2x1,v6e:2x2.", required=True
)
_NUM_CLASSES = flags.DEFINE_integer(
  "num_classes", 0, "Classes; 0: from config.data.name (digits/cifar10 10, cifar100 100, "
  "tiny_imagenet 200, imdb_reviews 2, ag_news_subset 4, dbpedia 14). No dataset is read."
)
_INPUT_SHAPE = flags.DEFINE_list(
  "input_shape", [], "One example's shape, e.g. 32,32,3; empty: from config.data.name (digits "
  "8,8,1; cifar10/cifar100/tiny_imagenet 32,32,3; text: config.data.max_len token ids, int32)."
)
_HEADROOM = flags.DEFINE_float(
  "headroom", 0.1, "Fraction of each chip's HBM kept free for the runtime, input buffers and "
  "fragmentation; a step fits when its per-chip bytes stay below the rest."
)
_HBM_GIB = flags.DEFINE_float("hbm_gib", 0.0, "Per-chip HBM in GiB; 0: from the device kind.")
_JSON = flags.DEFINE_string("json", "", "Append one JSON line per topology to this file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  config = flags.FLAGS.config
  # The numbers must be those of the program a TPU would run: XLA's full optimisation, even when
  # JAX_DISABLE_MOST_OPTIMIZATIONS is set (the test suite sets it for quicker compiles).
  jax.config.update("jax_disable_most_optimizations", False)
  require_libtpu()
  try:
    input_shape = tuple(int(v) for v in _INPUT_SHAPE.value)
  except ValueError:
    raise user_errors.UserError(
      f"--input_shape={','.join(_INPUT_SHAPE.value)}: give integers, e.g. 32,32,3."
    ) from None
  failures = []
  for topology in _TOPOLOGY.value:
    try:
      report = check_topology(
        config, topology, num_classes=_NUM_CLASSES.value, input_shape=input_shape,
        headroom=_HEADROOM.value, hbm_gib=_HBM_GIB.value,
      )
    except AotError as e:
      print(f"{topology}: DOES NOT COMPILE: {e}", flush=True)
      failures.append(f"{topology}: {e}")
      continue
    print(format_report(report, config), flush=True)
    if _JSON.value:
      with safe_files.open_for_append(_JSON.value) as f:
        f.write(json.dumps({"config": config.to_dict(), **report.as_dict()}) + "\n")
    if report.fits is False:
      failures.append(no_fit_message(report))
  if failures:
    raise AotError("\n".join(failures))


def run():
  """Entry point of the ``deinforeg-aot`` console script (exit codes: ``launch.cli``; 1 also
  when a topology does not compile or fit)."""
  cli.run(main)


if __name__ == "__main__":
  run()
