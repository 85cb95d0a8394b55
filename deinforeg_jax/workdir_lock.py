"""One run per workdir: ``<workdir>/run.lock`` names the process that holds it.

The lock file is created atomically (``O_CREAT | O_EXCL``) and holds
``{"pid", "host", "started"}``.  A second run on the same workdir is refused with
the holder's pid and host.  A lock left by a process that died (same host, pid no
longer alive) is taken over with a note; a lock from another host cannot be
checked and is refused with instructions.  In multi-process runs only process 0
takes the lock.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Callable

LOCK_NAME = "run.lock"


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


class WorkdirLock:
  """``with WorkdirLock(workdir): ...`` holds ``<workdir>/run.lock`` for the block."""

  def __init__(self, workdir: str, info: Callable[[str], None] = print):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._info = info
    self._held = False

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if holder is None:  # being written right now, or unreadable: look again shortly
          time.sleep(0.2)
          holder = self._holder()
        if holder and holder.get("host") == me["host"] and not _alive(int(holder.get("pid", -1))):
          self._info(f"note: taking over {self.path}, left by pid {holder['pid']} (no longer running)")
          os.remove(self.path)
          continue
        raise WorkdirLockedError(self._message(holder)) from None
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self._held = True
      return
    raise WorkdirLockedError(self._message(self._holder()))

  def release(self) -> None:
    if self._held:
      self._held = False
      holder = self._holder()
      if holder and holder.get("pid") == os.getpid():
        os.remove(self.path)

  def _holder(self) -> dict | None:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def _message(self, holder: dict | None) -> str:
    who = (
      f"pid {holder.get('pid')} on host {holder.get('host')} since "
      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))}"
      if holder
      else "another process"
    )
    return (
      f"the workdir {os.path.dirname(self.path)} is in use by {who}: two runs on one workdir "
      "would overwrite each other's checkpoints and metrics. Wait for that run to finish, or use "
      f"another --workdir; if that process is gone (e.g. on another host), delete {self.path}."
    )
