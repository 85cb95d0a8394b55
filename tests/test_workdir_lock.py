"""``workdir_lock``: one holder at a time, stale locks taken over atomically, clear errors.

The race test starts many processes at once (a barrier) on a workdir whose ``run.lock`` was
left by a dead process, as several restarts of a crashed job would, and checks that at no
moment two of them hold the lock and that none fails with anything but ``WorkdirLockedError``.
The processes are forked from a small Python that imports only ``workdir_lock`` (no JAX).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from deinforeg_jax.workdir_lock import LOCK_NAME, WorkdirError, WorkdirLock, WorkdirLockedError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RACE = textwrap.dedent(
  """
  import json, multiprocessing as mp, os, socket, sys, time, traceback
  from deinforeg_jax.workdir_lock import WorkdirLock, WorkdirLockedError

  def contender(workdir, barrier, holders, peak, guard, outcomes):
    try:
      lock = WorkdirLock(workdir, info=lambda _: None)
      barrier.wait()
      try:
        lock.acquire()
      except WorkdirLockedError:
        outcomes.put("refused")
        return
      with guard:
        holders.value += 1
        peak.value = max(peak.value, holders.value)
      time.sleep(0.03)  # hold it while the others try
      with guard:
        holders.value -= 1
      lock.release()
      outcomes.put("held")
    except BaseException:  # noqa: BLE001  # any other error is what the test looks for
      outcomes.put("error: " + traceback.format_exc(limit=3))

  def stale_lock(workdir, trial):
    dead = mp.get_context("fork").Process(target=lambda: None)
    dead.start()
    dead.join()
    path = os.path.join(workdir, "run.lock")
    with open(path, "w") as f:
      if trial % 3 == 0:  # written by an older version: a dead pid and no kernel lock
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "started": 0}, f)
      elif trial % 3 == 1:  # written by this version, its holder gone
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "started": 0, "flock": True}, f)
      # else: an empty file (a start that failed before writing)

  def main(root, trials, processes):
    ctx = mp.get_context("fork")
    results = []
    for trial in range(trials):
      workdir = os.path.join(root, str(trial))
      os.makedirs(workdir)
      stale_lock(workdir, trial)
      barrier, guard = ctx.Barrier(processes), ctx.Lock()
      holders, peak, outcomes = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Queue()
      procs = [
        ctx.Process(target=contender, args=(workdir, barrier, holders, peak, guard, outcomes))
        for _ in range(processes)
      ]
      for p in procs:
        p.start()
      got = [outcomes.get(timeout=30) for _ in procs]
      for p in procs:
        p.join()
      results.append({"peak": peak.value, "outcomes": got})
    print(json.dumps(results))

  main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
  """
)


def test_processes_racing_on_a_stale_lock_never_both_hold_it_and_never_fail_raw(tmp_path):
  trials, processes = 30, 8
  proc = subprocess.run(
    [sys.executable, "-c", RACE, str(tmp_path), str(trials), str(processes)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout)
  assert len(results) == trials
  errors = [o for r in results for o in r["outcomes"] if o.startswith("error")]
  assert not errors, f"{len(errors)} raw errors, e.g. {errors[0]}"
  assert [r["peak"] for r in results] == [1] * trials  # never two holders at once
  for r in results:
    assert r["outcomes"].count("held") >= 1
    assert sorted(set(r["outcomes"])) <= ["held", "refused"]
  assert not any(os.path.exists(tmp_path / str(t) / LOCK_NAME) for t in range(trials))


def _holder_process(workdir: str) -> subprocess.Popen:
  """A process that takes the lock, prints 'held' and waits to be killed."""
  code = (
    "import sys, time\nfrom deinforeg_jax.workdir_lock import WorkdirLock\n"
    f"lock = WorkdirLock({workdir!r})\nlock.acquire()\nprint('held', flush=True)\ntime.sleep(60)\n"
  )
  proc = subprocess.Popen(
    [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
  )
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_a_live_holder_is_named_and_a_killed_one_is_taken_over_at_once(tmp_path):
  workdir = str(tmp_path / "run")
  holder = _holder_process(workdir)
  try:
    with pytest.raises(WorkdirLockedError, match=rf"in use by pid {holder.pid} on host"):
      WorkdirLock(workdir).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  notes = []
  with WorkdirLock(workdir, info=notes.append):  # the kernel dropped the dead holder's lock
    with open(os.path.join(workdir, LOCK_NAME)) as f:
      assert json.load(f)["pid"] == os.getpid()
    with pytest.raises(WorkdirLockedError, match=rf"in use by pid {os.getpid()}"):
      WorkdirLock(workdir).acquire()  # a second holder in the same process is refused too
  assert notes == [f"note: taking over {workdir}/{LOCK_NAME}, left by pid {holder.pid} (no "
                   "longer running)"]
  assert not os.path.exists(os.path.join(workdir, LOCK_NAME))


def test_an_empty_lock_file_left_by_a_failed_start_does_not_block_the_next_run(tmp_path):
  open(tmp_path / LOCK_NAME, "w").close()
  with WorkdirLock(str(tmp_path), info=lambda _: None):
    with open(tmp_path / LOCK_NAME) as f:
      assert json.load(f)["pid"] == os.getpid()


def test_a_full_disk_at_start_is_one_clear_error_and_leaves_no_lock(tmp_path):
  """A file-size limit of 0 makes the lock file's first write fail (EFBIG), as a full disk
  does after the file was created (ENOSPC)."""
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  code = (
    "import resource\nfrom deinforeg_jax.workdir_lock import WorkdirLock, WorkdirError\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))\n"
    f"try:\n  WorkdirLock({workdir!r}).acquire()\nexcept WorkdirError as e:\n  print(e)\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
    check=False,
  )
  assert proc.returncode == 0 and not proc.stderr, proc.stderr
  assert proc.stdout.startswith(f"cannot write {workdir}/{LOCK_NAME}: File too large")
  assert not os.path.exists(os.path.join(workdir, LOCK_NAME))
  with WorkdirLock(workdir):  # the next run starts
    pass


def test_a_workdir_that_is_a_file_is_one_clear_error(tmp_path):
  path = tmp_path / "not_a_dir"
  path.write_text("x")
  with pytest.raises(WorkdirError, match=rf"cannot use {path} as the workdir: it is a file"):
    WorkdirLock(str(path)).acquire()
  assert issubclass(WorkdirError, OSError)
