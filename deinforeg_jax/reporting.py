"""Console progress, JSON-lines metrics and ``results.json`` for one run.

Files written in the workdir:

* ``metrics.jsonl`` - one JSON object per epoch (per-block train loss terms and
  accuracy, per-block test accuracy, learning rate), plus an ``"event"`` line when a
  run resumes with config changes the user allowed; always valid JSON (a non-finite
  number is written as ``null``); only what a rerun reproduces bit for bit (no timings);
* ``events.out.tfevents.*`` - the same epoch metrics for TensorBoard (one scalar tag per
  value: ``train/block_00/invariance``, ``test/block_00/accuracy``, ``train/learning_rate``
  ...), plus the epoch's throughput (``SPEED_TAGS``: steps/s, samples/s, the step's FLOPs,
  TFLOP/s per device, MFU; ``throughput``) and the adaptive-exit report (``adaptive/accuracy``
  ...) at the last step (``TensorBoardFile``);
* ``grad_norms.json`` - with ``config.train.log_grad_norms``: the encoder layers
  and their gradient norms at initialisation (first step);
* ``results.json`` - the final summary (``rule``, ``best_test_accuracy``,
  ``per_block_test_accuracy``, ``best_block``, ``wall_time_s``, ``steps_per_s``,
  ``throughput``, ``time_to_first_step_s``, ``adaptive_inference``...).

Whole files (``results.json``, ``grad_norms.json``, a rewritten ``metrics.jsonl``) are
replaced atomically and lines are appended with no-follow opens (``safe_files``): a link at
any of these paths is never written through, and a kill never leaves a half-written file.
"""

from __future__ import annotations

import collections
import json
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from deinforeg_jax import precision, safe_files, tensorboard_events, throughput


class ProgressBar:
  """A tqdm bar over one epoch that counts *computed* steps and shows the latest loss.

  JAX dispatches steps asynchronously; the bar counts a step once its loss is ready on
  the device, and ``update`` lets the host run at most ``max_ahead`` steps ahead of the
  device (it waits for the oldest loss beyond that), which keeps the device queue full
  while the bar, its steps/s and a SIGTERM's "after step N" stay close to the truth.
  """

  def __init__(self, total: int, description: str, initial: int = 0, max_ahead: int = 2):
    interactive = sys.stderr.isatty()  # in a log file: a line every 30 s instead
    self._bar = tqdm(
      total=total,
      initial=initial,
      desc=description,
      unit="step",
      leave=False,
      file=sys.stderr,
      dynamic_ncols=True,
      mininterval=0.1 if interactive else 30.0,
    )
    self._max_ahead = max_ahead
    self._pending: collections.deque = collections.deque()  # dispatched steps' losses

  def update(self, metrics: dict[str, Any]) -> None:
    """Count the steps computed so far; ``metrics`` (of a just-dispatched step) joins the queue."""
    self._pending.append(metrics["total_loss"])
    self._count_ready(wait_beyond=self._max_ahead)

  def _count_ready(self, wait_beyond: int) -> None:
    done, loss = 0, None
    while self._pending:
      oldest = self._pending[0]
      if len(self._pending) > wait_beyond:
        jax.block_until_ready(oldest)
      elif not getattr(oldest, "is_ready", lambda: True)():
        break
      loss = self._pending.popleft()
      done += 1
    if done:
      self._bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
      self._bar.update(done)

  def close(self) -> None:
    """Wait for the dispatched steps, count them, and close the bar."""
    self._count_ready(wait_beyond=0)
    self._bar.close()

  def __enter__(self) -> "ProgressBar":
    return self

  def __exit__(self, error_type, *_) -> None:
    """``close()``; after an error only the bar is closed, so the error's message starts on a
    line of its own (the steps may never finish)."""
    if error_type is None:
      self.close()
    else:
      self._bar.close()


class NonFiniteLossError(FloatingPointError):
  """Raised when a training loss becomes NaN or Inf."""


class NonFiniteStateError(NonFiniteLossError):
  """Raised when an updated state has non-finite values or a non-finite loss (not saved)."""


def kept_checkpoint(latest_step: int | None) -> str:
  """What a run stopped by a non-finite loss or state still has to resume from."""
  if latest_step is None:
    return "there is no checkpoint yet, so the same command starts afresh"
  return f"the checkpoint at step {latest_step} stays the latest, and intact"


def _to_json(value: Any) -> Any:
  """A JSON-able copy of ``value``: arrays to lists, NaN and infinities to None (null)."""
  if isinstance(value, np.ndarray):
    return _to_json(value.tolist())
  if isinstance(value, (np.floating, np.integer)):
    return _to_json(value.item())
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  return value


def _dumps(record: dict[str, Any], **kwargs) -> str:
  return json.dumps(_to_json(record), allow_nan=False, **kwargs)


class MetricsFile:
  """``metrics.jsonl``: each epoch record and ``"event"`` record as one JSON line."""

  kinds = ("epoch", "event")

  def __init__(self, path: str):
    self.path = path

  def read(self, info) -> list[dict[str, Any]]:
    """The records in the file; a line cut short by a kill is skipped, with a note."""
    records = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        for number, line in enumerate(f, 1):
          try:
            records.append(dict(json.loads(line)))
          except (TypeError, ValueError):  # JSONDecodeError is a ValueError
            info(f"note: skipped line {number} of {self.path} (cut short by a kill)")
    return records

  def restart(self, kept: list[dict[str, Any]], step: int | None) -> None:
    """Rewrite the file with the ``kept`` records (resume at ``step``); remove it when
    ``step`` is None (a fresh start)."""
    if step is None:
      if os.path.exists(self.path):
        os.remove(self.path)
      return
    with safe_files.atomic_writer(self.path) as f:
      f.writelines(_dumps(record) + "\n" for record in kept)

  def write(self, record: dict[str, Any], kind: str) -> None:
    if kind in self.kinds:
      with safe_files.open_for_append(self.path) as f:
        f.write(_dumps(record) + "\n")


FINAL_TAGS = "adaptive/"  # the adaptive-exit report's tags
# The tags not rebuilt from metrics.jsonl on a resume: timings, kept from the earlier event files.
SPEED_TAGS = tuple(
  f"train/{name}"
  for name in ("steps_per_s", "samples_per_s", "flops_per_step", "tflops_per_s_per_device", "mfu")
)


def tensorboard_scalars(record: dict[str, Any]) -> dict[str, float]:
  """TensorBoard tags and values of one record (``metrics.jsonl``'s epoch line, a speed
  record ``{"step", "steps_per_s"}`` or the final ``{"step", "adaptive_inference"}``).

  Per-block arrays get one tag per block (``train/block_00/invariance``,
  ``test/block_00/accuracy``), per-layer gradient norms one per layer
  (``train/grad_norm/layer_00``), scalars one tag (``train/total_loss``,
  ``train/learning_rate``, ``train/steps_per_s``); null (non-finite) values become NaN.
  """
  record = _to_json(record)
  out = {}

  def number(value) -> float:
    return math.nan if value is None else float(value)

  for key, value in record.items():
    if key in ("epoch", "step"):
      continue
    if key == "adaptive_inference":
      for name in ("accuracy", "mean_exit_block", "compute_fraction"):
        out[f"{FINAL_TAGS}{name}"] = number(value[name])
      for block, fraction in zip(value.get("exit_blocks", []), value.get("exit_fractions", [])):
        out[f"{FINAL_TAGS}block_{block:02d}/exit_fraction"] = number(fraction)
      continue
    split, name = key.split("_", 1) if key.startswith(("train_", "test_")) else ("train", key)
    if not isinstance(value, list):
      out[f"{split}/{name}"] = number(value)
    elif name == "grad_norm":
      out.update({f"train/grad_norm/layer_{i:02d}": number(v) for i, v in enumerate(value)})
    else:
      out.update({f"{split}/block_{k:02d}/{name}": number(v) for k, v in enumerate(value)})
  return out


class TensorBoardFile:
  """The run's TensorBoard event file: a view of ``metrics.jsonl`` (the same epoch values)
  plus the train speed of each epoch and the final adaptive-exit report.

  There is one event file per workdir: every (re)start writes a new one and removes the
  others, so TensorBoard never shows a step twice.
  """

  kinds = ("epoch", "speed", "final")

  def __init__(self, workdir: str):
    self.workdir = workdir
    self._writer = None

  def restart(self, kept: list[dict[str, Any]], step: int | None) -> None:
    """Start a new event file: empty on a fresh start (``step`` None); on a resume at
    ``step``, the ``kept`` ``metrics.jsonl`` records and the earlier files' train speeds up
    to ``step`` (a rerun writes the final report again)."""
    values, wall_times = {}, {}  # (step, tag) -> (wall time, value); step -> wall time
    old = tensorboard_events.event_files(self.workdir)
    if step is not None:
      for path in old:
        for event in tensorboard_events.read_events(path):
          if event.step <= step and event.scalars:
            wall_times.setdefault(event.step, event.wall_time)
            for tag in SPEED_TAGS:
              if tag in event.scalars:
                values[event.step, tag] = (event.wall_time, event.scalars[tag])
      now = time.time()
      for record in kept:
        if "event" not in record:
          wall_time = wall_times.get(record["step"], now)
          for tag, value in tensorboard_scalars(record).items():
            values[record["step"], tag] = (wall_time, value)
    events = {}
    for (at, tag), (wall_time, value) in sorted(values.items()):
      event = events.setdefault((at, wall_time), tensorboard_events.Event(wall_time, at))
      event.scalars[tag] = value
    safe_files.remove_leftovers(self.workdir)  # left by a kill during a write
    self._writer = tensorboard_events.EventFileWriter(self.workdir, list(events.values()))
    for path in old:
      if path != self._writer.path:
        os.remove(path)

  def write(self, record: dict[str, Any], kind: str) -> None:
    if kind in self.kinds:
      if self._writer is None:
        self._writer = tensorboard_events.EventFileWriter(self.workdir)
      self._writer.add(record["step"], tensorboard_scalars(record))


class RunLog:
  """Prints epoch summaries and writes ``metrics.jsonl`` / ``results.json``.

  Each record goes to the sinks (``MetricsFile``, ``TensorBoardFile``: ``write(record,
  kind)``, ``restart(kept, step)``), each taking the kinds it shows; only process 0 has
  sinks.  A run calls ``start_fresh`` (no checkpoint) or ``resume`` before its first record.
  """

  def __init__(self, workdir: str, config):
    os.makedirs(workdir, exist_ok=True)
    self.workdir = workdir
    self._chief = jax.process_index() == 0  # only process 0 writes files
    self.config = config
    self._start = time.perf_counter()
    self._metrics_path = os.path.join(workdir, "metrics.jsonl")
    self._metrics = MetricsFile(self._metrics_path)
    self._sinks = (self._metrics, TensorBoardFile(workdir)) if self._chief else ()
    self._best_epoch_accuracy = 0.0
    self._train_time_s = 0.0
    self._eval_time_s = 0.0
    self._label_noise = None
    self._adaptive_inference = None
    self._train_flops: float | None = 0.0  # None: a checkpoint from before it was counted
    self._step_cost: throughput.StepCost | None = None
    self._peak: throughput.Peak | None = None
    self._facts: dict[str, Any] = {}
    self._speed_from = (0, 0.0, 0.0)  # (step, train time, FLOPs) where the speed count began

  def start_fresh(self) -> None:
    """A run without a checkpoint: remove the metrics and event files an earlier attempt
    left (one killed before its first checkpoint), so nothing stale is appended to."""
    for sink in self._sinks:
      sink.restart([], None)

  def resume(self, saved: dict[str, Any], changes: dict[str, tuple] | None = None) -> None:
    """Continue from a checkpoint's metadata: drop metric lines written after it (and a
    line cut short by a kill, with a note) and rebuild the event file to match, and record
    the config ``changes`` the user allowed as an ``"event"`` line."""
    self._best_epoch_accuracy = saved.get("best_epoch_test_accuracy", 0.0)
    self._train_time_s = saved.get("train_time_s", 0.0)
    self._eval_time_s = saved.get("eval_time_s", 0.0)
    self._train_flops = saved.get("train_flops")
    self._speed_from = (saved["step"], self._train_time_s, self._train_flops or 0.0)
    if self._chief:
      kept = [r for r in self._metrics.read(self.info) if r["step"] <= saved["step"]]
      for sink in self._sinks:
        sink.restart(kept, saved["step"])
    self.info(f"resuming from the checkpoint at step {saved['step']}")
    if changes:
      changed = {field: {"saved": old, "now": new} for field, (old, new) in changes.items()}
      self.info("config changes allowed on resume: " + ", ".join(changed))
      self._write(
        {"event": "resumed_with_changes", "step": saved["step"], "changed": changed}, "event"
      )

  def _write(self, record: dict[str, Any], kind: str) -> None:
    """``record`` to every sink that shows ``kind`` ("epoch", "event", "speed", "final")."""
    for sink in self._sinks:
      sink.write(record, kind)

  def set_label_noise(self, report: dict[str, Any]) -> None:
    """Record (and print) the label noise applied to the training split."""
    self._label_noise = report
    self.info(
      f"label noise {report['kind']} {report['rate']}%: "
      f"{report['changed_fraction']:.2%} of training labels changed"
    )

  def grad_norms_at_init(self, layers: list[str], norms) -> None:
    """Write ``grad_norms.json``: ``{"layers": [...], "init": [...]}``, the per-layer
    gradient norms of the first step (the per-epoch means go to ``metrics.jsonl``)."""
    if self._chief:
      record = {"layers": list(layers), "init": np.asarray(norms).tolist()}
      safe_files.write_atomic(os.path.join(self.workdir, "grad_norms.json"),
                              _dumps(record, indent=1))

  def set_adaptive_inference(self, report: dict[str, Any] | None) -> None:
    """Record (and print) the adaptive-exit result of ``inference.adaptive_report``."""
    self._adaptive_inference = report
    if report:
      self.info(
        f"adaptive exit (patience {report['patience']}, cosine > {report['cosine_threshold']}): "
        f"test accuracy {report['accuracy']:.4f}, mean exit block "
        f"{report['mean_exit_block']:.2f}, {report['compute_fraction']:.1%} of full-depth FLOPs"
      )

  def set_step_cost(self, cost: throughput.StepCost) -> None:
    """The train step from now on (its FLOPs and devices), and the peak for MFU."""
    self._step_cost, self._peak = cost, throughput.peak(self.config, cost)

  def add_train_time(self, seconds: float, steps: int = 0) -> None:
    """``steps`` train steps took ``seconds`` (and the current step's FLOPs each)."""
    self._train_time_s += seconds
    if self._train_flops is not None and self._step_cost is not None:
      self._train_flops += steps * self._step_cost.flops

  def record(self, **facts) -> None:
    """Top-level ``results.json`` fields of this (re)start (e.g. ``time_to_first_step_s``)."""
    self._facts.update(facts)

  def _rates(self, steps: int, seconds: float, flops: float | None) -> dict[str, Any]:
    """``throughput.rates`` of ``steps`` in ``seconds`` (``flops`` None: the current step's);
    without a step cost (nothing compiled in this process) only samples/s."""
    cost = self._step_cost or throughput.StepCost(0.0, 1, "", "")
    flops = 0.0 if self._step_cost is None else steps * cost.flops if flops is None else flops
    peak = self._peak.tflops if self._peak else None
    return throughput.rates(steps, seconds, flops, self.config.data.batch_size, cost, peak)

  def add_eval_time(self, seconds: float) -> None:
    self._eval_time_s += seconds

  def bookkeeping(self) -> dict[str, float]:
    """What a checkpoint must carry for the final results to survive a restart."""
    return {
      "best_epoch_test_accuracy": self._best_epoch_accuracy,
      "train_time_s": self._train_time_s,
      "eval_time_s": self._eval_time_s,
      "train_flops": self._train_flops,
    }

  def info(self, message: str) -> None:
    print(message, flush=True)

  def check_finite(
    self, summary: dict[str, np.ndarray], epoch: int, latest_step: int | None
  ) -> dict[str, np.ndarray]:
    """Stop with a clear message if any loss in ``summary`` is NaN or Inf (``latest_step``:
    the newest checkpoint, None when there is none)."""
    bad = {k: v for k, v in summary.items() if not np.all(np.isfinite(v))}
    if bad:
      raise NonFiniteLossError(
        f"non-finite training metrics in epoch {epoch + 1}: "
        + ", ".join(f"{k}={np.round(v, 6).tolist()}" for k, v in bad.items())
        + ". Lower config.optim.base_lr, check the input data, or change the optimizer. "
        f"Nothing was saved after the last finite step: {kept_checkpoint(latest_step)}."
      )
    return summary

  def epoch(
    self,
    epoch: int,
    step: int,
    train: dict[str, np.ndarray],
    test_accuracy: np.ndarray,
    learning_rate: float,
  ) -> None:
    """Print per-block train/test accuracy and append one JSON line."""
    self._best_epoch_accuracy = max(self._best_epoch_accuracy, float(np.max(test_accuracy)))
    record = {
      "epoch": epoch + 1,
      "step": step,
      "learning_rate": float(learning_rate),
      "test_accuracy": test_accuracy,
    }
    record.update({f"train_{k}": v for k, v in train.items()})
    self._write(record, "epoch")
    start_step, start_time, start_flops = self._speed_from
    flops = self._train_flops or 0.0
    if self._train_time_s > start_time and step > start_step:
      steps, seconds = step - start_step, self._train_time_s - start_time
      rates = self._rates(steps, seconds, flops - start_flops if self._train_flops else None)
      speed = {"step": step, "steps_per_s": steps / seconds, **rates}
      self._write({k: v for k, v in speed.items() if v is not None}, "speed")  # not in metrics
    self._speed_from = (step, self._train_time_s, flops)
    blocks = " ".join(
      f"[{k}] {tr:.3f}/{te:.3f}"
      for k, (tr, te) in enumerate(zip(np.atleast_1d(train["accuracy"]), test_accuracy))
    )
    self.info(
      f"epoch {epoch + 1}: loss {float(train['total_loss']):.4f}  "
      f"train/test accuracy per block {blocks}"
    )

  def finish(self, test_accuracy: np.ndarray, steps: int, info, extras=None) -> dict:
    """Write and return ``results.json`` (``train_time_s``: the train steps, excluding
    compilation; ``eval_time_s``: the test-set evaluations, including compiling the eval step
    once per process; both summed over restarts).

    Each ``extras`` entry (e.g. ``{"pipeline": {...}}``) is added to the results and
    also written as ``<name>.json``.
    """
    train_time_s = self._train_time_s
    best_block = int(np.argmax(test_accuracy))
    results = {
      "rule": self.config.rule,
      "dataset": info.name,
      "best_test_accuracy": float(test_accuracy[best_block]),
      "per_block_test_accuracy": [float(a) for a in test_accuracy],
      "best_block": best_block,
      # The reference's protocol: the maximum over epochs and blocks (model selection on test).
      "best_epoch_test_accuracy": self._best_epoch_accuracy,
      "label_noise": self._label_noise,
      "adaptive_inference": self._adaptive_inference,
      "steps": steps,
      "wall_time_s": time.perf_counter() - self._start,
      "train_time_s": train_time_s,
      "steps_per_s": steps / train_time_s if train_time_s > 0 else math.nan,
      "eval_time_s": self._eval_time_s,
      "throughput": self._rates(steps, train_time_s, self._train_flops),
      **self._facts,
      # model.dtype, model.matmul_precision and what they mean on this run's devices
      "precision": precision.describe(
        self.config.model.dtype, self.config.model.matmul_precision
      ),
      "config": self.config.to_dict(),
      **(extras or {}),
    }
    if self._adaptive_inference:
      self._write({"step": steps, "adaptive_inference": self._adaptive_inference}, "final")
    if self._chief:
      for name, entry in {"results": results, **(extras or {})}.items():
        safe_files.write_atomic(os.path.join(self.workdir, f"{name}.json"),
                                _dumps(entry, indent=2))
    self.info(self._throughput_line(results["throughput"]))
    self.info(
      f"best block {best_block}: test accuracy {results['best_test_accuracy']:.4f} "
      f"({results['wall_time_s']:.1f} s, {results['steps_per_s']:.2f} steps/s); "
      f"results in {os.path.join(self.workdir, 'results.json')}"
    )
    return results

  def _throughput_line(self, rates: dict[str, Any]) -> str:
    """The throughput and MFU of the run, or why MFU is unknown."""
    if rates["samples_per_s"] is None:
      return "throughput: no train step timed in this run"
    line = f"throughput: {rates['samples_per_s']:.1f} samples/s"
    if rates["flops_per_step"]:
      line += (
        f", {rates['flops_per_step'] / 1e9:.3g} GFLOP per step (XLA), "
        f"{rates['tflops_per_s_per_device']:.3g} TFLOP/s per device"
      )
    if rates["mfu"] is not None:
      peak = self._peak
      return f"{line}, MFU {rates['mfu']:.1%} of {peak.tflops:g} TFLOP/s ({peak.source})"
    return line + (f"; MFU unknown: {self._peak.source}" if self._peak else "")
