"""CI: interrupt the default job as a user's scheduler would, from the installed wheel.

Run from outside the repository with the wheel's virtual environment active:
``python resume_check.py DIR``.  In DIR it runs the default digits job (3 epochs, a checkpoint
every 10 steps) four ways, each exactly as a user types it (``python -m launch.train``, no
test-only environment):

1. uninterrupted (the reference);
2. SIGTERM mid-run -> exit 75 -> the same command -> equal to the reference;
3. kill -9 mid-run -> the same command -> equal to the reference;
4. the finished run of 2 started again -> "already finished", nothing rewritten;
5. the finished run of 2 extended by one epoch, allowed with ``checkpoint.allow_changed``.

"Equal": every parameter and BatchNorm statistic of the final checkpoint bit for bit, and the
accuracies of ``results.json``.  Exits non-zero with the reason on the first difference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from deinforeg_jax import checkpoint

ARGS = ("--config.train.num_epochs=3", "--config.checkpoint.every_steps=10")
TOTAL_STEPS = 3 * 22  # 1437 training digits at batch 64: 22 steps per epoch
RESULT_FIELDS = (
  "best_test_accuracy",
  "per_block_test_accuracy",
  "best_block",
  "best_epoch_test_accuracy",
  "adaptive_inference",
  "steps",
)


def fail(message: str) -> None:
  sys.exit(f"resume check FAILED: {message}")


def start(workdir: str, *extra: str) -> subprocess.Popen:
  command = [sys.executable, "-m", "launch.train", f"--workdir={workdir}", *ARGS, *extra]
  print("$", " ".join(command), flush=True)
  return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, expected_code: int = 0) -> str:
  out, _ = process.communicate(timeout=900)
  if process.returncode != expected_code:
    fail(f"exit code {process.returncode}, expected {expected_code}; its output:\n{out[-3000:]}")
  return out


def run(workdir: str, *extra: str, expected_code: int = 0) -> str:
  return finish(start(workdir, *extra), expected_code)


def interrupt_after_first_checkpoint(workdir: str, sig: signal.Signals) -> subprocess.Popen:
  process = start(workdir)
  directory = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 600
  while not (os.path.isdir(directory) and any(d.isdigit() for d in os.listdir(directory))):
    if process.poll() is not None or time.time() > deadline:
      fail(f"no checkpoint appeared in {directory}:\n{process.stdout.read()[-3000:]}")
    time.sleep(0.05)
  process.send_signal(sig)
  return process


def compare(workdir: str, reference: str) -> None:
  variables, metadata = checkpoint.read_variables(workdir)
  expected, expected_metadata = checkpoint.read_variables(reference)
  if metadata["step"] != expected_metadata["step"] or metadata["step"] != TOTAL_STEPS:
    fail(f"{workdir} ends at step {metadata['step']}, the reference at {expected_metadata['step']}")
  flat = checkpoint.flax.traverse_util.flatten_dict(variables, sep="/")
  flat_expected = checkpoint.flax.traverse_util.flatten_dict(expected, sep="/")
  if flat.keys() != flat_expected.keys():
    fail(f"{workdir}: other variables than the reference")
  for name, value in flat.items():
    if not np.array_equal(np.asarray(value), np.asarray(flat_expected[name])):
      fail(f"{workdir}: {name} differs from the uninterrupted run")
  got, want = (json.load(open(os.path.join(d, "results.json"))) for d in (workdir, reference))
  for field in RESULT_FIELDS:
    if got[field] != want[field]:
      fail(f"{workdir}: results.json {field} = {got[field]}, uninterrupted {want[field]}")
  print(f"ok: {workdir} equals the uninterrupted run ({len(flat)} arrays, results)", flush=True)


def main(root: str) -> None:
  os.makedirs(root, exist_ok=True)
  reference = os.path.join(root, "uninterrupted")
  run(reference)

  stopped = os.path.join(root, "sigterm")
  out = finish(interrupt_after_first_checkpoint(stopped, signal.SIGTERM), expected_code=75)
  if "SIGTERM received" not in out or "Run the same command again" not in out:
    fail(f"SIGTERM: no note of what was saved:\n{out[-2000:]}")
  print("ok: SIGTERM -> exit 75:", out.strip().splitlines()[-1], flush=True)
  out = run(stopped)
  if "resuming from the checkpoint at step" not in out:
    fail(f"the rerun after SIGTERM did not resume:\n{out[-2000:]}")
  compare(stopped, reference)

  killed = os.path.join(root, "kill9")
  finish(interrupt_after_first_checkpoint(killed, signal.SIGKILL), expected_code=-signal.SIGKILL)
  out = run(killed)
  if "resuming from the checkpoint at step" not in out:
    fail(f"the rerun after kill -9 did not resume:\n{out[-2000:]}")
  compare(killed, reference)

  names = ("results.json", "metrics.jsonl")
  before = {name: open(os.path.join(stopped, name)).read() for name in names}
  out = run(stopped)
  if "already finished" not in out:
    fail(f"rerunning a finished run did not say 'already finished':\n{out[-2000:]}")
  if {name: open(os.path.join(stopped, name)).read() for name in names} != before:
    fail("rerunning a finished run rewrote results.json or metrics.jsonl")
  print("ok: a finished run started again is already finished and rewrites nothing", flush=True)

  out = run(
    stopped, "--config.train.num_epochs=4", "--config.checkpoint.allow_changed=train.num_epochs"
  )
  steps = checkpoint.read_metadata(stopped)["step"]
  if "config changes allowed on resume: train.num_epochs" not in out or steps != TOTAL_STEPS + 22:
    fail(f"extending the finished run with allow_changed ended at step {steps}:\n{out[-2000:]}")
  print(f"ok: the finished run extended by one epoch (allow_changed) ends at {steps}", flush=True)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python resume_check.py DIR")
  main(sys.argv[1])
