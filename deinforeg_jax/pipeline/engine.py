"""``PipelineEngine``: the ``config.parallel.mode="pipeline"`` engine of ``train.run_epochs``."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from deinforeg_jax import models, program_cache, steps, throughput
from deinforeg_jax.pipeline.balance import BALANCE_METHODS, plan_stages
from deinforeg_jax.pipeline.cost import stage_inputs
from deinforeg_jax.pipeline.executor import DISPATCH_MODES, LOCAL_RULES, SCHEDULES, Pipeline
from deinforeg_jax.config_error import ConfigError
from deinforeg_jax.run import Run, input_dtype


def pipeline_settings(config, num_blocks: int) -> dict[str, Any]:
  """Read and check ``config.parallel``'s pipeline fields; a clear error names the bad field."""
  par = config.parallel
  settings = {
    "num_stages": par.num_stages,
    "schedule": par.pipeline_schedule,
    "balance": par.pipeline_balance,
    "dispatch": par.pipeline_dispatch,
  }
  if config.rule == "bp":
    raise ConfigError(
      "config.rule='bp' cannot be pipelined: its gradient crosses block boundaries, so "
      f"stages cannot update independently. Use one of {LOCAL_RULES}, or data parallelism "
      "(config.parallel.mode='data')."
    )
  unsupported = _unsupported_feature(config)
  if unsupported:
    raise ConfigError(f"{unsupported}; use data parallelism (config.parallel.mode='data').")
  if jax.process_count() > 1:
    raise ConfigError(
      "config.parallel.mode='pipeline' runs on the devices of one host; use data "
      "parallelism for multi-host jobs (docs/tpu_vm.md)."
    )
  for field, allowed in (
    ("schedule", SCHEDULES),
    ("balance", BALANCE_METHODS),
    ("dispatch", DISPATCH_MODES),
  ):
    if settings[field] not in allowed:
      raise ConfigError(
        f"config.parallel.pipeline_{field}={settings[field]!r} is unknown; choose one of {allowed}."
      )
  devices = jax.local_devices()
  limit = min(len(devices), num_blocks)
  stages = settings["num_stages"] or limit
  if not isinstance(stages, int) or not 1 <= stages <= limit:
    raise ConfigError(
      f"config.parallel.num_stages={settings['num_stages']!r} must be 0 (auto) or 1..{limit}: "
      f"one device per stage ({len(devices)} visible) and at least one block per stage "
      f"({num_blocks} blocks). For fake CPU devices set "
      "XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts."
    )
  settings["num_stages"], settings["devices"] = stages, devices[:stages]
  return settings


def _unsupported_feature(config) -> str:
  """The first config setting the pipeline cannot run, with the reason, or ""."""
  checks = (
    ("rule", config.rule not in LOCAL_RULES, "the pipeline trains per-block local losses"),
    (
      "model.arch",
      config.model.arch in models.TEXT_ARCHITECTURES,
      "stages pass one activation array, text blocks pass a sequence and its mask",
    ),
    (
      "parallel.shard_state",
      config.parallel.shard_state,
      "each stage's state lives whole on its own device",
    ),
    *(
      (f"grow.{name}", bool(config.grow[name]), "growth changes which blocks run, stages are fixed")
      for name in ("from_workdir", "schedule", "side_split")
    ),
  )
  for field, bad, reason in checks:
    if bad:
      section, _, name = field.rpartition(".")
      value = (config[section] if section else config)[name]
      return f"config.{field}={value!r} is not supported with config.parallel.mode='pipeline' ({reason})"
  return ""


class PipelineEngine:
  """The stack split into stages on their own devices (``Pipeline``), drained at every
  segment end, so checkpoints and evaluation see every stage at the same step.

  Reads ``config.parallel.num_stages`` (0: one stage per device, at most one per
  block), ``pipeline_schedule`` ("pipelined" | "synchronous"), ``pipeline_balance``
  ("flops" | "time" | "uniform") and ``pipeline_dispatch`` ("auto" | "threads" |
  "ticks"); ``config.parallel.num_devices`` is not used.  Its ``report`` (stage
  plan, devices, busy and wall time) goes to ``results.json`` and ``pipeline.json``.
  The stage plan (unless measured) and the ``Pipeline`` with its programs are kept in
  ``program_cache.shared_programs`` for later runs of the same programs in this process.
  """

  name = "pipeline"

  def __init__(self, run: Run):
    config, model, info = run.config, run.model, run.info
    self.settings = pipeline_settings(config, len(getattr(model, "blocks", ())))
    programs = program_cache.shared_programs(run)

    def plan():
      return plan_stages(
        model,
        run.tx,
        run.objective,
        config.loss,
        info.input_shape,
        config.data.batch_size,
        self.settings["num_stages"],
        self.settings["balance"],
        self.settings["devices"][0],
      )

    measured = self.settings["balance"] == "time"  # measured again by every run
    self.plan = plan() if measured else program_cache.reuse(programs, "stage plan", plan)
    self.pipe = program_cache.reuse(
      programs,
      ("pipeline", self.plan.bounds),
      lambda: Pipeline(
        model,
        run.tx,
        run.objective,
        config.loss,
        info.input_shape,
        self.plan.bounds,
        self.settings["devices"],
        log_grad_norms=config.train.log_grad_norms,
      ),
    )
    self.busy, self.wall_s, self.dispatch = np.zeros(self.pipe.num_stages), 0.0, None
    self._flops = program_cache.reuse(
      programs, ("stage flops", self.plan.bounds), lambda: self._stage_flops(run)
    )
    self._last_batch = None

  def init(self, rng):
    return self.pipe.init(rng)

  def to_train_state(self, state):
    return self.pipe.to_train_state(state)

  def from_train_state(self, full):
    return self.pipe.from_train_state(full)

  def set_phase(self, phase):
    del phase  # one phase: growth is refused by pipeline_settings
    return None  # stage programs compile on their first batch

  def train_segment(self, state, batches, position, on_step):

    def remembered(batches):
      for batch in batches:
        self._last_batch = steps.model_inputs(batch), batch["label"]
        yield batch

    state, record = self.pipe.train_epoch(
      state,
      remembered(batches),
      self.settings["schedule"],
      self.settings["dispatch"],
      on_batch=lambda t, m: on_step(m),
      first_batch=position,
    )
    self.busy += [b or 0.0 for b in record.busy_s]
    self.wall_s += record.wall_s
    self.dispatch = record.dispatch
    return state, record.metrics

  def check_state(self, state):
    return steps.state_problem(self.pipe.check(state, *self._last_batch))

  def evaluate(self, state, batches):
    return steps.accuracy(batches, lambda batch: self.pipe.count_correct(state, batch))

  def variables(self, state):
    full = jax.device_put(self.pipe.to_train_state(state), self.pipe.devices[0])
    return {"params": full.params, "batch_stats": full.batch_stats}

  def describe(self):
    return (
      f"{self.pipe.num_stages} stage(s) {self.plan.as_dict()['stage_blocks']} on "
      f"{[str(d) for d in self.pipe.devices]}, {self.settings['schedule']} schedule; "
      f"{self.plan.cost_kind} cost per stage {[f'{c:.3g}' for c in self.plan.stage_costs]}, "
      f"ideal speedup {self.plan.ideal_speedup:.2f}"
    )

  def _stage_flops(self, run: Run) -> float:
    """The FLOPs of one train step of every stage, summed (each compiled for its device, as its
    first batch then runs it)."""
    states = self.pipe.abstract_states()
    batch = run.config.data.batch_size
    inputs = stage_inputs(
      self.pipe.train_steps, states,
      jax.ShapeDtypeStruct((batch, *run.info.input_shape), input_dtype(run.info.kind)),
    )
    total = 0.0
    for step, state, x, device in zip(self.pipe.train_steps, states, inputs, self.pipe.devices):
      place = jax.sharding.SingleDeviceSharding(device)
      state, x, labels = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=place),
        (state, x, jax.ShapeDtypeStruct((batch,), jax.numpy.int32)),
      )
      total += throughput.step_flops(step.lower(state, x, labels).compile())
    return total

  def step_cost(self):
    device = self.pipe.devices[0]
    return throughput.StepCost(
      self._flops, self.pipe.num_stages, device.platform, device.device_kind
    )

  def report(self):
    return {
      **self.plan.as_dict(),
      "devices": [str(d) for d in self.pipe.devices],
      "schedule": self.settings["schedule"],
      "dispatch": self.dispatch,
      "stage_busy_s": self.busy.tolist(),
      "pipeline_wall_s": self.wall_s,
    }
