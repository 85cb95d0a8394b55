"""Interruptions at every moment of a run, and the rerun that must end as if none happened.

SIGTERM (a scheduler's preemption) or SIGINT may arrive during start-up, the compile, an epoch,
the evaluation at an epoch's end outside the checkpoint cadence, the final save or the final
evaluation.  Each time the run must save the current step if no checkpoint holds it yet, say
exactly what it saved, stop with ``preemption.Preempted`` (``launch.train``: exit 75), and the same
command must then finish with the parameters, metrics and results of a run never stopped.  The
in-process cases inject the signal at the moment itself; the launched ones run ``launch.train`` in
a user's environment (``helpers.launch_env``), as the README's commands do, SIGTERM and kill -9
alike, and end where one launched run never stopped (``launched_reference``) ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from helpers import (
  TINY_RUNS, assert_trees_equal, run_launcher, saved_state, start_train, tiny_config, train_command,
)

from deinforeg_jax import data_parallel, inference, preemption, train
from deinforeg_jax.checkpoint import RunCheckpointer

STEPS_PER_EPOCH = 22  # 1437 digits training images, batch 64
RESULT_FIELDS = (
  "best_test_accuracy",
  "per_block_test_accuracy",
  "best_block",
  "best_epoch_test_accuracy",
  "adaptive_inference",
  "steps",
)


def two_epoch_config():
  """Two epochs, a checkpoint only at the end of the second (``every_epochs=2``)."""
  config = tiny_config(num_epochs=2)
  config.checkpoint.every_epochs = 2
  config.checkpoint.use_async = False
  return config


def metric_lines(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def results(workdir) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted") / "run")
  train.train_and_evaluate(two_epoch_config(), workdir)
  return workdir


def _signal_on_call(monkeypatch, owner, name, when=None, sig=signal.SIGTERM):
  """Patch ``owner.name`` to raise ``sig`` in this process once: on the first call (``when``
  None), on the ``when``-th call (an int), or on the first call whose arguments ``when`` accepts.
  """
  original = getattr(owner, name)
  calls, raised = [], []

  def wrapper(*args, **kwargs):
    calls.append(1)
    if when is None:
      due = True
    elif isinstance(when, int):
      due = len(calls) == when
    else:
      due = when(*args, **kwargs)
    if due and not raised:
      raised.append(True)
      signal.raise_signal(sig)
    return original(*args, **kwargs)

  monkeypatch.setattr(owner, name, wrapper)
  return raised


# moment -> (owner, attribute, which call (``_signal_on_call``), the message's "when", the step
#            saved on the way out, the checkpoint a rerun resumes from)
MOMENTS = {
  "start-up": (train, "load_dataset", None, "during start-up", None, None),
  "compile": (data_parallel.DataParallelEngine, "set_phase", None, "during start-up", None, None),
  "mid-epoch": (train.ProgressBar, "update", 5, "in epoch 1", 5, 5),
  "epoch end outside the cadence": (
    data_parallel.DataParallelEngine,
    "evaluate",
    None,
    "at the end of epoch 1",
    STEPS_PER_EPOCH,
    STEPS_PER_EPOCH,
  ),
  "final save": (
    RunCheckpointer,
    "save",
    lambda self, state, metadata: metadata["step"] == 2 * STEPS_PER_EPOCH,
    "at the end of epoch 2",
    None,
    2 * STEPS_PER_EPOCH,
  ),
  "final evaluation": (
    inference,
    "adaptive_report",
    None,
    "during the final evaluation",
    None,
    2 * STEPS_PER_EPOCH,
  ),
}


@TINY_RUNS
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_signal_at_any_moment_saves_what_is_unsaved_and_the_rerun_equals_no_stop(
  moment, sig, reference, tmp_path, monkeypatch
):
  owner, name, when, said_when, saved_step, resume_step = MOMENTS[moment]
  workdir = str(tmp_path / "run")
  raised = _signal_on_call(monkeypatch, owner, name, when, sig)
  with pytest.raises(preemption.Preempted) as stopped:
    train.train_and_evaluate(two_epoch_config(), workdir)
  assert raised
  message = str(stopped.value)
  assert message.startswith(f"{signal.Signals(sig).name} received {said_when}: "), message
  assert stopped.value.saved_step == saved_step
  if saved_step is not None:
    assert f"saved a checkpoint at step {saved_step}, the last completed step" in message
  elif resume_step is not None:
    assert f"since the checkpoint at step {resume_step}, which a rerun resumes from" in message
  else:
    assert "there is no checkpoint yet; nothing was saved" in message
  checkpoints = os.path.join(workdir, "checkpoints")
  entries = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
  assert sorted(int(d) for d in entries if d.isdigit()) == ([resume_step] if resume_step else [])
  assert not [d for d in entries if "tmp" in d]  # no half-written save left behind
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handlers are gone
  monkeypatch.undo()

  train.train_and_evaluate(two_epoch_config(), workdir)
  final, step = saved_state(workdir)
  expected, expected_step = saved_state(reference)
  assert step == expected_step == 2 * STEPS_PER_EPOCH
  assert_trees_equal(final, expected)
  assert metric_lines(workdir) == metric_lines(reference)  # mid-epoch sums carried over
  got, want = results(workdir), results(reference)
  assert {k: got[k] for k in RESULT_FIELDS} == {k: want[k] for k in RESULT_FIELDS}


@TINY_RUNS
def test_a_fresh_start_replaces_the_metrics_of_an_attempt_killed_before_its_first_checkpoint(
  tmp_path,
):
  """kill -9 before the first checkpoint leaves metrics lines and no checkpoint; the next run
  starts over and must not append to them."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  stale = {"epoch": 1, "step": 22, "learning_rate": 0.2, "test_accuracy": [0.5]}
  (workdir / "metrics.jsonl").write_text(json.dumps(stale) + "\n")
  config = tiny_config(num_epochs=1)
  config.train.max_steps = 3
  train.train_and_evaluate(config, str(workdir))
  assert [line["step"] for line in metric_lines(workdir)] == [3]


def _wait_for_checkpoint(process, workdir: str, timeout: float = 240) -> None:
  directory = os.path.join(workdir, "checkpoints")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory)):
      return
    assert process.poll() is None, process.stdout.read()
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint in {directory} after {timeout} s")


# The launched runs' flags besides ``helpers.TINY_TRAIN_FLAGS``' (two epochs).
LAUNCHED_FLAGS = ("--config.checkpoint.every_steps=10",)


@pytest.fixture(scope="module")
def launched_reference(tmp_path_factory):
  """The launched run never stopped (``train_command(..., *LAUNCHED_FLAGS)``)."""
  workdir = str(tmp_path_factory.mktemp("launched") / "reference")
  done = run_launcher(*train_command(workdir, *LAUNCHED_FLAGS), stderr=subprocess.STDOUT)
  assert done.returncode == 0, done.stdout[-3000:]
  return workdir


def _resume_equals_no_stop(workdir: str, flags, stopped_at: int, reference_dir: str) -> None:
  """The same command rerun in ``workdir`` resumes from ``stopped_at`` and ends with the state of
  the launched run never stopped (``reference_dir``)."""
  resumed = start_train(workdir, *flags)
  resumed_out, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, resumed_out
  assert f"resuming from the checkpoint at step {stopped_at}" in resumed_out
  final, step = saved_state(workdir)
  expected, expected_step = saved_state(reference_dir)
  assert step == expected_step == 2 * STEPS_PER_EPOCH
  assert_trees_equal(final, expected)


def test_launched_run_stopped_by_sigterm_exits_75_and_the_rerun_equals_no_stop(
  launched_reference, tmp_path
):
  """As a user runs it (no test-only environment): SIGTERM mid-run, exit 75, the same command
  resumes (the restore path that crashed every user's resume) and ends where a run never
  stopped ends; rerunning the finished run then changes nothing."""
  stopped_dir, reference_dir = str(tmp_path / "stopped"), launched_reference
  victim = start_train(stopped_dir, *LAUNCHED_FLAGS)
  _wait_for_checkpoint(victim, stopped_dir)
  victim.send_signal(signal.SIGTERM)
  out, _ = victim.communicate(timeout=240)
  assert victim.returncode == 75, out
  assert "SIGTERM received in epoch" in out and "Run the same command again" in out, out
  _, stopped_at = saved_state(stopped_dir)
  assert 10 <= stopped_at < 2 * STEPS_PER_EPOCH

  _resume_equals_no_stop(stopped_dir, LAUNCHED_FLAGS, stopped_at, reference_dir)
  got, want = results(stopped_dir), results(reference_dir)
  assert {k: got[k] for k in RESULT_FIELDS} == {k: want[k] for k in RESULT_FIELDS}
  assert metric_lines(stopped_dir) == metric_lines(reference_dir)

  before = {name: (stopped_dir + "/" + name) for name in ("results.json", "metrics.jsonl")}
  contents = {name: open(path).read() for name, path in before.items()}
  again = start_train(stopped_dir, *LAUNCHED_FLAGS)
  again_out, _ = again.communicate(timeout=300)
  assert again.returncode == 0, again_out
  assert f"already finished: the checkpoint at step {2 * STEPS_PER_EPOCH}" in again_out
  assert {name: open(path).read() for name, path in before.items()} == contents


def test_launched_run_killed_resumes_to_the_parameters_of_no_stop(launched_reference, tmp_path):
  """kill -9 after a mid-epoch checkpoint (saved synchronously); the same command finishes with
  the state of the run never stopped."""
  flags = (*LAUNCHED_FLAGS, "--config.checkpoint.use_async=False")
  killed_dir = str(tmp_path / "killed")
  victim = start_train(killed_dir, *flags)
  _wait_for_checkpoint(victim, killed_dir)  # the first committed checkpoint (step 10)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  _, killed_at = saved_state(killed_dir)
  assert 0 < killed_at < 2 * STEPS_PER_EPOCH, "the kill must land before the end of the run"

  _resume_equals_no_stop(killed_dir, flags, killed_at, launched_reference)


def test_launched_run_stopped_while_starting_exits_75_and_saves_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  process = start_train(workdir)
  time.sleep(0.5)  # still importing
  process.send_signal(signal.SIGTERM)
  out, _ = process.communicate(timeout=240)
  assert process.returncode == 75, out
  assert "SIGTERM received" in out and "nothing was saved" in out, out
  assert not os.path.isdir(os.path.join(workdir, "checkpoints")) or not [
    d for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()
  ]
