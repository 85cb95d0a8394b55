"""One run per workdir: a kernel lock on ``<workdir>/run.lock``, held for the run's lifetime.

The lock is ``fcntl.flock(LOCK_EX | LOCK_NB)`` on the open file ``run.lock``.  The
kernel drops it when the holding process exits or dies (even by ``kill -9``), so a
lock left by a dead run is simply free: no pid check, no removal, no race between
restarts taking it over.  The file holds ``{"pid", "host", "started", "flock": true}``
of the holder, only to name it when a second run is refused.  After the lock is
taken the file must still be the one at the path (a releasing holder removes it),
else the lock is taken again on the new file; so two processes never both hold it.

On NFS, Linux clients emulate ``flock`` with whole-file POSIX locks that the server
sees, so runs on several hosts sharing the workdir exclude each other too (a crashed
host's lock ends with its NFS lease).  In multi-process runs only process 0 locks.

A lock file written by an older version (no ``"flock"`` key) that names a live process
on this host is respected (that run holds no kernel lock); one naming a dead process is
taken over.  Any failure to create or write the lock (a full disk, a read-only
filesystem, a file-size limit, a workdir that is a file) raises ``WorkdirError``, one
line naming the path and the cause, and leaves no lock file behind.  ``run.lock`` is opened
with ``O_NOFOLLOW``: a symbolic link (or any non-regular file) at that path is refused with a
``WorkdirError`` and nothing is written through it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import Callable

from deinforeg_jax import safe_files

LOCK_NAME = "run.lock"


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir."""


class WorkdirError(OSError):
  """A file or folder of the run cannot be created or written (disk full, read-only...).

  ``WorkdirError(errno, message)``; ``str()`` is the message alone (one line)."""

  def __str__(self) -> str:
    return str(self.strerror)


# What to do about each cause, for ``write_error``.
_REMEDIES = {
  errno.ENOSPC: "free space on that filesystem or use another --workdir",
  errno.EDQUOT: "free space within your quota or use another --workdir",
  errno.EROFS: "the filesystem is read-only: use a writable --workdir",
  errno.EACCES: "make it writable for this user or use another --workdir",
  errno.EPERM: "make it writable for this user or use another --workdir",
  errno.EFBIG: "a file-size limit was reached (ulimit -f): raise it or use another --workdir",
  errno.EIO: "the device failed to read or write: check the disk (dmesg) or use another --workdir",
  errno.ENOLCK: "the filesystem offers no file locks (NFS without a lock service?): use a "
  "local --workdir",
}

DISK_ERRNOS = frozenset(_REMEDIES) | {errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


def write_error(path: str, error: OSError, doing: str = "write") -> WorkdirError:
  """``WorkdirError`` "cannot <doing> <path>: <strerror> (<ERRNO>); <what to do>"."""
  code = error.errno
  name = errno.errorcode.get(code, str(code)) if code is not None else type(error).__name__
  cause = error.strerror or str(error)
  remedy = _REMEDIES.get(code, "check the path and the filesystem, or use another --workdir")
  return WorkdirError(code, f"cannot {doing} {path}: {cause} ({name}); {remedy}")


def make_workdir(workdir: str) -> None:
  """``os.makedirs(workdir)``; a path that is a file, or any OS error, is a ``WorkdirError``."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(
      errno.ENOTDIR,
      f"cannot use {workdir} as the workdir: it is a file, not a folder; give --workdir a "
      "folder (it is created if missing)",
    )
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    if isinstance(error, (FileExistsError, NotADirectoryError)):  # a file on the way
      raise WorkdirError(
        error.errno,
        f"cannot use {workdir} as the workdir: a part of that path is a file, not a folder "
        f"({error.strerror}); give --workdir a folder",
      ) from None
    raise write_error(workdir, error, "create the workdir") from None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read(fd: int) -> dict | None:
  """The JSON holder record in the open lock file ``fd`` (None: empty or unreadable)."""
  try:
    size = os.fstat(fd).st_size
    return json.loads(os.pread(fd, max(size, 1), 0).decode()) if size else None
  except (OSError, ValueError):
    return None


class WorkdirLock:
  """``with WorkdirLock(workdir): ...`` holds ``<workdir>/run.lock`` for the block."""

  def __init__(self, workdir: str, info: Callable[[str], None] = print):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self._info = info
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    """Take the lock, or raise ``WorkdirLockedError`` (held) / ``WorkdirError`` (OS error)."""
    make_workdir(self.workdir)
    for _ in range(100):  # only a holder releasing at this very moment makes us go round
      try:
        fd = safe_files.open_no_follow(self.path, os.O_CREAT | os.O_RDWR)
      except safe_files.UnsafeFileError as error:  # a link or a FIFO: never write through it
        raise WorkdirError(error.errno, str(error)) from None
      except OSError as error:
        raise write_error(self.path, error, "create") from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as error:
        holder = _read(fd) or self._read_again()
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise WorkdirLockedError(self._message(holder)) from None
        raise write_error(self.path, error, "lock") from None
      if not self._same_file(fd):  # removed by a releasing holder after we opened it
        os.close(fd)
        continue
      self._take(fd)
      return
    raise WorkdirLockedError(self._message(None))

  def _same_file(self, fd: int) -> bool:
    try:
      here, there = os.fstat(fd), os.stat(self.path)
    except FileNotFoundError:
      return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

  def _take(self, fd: int) -> None:
    """Holding the kernel lock on ``fd``: check an older version's holder, write ours."""
    previous = _read(fd)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "flock": True}
    if (
      previous
      and not previous.get("flock")
      and previous.get("host") == me["host"]
      and previous.get("pid") != me["pid"]
      and _alive(int(previous.get("pid", -1)))
    ):  # an older version's run, which holds no kernel lock, is still alive
      os.close(fd)
      raise WorkdirLockedError(self._message(previous))
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(me).encode(), 0)
    except OSError as error:  # disk full, file-size limit...: leave no lock behind
      self._remove(fd)
      raise write_error(self.path, error) from None
    self._fd = fd
    if previous and previous.get("pid") not in (None, me["pid"]):
      self._info(
        f"note: taking over {self.path}, left by pid {previous['pid']} (no longer running)"
      )

  def _remove(self, fd: int) -> None:
    """Remove the lock file while still holding its lock, then let the lock go."""
    try:
      if self._same_file(fd):
        os.remove(self.path)
    except OSError:
      pass  # a read-only folder: the unlocked file stays and is taken over next time
    finally:
      os.close(fd)

  def release(self) -> None:
    if self._fd is not None:
      fd, self._fd = self._fd, None
      self._remove(fd)

  def _read_again(self) -> dict | None:
    """The holder's record, once more after a moment (it may be being written right now)."""
    time.sleep(0.05)
    try:
      fd = safe_files.open_no_follow(self.path, os.O_RDONLY)
    except OSError:
      return None
    try:
      return _read(fd)
    finally:
      os.close(fd)

  def _message(self, holder: dict | None) -> str:
    who = (
      f"pid {holder.get('pid')} on host {holder.get('host')} since "
      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('started', 0)))}"
      if holder
      else "another process"
    )
    return (
      f"the workdir {self.workdir} is in use by {who}: two runs on one workdir would "
      "overwrite each other's checkpoints and metrics. Wait for that run to finish, or use "
      f"another --workdir; if that process is gone (e.g. on another host), delete {self.path}."
    )
