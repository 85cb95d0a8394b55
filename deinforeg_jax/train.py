"""The one training loop: ``train_and_evaluate(config, workdir)``.

It loads the data, builds the run (``run.build_run``: model, growth plan, objective, schedule,
optimizer) and the engine of ``config.parallel.mode`` (``engine.create_engine``), then resumes
or starts and drives ``run_epochs``, the only epoch loop: resume position, progress, the NaN
stop, checkpoint cadence, evaluation, logging and results are written once here, and every
engine gets them.  The step itself (the local losses and the update) is ``steps.make_train_step``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import time
from typing import Any, Callable

import jax
import numpy as np

from deinforeg_jax import (
  checkpoint, grad_norms, inference, profiling, program_cache, resume, steps
)
from deinforeg_jax.startup import RunStart
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data import LoadedData, eval_batches, glove, load_dataset, make_augment, train_batches
from deinforeg_jax.engine import Engine, create_engine
from deinforeg_jax.epoch_metrics import EpochMetrics
from deinforeg_jax.preemption import Preempted, StopRequests
from deinforeg_jax.reporting import NonFiniteStateError, ProgressBar, RunLog, kept_checkpoint
from deinforeg_jax.run import Run, build_run
from deinforeg_jax.workdir_lock import WorkdirLock


@dataclasses.dataclass
class Training:
  """What the epoch loop drives: the run, its engine and data, and where it reports and saves."""

  run: Run
  engine: Engine
  data: LoadedData
  log: RunLog
  checkpointer: checkpoint.RunCheckpointer
  stop: StopRequests
  start: RunStart
  profiler: profiling.StepProfiler

  def test_batches(self, **process):
    """The test split in global evaluation batches (``process``: this process's share)."""
    config = self.run.config
    return eval_batches(
      self.data.test, self.data.info, global_batch_size=config.data.eval_batch_size, **process
    )


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Train ``config``, checkpointing to ``workdir``; resume if it holds a checkpoint.

  Writes ``metrics.jsonl``, ``checkpoints/`` and ``results.json`` to ``workdir``
  and returns the results dict.  A run interrupted at any point and started
  again with the same command continues exactly where its last checkpoint was;
  a run with other settings is refused (``checkpoint.check_compatible``), and so
  is a second run on the same workdir (``workdir_lock``).

  Raises:
    Preempted: SIGTERM/SIGINT arrived; a checkpoint at the current step was saved.
  """
  start = RunStart(config.train.compile_cache)  # before anything compiles
  validate_config(config)
  workdir = os.path.expanduser(workdir)
  with StopRequests(workdir) as stop:
    with WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
      return _train_and_evaluate(config, workdir, stop, start)


def _train_and_evaluate(config, workdir: str, stop: StopRequests, start) -> dict[str, Any]:
  data = load_dataset(config.data, workdir=workdir)
  run = build_run(config, data.info)
  engine = create_engine(run)
  log = RunLog(workdir, config)
  checkpointer = checkpoint.RunCheckpointer(
    workdir, keep=config.checkpoint.keep, use_async=config.checkpoint.use_async, info=log.info
  )
  profiler = profiling.StepProfiler(config.train.profile_steps, workdir, log.info)
  training = Training(run, engine, data, log, checkpointer, stop, start, profiler)
  try:
    finished = resume.already_finished(run, log, checkpointer, workdir)
    if finished is not None:
      return finished
    state, epoch_sums = _start(training)
    one_process = jax.process_count() == 1  # the last test pass is then ``final_test``'s
    final_pass = {}
    kept = program_cache.reuse(
      program_cache.shared_programs(run), ("final", run.plan.final.key), dict
    )

    def final_test(state) -> np.ndarray:
      """The last test pass: exit logits once, for the accuracy and the adaptive report."""
      final_pass["cached"] = inference.exit_logits(
        run.plan.final.model,
        engine.variables(state),
        training.test_batches(),
        steps.model_inputs,
        kept,
      )
      return inference.exit_accuracy(final_pass["cached"])

    with profiler:
      state, test_accuracy = run_epochs(
        training, state, epoch_sums, final_test if one_process else None
      )
    checkpointer.wait()
    stop.check("after the last step, before the results", checkpointer.latest_step())
    if one_process:
      log.set_adaptive_inference(
        inference.adaptive_report(
          run.plan.final.model,
          engine.variables(state),
          training.test_batches(),
          steps.model_inputs,
          config.inference,
          cached=final_pass.get("cached"),
          kept=kept,
        )
      )
    stop.check("during the final evaluation", checkpointer.latest_step())
  finally:
    checkpointer.close()
  step = int(engine.to_train_state(state).step)
  report = engine.report()
  log.record(**start.report(log.info))
  return log.finish(test_accuracy, step, data.info, {engine.name: report} if report else {})


def _start(training: Training) -> tuple[Any, EpochMetrics]:
  """The engine state to train from (initialised; GloVe, grown blocks and the latest checkpoint
  applied) and the running sums of its epoch, after the start-up line is logged."""
  run, engine, log, checkpointer = (
    training.run, training.engine, training.log, training.checkpointer
  )
  config, info = run.config, run.info
  training.stop.check("during start-up", checkpointer.latest_step())
  state = engine.init(jax.random.key(config.seed))
  full, glove_note = glove.initialise_embedding(
    config, engine.to_train_state(state), training.data.vocabulary
  )
  if glove_note:
    log.info(glove_note)
  full = run.plan.restore(full)
  epoch_sums = EpochMetrics()
  if checkpointer.latest_step() is not None:
    full, saved, changes = checkpointer.restore(
      full, checkpoint.make_metadata(config, full, info), resume.allowed_changes(config)
    )
    resume.check_not_past_the_end(run, int(full.step), checkpointer.workdir)
    log.resume(saved, changes)
    epoch_sums = EpochMetrics.from_metadata(saved)
  state = engine.from_train_state(full)
  # A finished run only evaluates: in one process that is ``final_test``, nothing to compile.
  finished = int(full.step) >= run.total_steps
  one_process = jax.process_count() == 1
  compile_s = None if finished and one_process else engine.set_phase(run.phase_at(int(full.step)))
  if training.data.label_noise:
    log.set_label_noise(training.data.label_noise)
  log.info(
    f"{config.rule} on {info.name}: {info.num_train} train / {info.num_test} test, "
    f"input {info.input_shape}, {info.num_classes} classes, "
    f"{parameter_count(full.params):,} parameters, {engine.describe()}, from step "
    f"{int(full.step)}" + (f"; train step compiled in {compile_s:.1f} s" if compile_s else "")
  )
  training.stop.check("during start-up", checkpointer.latest_step())
  return state, epoch_sums


def run_epochs(
  training: Training,
  state,
  epoch_sums: EpochMetrics | None = None,
  final_test: Callable[[Any], np.ndarray] | None = None,
):
  """The epoch loop from the state's step on; returns the final state and test accuracy.

  An epoch trains in segments that end at checkpoint steps
  (``config.checkpoint.every_steps``) and at the epoch's end.  After each segment
  the metrics are checked for NaN; before a save (every segment inside an epoch, every
  ``config.checkpoint.every_epochs``-th epoch end and the last step) the new state is
  checked (finite values, a finite loss of its own parameters on the last batch:
  ``Engine.check_state``), so a bad state never becomes the checkpoint a run resumes
  from; at the epoch's end the test split is evaluated and one line goes to
  ``metrics.jsonl``.  ``epoch_sums``: the running sums of a checkpoint taken inside the
  first epoch (``EpochMetrics``), so that epoch's metrics cover all of its steps.
  ``config.train.max_steps`` (0: no limit) ends the run early, as the end of an epoch.
  ``final_test(state) -> [K]`` replaces the engine's evaluation after the last step
  (the caller reuses that pass).  A stop request (``training.stop``: SIGTERM/SIGINT) ends the
  current segment after the running step, saves that step if no checkpoint holds it yet, and
  raises ``Preempted``.
  """
  run, engine, log, checkpointer, stop = (
    training.run, training.engine, training.log, training.checkpointer, training.stop
  )
  config, info, per_epoch, total = run.config, run.info, run.steps_per_epoch, run.total_steps
  num_epochs, every = config.train.num_epochs, config.checkpoint.every_steps
  augment = make_augment(config.data.augment, info)
  step = int(engine.to_train_state(state).step)
  saved_through = step  # the newest step a checkpoint holds (or the start: nothing to save)
  sums = epoch_sums if epoch_sums is not None else EpochMetrics()

  def save(state, step: int, epoch: int):
    nonlocal saved_through
    problem = engine.check_state(state)
    if problem:
      raise NonFiniteStateError(
        f"the state after step {step} (epoch {epoch + 1}) is not fit to save: {problem}. It was "
        f"not saved; {kept_checkpoint(checkpointer.latest_step())}. Lower "
        "config.optim.base_lr, check the input data, or change the optimizer."
      )
    full = engine.to_train_state(state)
    metadata = checkpoint.make_metadata(
      config, full, info, **log.bookkeeping(), **sums.metadata()
    )
    checkpointer.save(full, metadata)
    saved_through = step

  def stop_now(state, step: int, epoch: int, when: str):
    """Save ``step`` unless a checkpoint holds it already, then raise ``Preempted``."""
    saved = None
    if step > saved_through:
      save(state, step, epoch)
      saved = step
    checkpointer.wait()
    raise Preempted(stop.signal_name, when, checkpointer.workdir, saved, checkpointer.latest_step())

  def test_at(state, step: int):
    start = time.perf_counter()
    if final_test is not None and step >= total:
      accuracy = final_test(state)
    else:
      accuracy = engine.evaluate(state, training.test_batches(**_this_process()))
    log.add_eval_time(time.perf_counter() - start)
    return accuracy

  test_accuracy = test_at(state, step) if step >= total else None  # finished: evaluate only
  for epoch in range(step // per_epoch, num_epochs):
    if step >= total:
      break
    engine.set_phase(run.plan.at(epoch))  # a new phase when config.grow.schedule adds a block
    log.set_step_cost(engine.step_cost())
    epoch_end = min((epoch + 1) * per_epoch, total)
    position = step % per_epoch
    if position == 0:
      sums = EpochMetrics()
    with ProgressBar(per_epoch, f"epoch {epoch + 1}/{num_epochs}", initial=position) as bar:
      batches = iter(
        train_batches(
          training.data.train,
          info,
          global_batch_size=config.data.batch_size,
          seed=config.seed,
          epoch=epoch,
          start_step=position,
          augment=augment,
          **_this_process(),
        )
      )
      while step < epoch_end:
        stop_at = min(epoch_end, (step // every + 1) * every) if every else epoch_end
        start = time.perf_counter()
        segment_batches = _checked(
          stop.until_requested(itertools.islice(batches, stop_at - step), step), checkpointer
        )
        on_step = training.profiler.around(step, training.start.around(bar.update))
        state, segment = engine.train_segment(state, segment_batches, step % per_epoch, on_step)
        segment = jax.device_get(segment)  # one wait per segment
        log.add_train_time(time.perf_counter() - start, len(segment))
        if step == 0 and segment and "grad_norm" in segment[0]:  # the gradient at initialisation
          paths = grad_norms.layer_paths(engine.to_train_state(state).params)
          log.grad_norms_at_init(paths, segment[0]["grad_norm"])
        step += len(segment)
        sums.add(segment)
        if sums.count:
          log.check_finite(sums.mean(), epoch, checkpointer.latest_step())  # never save NaN
        if stop.requested(step):
          bar.close()
          stop_now(state, step, epoch, f"in epoch {epoch + 1}")
        if step < epoch_end:
          save(state, step, epoch)
    test_accuracy = test_at(state, step)
    log.epoch(epoch, step, sums.mean(), test_accuracy, run.schedule(step))
    if (epoch + 1) % config.checkpoint.every_epochs == 0 or step >= total:
      save(state, step, epoch)
    if stop.signal_name:  # arrived during the evaluation: save the epoch's end now
      stop_now(state, step, epoch, f"at the end of epoch {epoch + 1}")
  return state, test_accuracy


def _checked(batches, checkpointer):
  """``batches``, raising ``checkpoint.CheckpointWriteError`` before the next step as soon as an
  asynchronous save is known to have failed (``RunCheckpointer.check`` does not block): the run
  stops at the failed save instead of training on, and the last good checkpoint stays."""
  for batch in batches:
    checkpointer.check()
    yield batch


def _this_process() -> dict[str, int]:
  """This process's share of every global batch (multi-host data parallelism)."""
  return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def parameter_count(params) -> int:
  """Total number of scalars in a parameter tree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
