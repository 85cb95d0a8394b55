"""``train_pipelined(config, workdir)``: the launcher's ``parallel.mode="pipeline"`` trainer."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from deinforeg_jax import checkpoint, inference, optim, parallel, rules, stack, train
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data import (
  eval_batches,
  load_dataset,
  make_augment,
  steps_per_epoch,
  train_batches,
)
from deinforeg_jax.pipeline.balance import BALANCE_METHODS, plan_stages
from deinforeg_jax.pipeline.executor import DISPATCH_MODES, SCHEDULES, Pipeline
from deinforeg_jax.pipeline.stages import LOCAL_RULES
from deinforeg_jax.reporting import ProgressBar, RunLog


def pipeline_settings(config, num_blocks: int) -> dict[str, Any]:
  """Read and check ``config.parallel``'s pipeline fields; a clear error names the bad field."""
  par = config.parallel
  settings = {
    "num_stages": par.get("num_stages", 0),
    "schedule": par.get("pipeline_schedule", "pipelined"),
    "balance": par.get("pipeline_balance", "flops"),
    "dispatch": par.get("pipeline_dispatch", "auto"),
  }
  if config.rule == "bp":
    raise ValueError(
      "config.rule='bp' cannot be pipelined: its gradient crosses block boundaries, so "
      f"stages cannot update independently. Use one of {LOCAL_RULES}, or data parallelism "
      "(config.parallel.mode='data')."
    )
  unsupported = _unsupported_feature(config)
  if unsupported:
    raise ValueError(
      f"{unsupported} is not supported with config.parallel.mode='pipeline' (the pipeline "
      f"trains vision {LOCAL_RULES} stacks); use data parallelism (config.parallel.mode='data')."
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


def _unsupported_feature(config) -> str:
  """The first config setting the pipeline trainer does not implement, or ""."""
  checks = (
    ("rule", config.rule not in LOCAL_RULES),
    ("model.arch", config.model.arch in stack.TEXT_ARCHITECTURES),
    ("grow.from_workdir", bool(config.grow.from_workdir)),
    ("grow.schedule", bool(config.grow.schedule)),
    ("grow.side_split", bool(config.grow.side_split)),
    ("train.log_grad_norms", bool(config.train.log_grad_norms)),
  )
  for field, bad in checks:
    if bad:
      section, _, name = field.rpartition(".")
      value = (config[section] if section else config)[name]
      return f"config.{field}={value!r}"
  return ""


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
  data = load_dataset(config.data, workdir=workdir)
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
    full = jax.device_put(pipe.to_train_state(states), pipe.devices[0])
    log.set_adaptive_inference(
      inference.adaptive_report(
        model,
        {"params": full.params, "batch_stats": full.batch_stats},
        eval_batches(test_split, info, global_batch_size=config.data.eval_batch_size),
        train.model_inputs,
        config.inference,
      )
    )
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
