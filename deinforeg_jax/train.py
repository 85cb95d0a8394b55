"""The one training loop, the engine interface it drives, and the data-parallel engine.

``train_and_evaluate(config, workdir)`` builds the model (``models``), its growth
plan (``growth``), the optimizer and an *engine* for ``config.parallel.mode``:

* ``"data"`` (``DataParallelEngine``): one jitted program holds every block's
  local loss; the batch is sharded over the ``data`` axis of a device mesh and the
  state replicated (``parallel``), so the loss statistics cover the global batch.
* ``"pipeline"`` (``pipeline.PipelineEngine``): groups of blocks on their own devices.

``run_epochs`` is the only epoch loop: resume position, progress, the NaN stop,
checkpoint cadence, evaluation, logging and results are written once here, and
every engine gets them.  An engine implements ``Engine``; its state may be any
pytree that converts to and from the one-program ``steps.TrainState`` (what
checkpoints hold), so either engine resumes the other's run.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import signal
import threading
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from deinforeg_jax import (
  checkpoint,
  grad_norms,
  growth,
  inference,
  models,
  optim,
  parallel,
  pipeline,
  rules,
  steps,
  xla_cpu,
)
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data import eval_batches, glove, load_dataset, make_augment, train_batches
from deinforeg_jax.data import steps_per_epoch as count_steps_per_epoch
from deinforeg_jax.reporting import NonFiniteStateError, ProgressBar, RunLog, kept_checkpoint
from deinforeg_jax.workdir_lock import WorkdirLock


class Engine(Protocol):
  """How a parallel mode runs the steps; ``run_epochs`` owns everything else."""

  name: str

  def init(self, rng: jax.Array) -> Any:
    """The engine's initial state (equal to ``steps.create_train_state`` of the model)."""

  def to_train_state(self, state: Any) -> steps.TrainState:
    """The one-program ``TrainState`` (what checkpoints hold)."""

  def from_train_state(self, full: steps.TrainState) -> Any:
    """The inverse of ``to_train_state``."""

  def set_phase(self, phase: growth.Phase) -> float | None:
    """Run ``phase``'s model and frozen blocks from now on; seconds spent compiling."""

  def train_segment(
    self, state: Any, batches, position: int, on_step: Callable[[dict], None]
  ) -> tuple[Any, list[dict]]:
    """Train on every batch (numbered from ``position`` in the epoch); per-step metrics."""

  def check_state(self, state: Any) -> str:
    """Why ``state`` must not be saved (non-finite values, or a non-finite loss of its own
    parameters on the last trained batch), or "" when it is good."""

  def evaluate(self, state: Any, batches) -> np.ndarray:
    """Per-exit accuracy ``[K]`` over every example of ``batches`` (global)."""

  def variables(self, state: Any) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of the whole model, usable on the default device."""

  def describe(self) -> str:
    """Where the run executes, for the start-up line."""

  def report(self) -> dict[str, Any] | None:
    """An entry for ``results.json`` (written also as ``<name>.json``), or None."""


class DataParallelEngine:
  """All blocks in one jitted step over a ``data`` mesh (batch sharded, state replicated).

  Its programs (initial state, per-phase train/eval/check steps) are kept in
  ``steps.shared_programs``, so a later run of the same programs in this process reuses them.
  """

  name = "data"

  def __init__(self, config, model, tx, objective, info):
    self.mesh = parallel.make_data_mesh(config.parallel.num_devices)
    parallel.check_batch_divisible(config.data.batch_size, self.mesh, "data.batch_size")
    parallel.check_batch_divisible(config.data.eval_batch_size, self.mesh, "data.eval_batch_size")
    self.model, self.tx, self.objective, self.info = model, tx, objective, info
    self.config = config
    self._create = functools.partial(
      steps.create_train_state, model, tx, input_shape=info.input_shape
    )
    self._programs = steps.shared_programs(config, info)
    self.state_spec, self.state_sharding = steps.reuse(self._programs, "state", self._layout)
    self._train = self._eval = self._check = None
    self._last_batch = None

  def _layout(self):
    """The state's shapes placed on their shardings (``ShapeDtypeStruct``s) and the
    shardings (a pytree of each)."""
    shapes = jax.eval_shape(self._create, jax.random.key(0))
    sharding = parallel.state_shardings(shapes, self.mesh, self.config.parallel.shard_state)
    spec = jax.tree.map(
      lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where), shapes, sharding
    )
    return spec, sharding

  def init(self, rng):
    options = xla_cpu.init_options(self.mesh.devices.flat[0].platform)
    return steps.reuse(
      self._programs,
      "init",
      lambda: jax.jit(self._create, out_shardings=self.state_sharding, compiler_options=options),
    )(rng)

  def to_train_state(self, state):
    return state

  def from_train_state(self, full):
    return full

  def set_phase(self, phase):
    name = ("phase", phase.key)
    new, start = name not in self._programs, time.perf_counter()
    self._train, self._eval, self._check = steps.reuse(
      self._programs, name, lambda: self._compile(phase)
    )
    return time.perf_counter() - start if new else None

  def _compile(self, phase):
    """``phase``'s compiled train step and jitted eval and check steps."""
    config = self.config
    train_step, eval_step = compile_steps(
      phase.model,
      self.objective,
      self.tx,
      self.info.num_classes,
      config.loss,
      self.mesh,
      state_sharding=self.state_sharding,
      log_grad_norms=config.train.log_grad_norms,
      seed=config.seed,
      frozen=phase.frozen,
    )
    replicated, sharded = parallel.replicated(self.mesh), parallel.batch_sharding(self.mesh)
    check_step = jax.jit(
      steps.make_check_step(
        phase.model,
        self.objective,
        self.info.num_classes,
        config.loss,
        seed=config.seed,
        frozen=phase.frozen,
      ),
      in_shardings=(self.state_sharding, sharded, sharded),
      out_shardings=replicated,
    )
    batch = config.data.batch_size
    dtype = jnp.int32 if self.info.kind == "text" else jnp.float32
    inputs = jax.ShapeDtypeStruct((batch, *self.info.input_shape), dtype, sharding=sharded)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharded)
    return train_step.lower(self.state_spec, inputs, labels).compile(), eval_step, check_step

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
    kind = "sharded" if self.config.parallel.shard_state else "replicated"
    return (
      f"{self.mesh.shape[parallel.DATA_AXIS]} device(s), state {kind}: "
      f"{parallel.bytes_per_device(self.state_spec) / 2**20:.1f} MiB per device"
    )

  def report(self):
    return None


def compile_steps(
  model, objective, tx, num_classes, loss_cfg, mesh, state_sharding=None, **step_options
):
  """Jitted ``steps.make_train_step`` / ``make_eval_step`` of ``model`` over ``mesh``: state
  placed by ``state_sharding`` (a pytree of shardings, ``parallel.state_shardings``;
  default replicated), inputs and labels sharded over ``data``; the train step donates
  the state.  ``step_options``: ``log_grad_norms``, ``seed``, ``frozen`` of
  ``make_train_step``.
  """
  replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  state_sharding = replicated if state_sharding is None else state_sharding
  train_step = jax.jit(
    steps.make_train_step(model, objective, tx, num_classes, loss_cfg, **step_options),
    in_shardings=(state_sharding, sharded, sharded),
    out_shardings=(state_sharding, replicated, replicated),
    donate_argnums=0,
    compiler_options=xla_cpu.train_step_options(mesh.devices.flat[0].platform),
  )
  eval_step = jax.jit(
    steps.make_eval_step(model),
    in_shardings=(state_sharding, sharded, sharded, sharded),
    out_shardings=replicated,
  )
  return train_step, eval_step


ENGINES = {"data": DataParallelEngine, "pipeline": pipeline.PipelineEngine}


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
  validate_config(config)
  workdir = os.path.expanduser(workdir)
  with _StopRequests(workdir) as stop:
    with WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
      return _train_and_evaluate(config, workdir, stop)


def _train_and_evaluate(config, workdir: str, stop: "_StopRequests") -> dict[str, Any]:
  data = load_dataset(config.data, workdir=workdir)
  info = data.info
  model = models.create_model(config, info.num_classes)
  plan = growth.make_plan(config, model)
  objective = rules.get_objective(config.rule)
  steps_per_epoch = count_steps_per_epoch(info.num_train, config.data.batch_size)
  schedule = optim.make_schedule(
    config.optim, steps_per_epoch * config.train.num_epochs, steps_per_epoch
  )
  tx = optim.make_optimizer(config.optim, schedule)
  engine = ENGINES[config.parallel.mode](config, model, tx, objective, info)
  key = jax.random.key(config.seed)
  log = RunLog(workdir, config)
  checkpointer = checkpoint.RunCheckpointer(
    workdir, keep=config.checkpoint.keep, use_async=config.checkpoint.use_async, info=log.info
  )
  try:
    allowed = tuple(f for f in config.checkpoint.allow_changed.split(",") if f)
    if checkpointer.latest_step() is not None:  # a changed run is refused before compiling
      expected = checkpoint.make_metadata(config, abstract_train_state(model, tx, info), info)
      saved_step = checkpointer.check_latest(expected, allowed)
      _check_not_past_the_end(config, saved_step, steps_per_epoch, workdir)
      finished = _finished_results(config, workdir, saved_step, steps_per_epoch)
      # Finished only if the final parameters read back verified, as ``load`` reads them;
      # if not, ``restore`` below sets that step aside and the run retrains from the previous.
      if finished is not None and checkpointer.damage(saved_step) is None:
        log.info(
          f"already finished: the checkpoint at step {saved_step} is the end of this run and "
          f"{os.path.join(workdir, 'results.json')} holds its results (best block "
          f"{finished['best_block']}: test accuracy {finished['best_test_accuracy']:.4f}); "
          "nothing was trained, evaluated or written. To train longer, raise "
          "config.train.num_epochs with --config.checkpoint.allow_changed=train.num_epochs."
        )
        return finished
    else:
      log.start_fresh()
    stop.check("during start-up", checkpointer.latest_step())
    state = engine.init(key)
    full, glove_note = _init_glove(config, engine.to_train_state(state), data.vocabulary)
    if glove_note:
      log.info(glove_note)
    full = plan.restore(full)
    if checkpointer.latest_step() is not None:
      full, saved, changes = checkpointer.restore(
        full, checkpoint.make_metadata(config, full, info), allowed
      )
      _check_not_past_the_end(config, int(full.step), steps_per_epoch, workdir)
      log.resume(saved, changes)
      epoch_sums = EpochMetrics.from_metadata(saved)
    else:
      epoch_sums = EpochMetrics()
    state = engine.from_train_state(full)
    one_process = jax.process_count() == 1  # the last test pass is then ``final_test``'s
    # A finished run only evaluates: in one process that is ``final_test``, nothing to compile.
    finished = int(full.step) >= _total_steps(config, steps_per_epoch)
    phase = plan.at(int(full.step) // steps_per_epoch)
    compile_s = None if finished and one_process else engine.set_phase(phase)
    if data.label_noise:
      log.set_label_noise(data.label_noise)
    log.info(
      f"{config.rule} on {info.name}: {info.num_train} train / {info.num_test} test, "
      f"input {info.input_shape}, {info.num_classes} classes, "
      f"{parameter_count(full.params):,} parameters, {engine.describe()}, from step "
      f"{int(full.step)}" + (f"; train step compiled in {compile_s:.1f} s" if compile_s else "")
    )
    stop.check("during start-up", checkpointer.latest_step())
    final_pass = {}
    kept = steps.reuse(steps.shared_programs(config, info), ("final", plan.final.key), dict)

    def final_test(state) -> np.ndarray:
      """The last test pass: exit logits once, for the accuracy and the adaptive report."""
      final_pass["cached"] = inference.exit_logits(
        plan.final.model, engine.variables(state), test_batches(), steps.model_inputs, kept
      )
      return inference.exit_accuracy(final_pass["cached"])

    def test_batches():
      return eval_batches(data.test, info, global_batch_size=config.data.eval_batch_size)

    state, test_accuracy = run_epochs(
      config,
      engine,
      state,
      plan,
      data,
      log,
      checkpointer,
      schedule,
      steps_per_epoch,
      stop,
      epoch_sums,
      final_test if one_process else None,
    )
    checkpointer.wait()
    stop.check("after the last step, before the results", checkpointer.latest_step())
    if one_process:
      log.set_adaptive_inference(
        inference.adaptive_report(
          plan.final.model,
          engine.variables(state),
          test_batches(),
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
  return log.finish(test_accuracy, step, info, {engine.name: report} if report else {})


def _finished_results(config, workdir: str, step: int, steps_per_epoch: int) -> dict | None:
  """The ``results.json`` of a run that already ended at ``step`` with this very config, or
  None (not at the end, no results written yet, or results of other settings: evaluate)."""
  path = os.path.join(workdir, "results.json")
  if step < _total_steps(config, steps_per_epoch) or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      results = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  same_config = results.get("config") == json.loads(json.dumps(config.to_dict()))
  return results if results.get("steps") == step and same_config else None


def abstract_train_state(model, tx, info) -> steps.TrainState:
  """The shapes and dtypes of ``model``'s one-program ``TrainState`` (what every engine's
  ``to_train_state(init(key))`` equals), derived from ``steps.create_train_state`` itself and
  never from an engine's compiled initial-state program (its CPU ``compiler_options`` refuse to
  be traced inside ``jax.eval_shape``)."""
  create = functools.partial(steps.create_train_state, model, tx, input_shape=info.input_shape)
  return jax.eval_shape(create, jax.random.key(0))


def _total_steps(config, steps_per_epoch: int) -> int:
  """Steps the run trains in all: ``num_epochs`` epochs, cut at ``train.max_steps`` if set."""
  total = steps_per_epoch * config.train.num_epochs
  return min(total, config.train.max_steps) if config.train.max_steps else total


def _check_not_past_the_end(config, step: int, steps_per_epoch: int, workdir: str) -> None:
  """A resumed run must not already be past where ``config`` ends."""
  total = _total_steps(config, steps_per_epoch)
  if step > total:
    raise checkpoint.CheckpointMismatchError(
      f"the checkpoint in {workdir} is at step {step} ({step / steps_per_epoch:.3g} epochs "
      f"of {steps_per_epoch} steps done), past the end of this run (config.train.num_epochs="
      f"{config.train.num_epochs}, config.train.max_steps={config.train.max_steps}: {total} "
      "steps). Raise them to at least what is done (allowing the change with "
      "--config.checkpoint.allow_changed=train.num_epochs), or use a new --workdir."
    )


class Preempted(Exception):
  """SIGTERM/SIGINT stopped the run at a safe point; the message says what was saved.

  ``saved_step``: the step checkpointed on the way out (None: nothing new was saved, because no
  step had completed since ``latest_step``, the checkpoint a rerun resumes from, or None when
  there is none).
  """

  def __init__(
    self, signal_name: str, when: str, workdir: str, saved_step: int | None, latest_step=None
  ):
    if saved_step is not None:
      what = f"saved a checkpoint at step {saved_step}, the last completed step"
    elif latest_step is not None:
      what = (
        f"no step had completed since the checkpoint at step {latest_step}, which a rerun "
        "resumes from; nothing new was saved"
      )
    else:
      what = "no training step had completed and there is no checkpoint yet; nothing was saved"
    super().__init__(
      f"{signal_name} received {when}: {what}. Run the same command again to continue "
      f"(workdir {workdir})."
    )
    self.saved_step = saved_step
    self.latest_step = saved_step if saved_step is not None else latest_step


class _StopRequests:
  """Turns SIGTERM/SIGINT into a request to stop at the next safe point, for the whole run.

  One process: Python signal handlers set a flag, checked before every train step, at the end
  of each start-up stage and around the final evaluation (``check``); a second SIGINT stops at
  once (``KeyboardInterrupt``).  Several processes: JAX's preemption notice
  (``jax.distributed``) is polled with ``multihost_utils.reached_preemption_sync_point``, so
  every process stops after the same step.  A signal that arrived after the last safe point (the
  run completed) is passed on to the handler it replaced, when that is a Python function that is
  not Python's own ``KeyboardInterrupt``: a grid (``launch.experiments``) then stops before its
  next cell instead of losing the request.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.signal_name = ""
    self._signum = None
    self._previous = {}

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._request)
    return self

  def __exit__(self, error_type, *_):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    previous = self._previous.get(self._signum)
    if error_type is None and callable(previous) and previous is not signal.default_int_handler:
      signal.raise_signal(self._signum)  # unanswered: the run completed after it arrived

  def _request(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.signal_name and signum == signal.SIGINT:
      raise KeyboardInterrupt(f"a second {name}: stopped at once")
    if not self.signal_name:
      print(f"{name} received: stopping at the next safe point ...", flush=True)
      self.signal_name, self._signum = name, signum

  def requested(self, step: int) -> bool:
    """Whether to stop before training step ``step`` (every process answers alike)."""
    if jax.process_count() > 1 and multihost_utils.reached_preemption_sync_point(step):
      self.signal_name = self.signal_name or "a preemption notice"
    return bool(self.signal_name)

  def check(self, when: str, latest_step: int | None) -> None:
    """Outside the train steps (nothing unsaved): raise ``Preempted`` if a signal arrived."""
    if self.signal_name:
      raise Preempted(self.signal_name, when, self.workdir, None, latest_step)

  def until_requested(self, batches, step: int):
    """``batches`` until a stop is requested (checked before each step)."""
    for batch in batches:
      if self.requested(step):
        return
      step += 1
      yield batch


class EpochMetrics:
  """Running float64 sums of the per-step train metrics of the current epoch.

  The epoch's summary is ``sums / count``; a mid-epoch checkpoint carries both
  (``metadata``), so a run resumed inside an epoch reports the same epoch metrics as one that
  never stopped (the sums are accumulated step by step in the same order either way).
  """

  def __init__(self, sums: dict[str, np.ndarray] | None = None, count: int = 0):
    self.sums, self.count = dict(sums or {}), count

  def add(self, metrics: list[dict[str, np.ndarray]]) -> None:
    for step_metrics in metrics:
      for name, value in step_metrics.items():
        value = np.asarray(value, np.float64)
        self.sums[name] = self.sums[name] + value if name in self.sums else value
      self.count += 1

  def mean(self) -> dict[str, np.ndarray]:
    return {name: total / self.count for name, total in self.sums.items()}

  def metadata(self) -> dict[str, Any]:
    return {
      "epoch_metric_count": self.count,
      "epoch_metric_sums": {name: total.tolist() for name, total in self.sums.items()},
    }

  @classmethod
  def from_metadata(cls, saved: dict[str, Any]) -> "EpochMetrics":
    """The sums a checkpoint carries (none for an epoch-end checkpoint or an older run)."""
    sums = saved.get("epoch_metric_sums") or {}
    return cls({k: np.asarray(v, np.float64) for k, v in sums.items()}, saved.get(
      "epoch_metric_count", 0))


def run_epochs(
  config,
  engine: Engine,
  state,
  plan,
  data,
  log,
  checkpointer,
  schedule,
  steps_per_epoch: int,
  stop: _StopRequests,
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
  (the caller reuses that pass).  A stop request (``stop``: SIGTERM/SIGINT) ends the current
  segment after the running step, saves that step if no checkpoint holds it yet, and raises
  ``Preempted``.
  """
  info, num_epochs = data.info, config.train.num_epochs
  total = _total_steps(config, steps_per_epoch)
  every = config.checkpoint.every_steps
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

  def test(state):
    batches = eval_batches(
      data.test, info, global_batch_size=config.data.eval_batch_size, **_this_process()
    )
    return engine.evaluate(state, batches)

  def test_at(state, step: int):
    start = time.perf_counter()
    accuracy = final_test(state) if final_test is not None and step >= total else test(state)
    log.add_eval_time(time.perf_counter() - start)
    return accuracy

  test_accuracy = test_at(state, step) if step >= total else None  # finished: evaluate only
  for epoch in range(step // steps_per_epoch, num_epochs):
    if step >= total:
      break
    engine.set_phase(plan.at(epoch))  # a new phase when config.grow.schedule adds a block
    epoch_end = min((epoch + 1) * steps_per_epoch, total)
    position = step % steps_per_epoch
    if position == 0:
      sums = EpochMetrics()
    with ProgressBar(steps_per_epoch, f"epoch {epoch + 1}/{num_epochs}", initial=position) as bar:
      batches = iter(
        train_batches(
          data.train,
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
        state, segment = engine.train_segment(
          state, segment_batches, step % steps_per_epoch, bar.update
        )
        segment = jax.device_get(segment)  # one wait per segment
        log.add_train_time(time.perf_counter() - start)
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
    log.epoch(epoch, step, sums.mean(), test_accuracy, schedule(step))
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


def _init_glove(config, state: steps.TrainState, vocabulary) -> tuple[steps.TrainState, str]:
  """Text: the embedding table set from ``config.model.glove`` (if any) after init, and a
  note saying how many vocabulary words GloVe had ("" when nothing changed)."""
  path = config.model.glove if vocabulary is not None else ""
  if not path:
    return state, ""
  matrix, found = glove.embedding_matrix(
    vocabulary, path, config.model.emb_dim, rows=config.data.vocab_size, seed=config.seed
  )
  old = state.params["block_00"]["encoder"]["embedding"]
  params = glove.with_embedding(state.params, jax.device_put(matrix, old.sharding))
  note = f"GloVe {path}: {found} of {len(vocabulary)} vocabulary words found, the rest U[0, 1)"
  return state.replace(params=params), note


def parameter_count(params) -> int:
  """Total number of scalars in a parameter tree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
