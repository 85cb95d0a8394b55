"""``DataParallelEngine``: the ``config.parallel.mode="data"`` engine of ``train.run_epochs``.

Every block's local loss in one jitted program (``Run.jit_steps``); the global batch is sharded
over the ``data`` axis of a device mesh and the state replicated, or with
``config.parallel.shard_state`` its large arrays split over the devices (``parallel``), so the
loss statistics always cover the global batch.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from deinforeg_jax import parallel, program_cache, steps, throughput, xla_cpu
from deinforeg_jax.run import Run, input_dtype


class DataParallelEngine:
  """All blocks in one jitted step over a ``data`` mesh (batch sharded, state replicated).

  Its programs (initial state, per-phase train/eval/check steps, ``Run.jit_steps``) are kept in
  ``program_cache.shared_programs``, so a later run of the same programs in this process reuses
  them.
  """

  name = "data"

  def __init__(self, run: Run):
    config = run.config
    self.mesh = parallel.make_data_mesh(config.parallel.num_devices)
    parallel.check_batch_divisible(config.data.batch_size, self.mesh, "data.batch_size")
    parallel.check_batch_divisible(config.data.eval_batch_size, self.mesh, "data.eval_batch_size")
    self.run = run
    self._programs = program_cache.shared_programs(run)
    self.state_spec, self.state_sharding = program_cache.reuse(
      self._programs, "state", self._layout
    )
    self._train = self._eval = self._check = self._flops = None
    self._last_batch = None

  def _layout(self):
    """The state's shapes placed on their shardings (``ShapeDtypeStruct``s) and the
    shardings (a pytree of each)."""
    shapes = self.run.abstract_state()
    sharding = parallel.state_shardings(shapes, self.mesh, self.run.config.parallel.shard_state)
    spec = jax.tree.map(
      lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where), shapes, sharding
    )
    return spec, sharding

  def init(self, rng):
    options = xla_cpu.init_options(self.mesh.devices.flat[0].platform)
    return program_cache.reuse(
      self._programs,
      "init",
      lambda: jax.jit(
        self.run.create_state, out_shardings=self.state_sharding, compiler_options=options
      ),
    )(rng)

  def to_train_state(self, state):
    return state

  def from_train_state(self, full):
    return full

  def set_phase(self, phase):
    name = ("phase", phase.key)
    new, start = name not in self._programs, time.perf_counter()
    self._train, self._eval, self._check, self._flops = program_cache.reuse(
      self._programs, name, lambda: self._compile(phase)
    )
    return time.perf_counter() - start if new else None

  def _compile(self, phase):
    """``phase``'s compiled train step, jitted eval and check steps, and the train step's FLOPs
    on one device."""
    programs = self.run.jit_steps(phase, self.mesh, self.state_sharding)
    sharded = parallel.batch_sharding(self.mesh)
    batch, info = self.run.config.data.batch_size, self.run.info
    inputs = jax.ShapeDtypeStruct(
      (batch, *info.input_shape), input_dtype(info.kind), sharding=sharded
    )
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharded)
    train = programs.train.lower(self.state_spec, inputs, labels).compile()
    return train, programs.eval, programs.check, throughput.step_flops(train)

  def train_segment(self, state, batches, position, on_step):
    del position
    metrics = []
    for batch in batches:
      batch = parallel.shard_batch(batch, self.mesh)
      self._last_batch = steps.model_inputs(batch), batch["label"]
      state, step_metrics, _ = self._train(state, *self._last_batch)
      metrics.append(step_metrics)
      on_step(step_metrics)
    return state, metrics

  def check_state(self, state):
    check, _ = self._check(state, *self._last_batch)
    return steps.state_problem(jax.device_get(check))

  def evaluate(self, state, batches):
    def count_correct(batch):
      batch = parallel.shard_batch(batch, self.mesh)
      out, _ = self._eval(state, steps.model_inputs(batch), batch["label"], batch["mask"])
      return out["correct"], jnp.sum(batch["mask"])  # global: every process's rows

    return steps.accuracy(batches, count_correct)

  def variables(self, state):
    return {"params": state.params, "batch_stats": state.batch_stats}

  def describe(self):
    kind = "sharded" if self.run.config.parallel.shard_state else "replicated"
    return (
      f"{self.mesh.shape[parallel.DATA_AXIS]} device(s), state {kind}: "
      f"{parallel.bytes_per_device(self.state_spec) / 2**20:.1f} MiB per device"
    )

  def step_cost(self):
    device = self.mesh.devices.flat[0]
    count = self.mesh.devices.size
    return throughput.StepCost(self._flops * count, count, device.platform, device.device_kind)

  def report(self):
    return None

