"""Writing the project's files without following links and without half-written files.

Two ways to write, one per kind of file:

* ``atomic_writer`` / ``write_atomic`` (whole files: ``results.json``, summaries, tables,
  exports): the content goes to a new temporary file ``.<name>.<random>.tmp`` in the same
  folder, is flushed and ``fsync``-ed, then ``os.replace``-d over the destination.  Readers
  see the old file or the new one, never a part; a kill or an error leaves the old file as it
  was (the temporary file is removed on any error).  ``os.replace`` replaces a symbolic link
  at the destination by the new file: the link's target is never opened.
* ``open_no_follow`` / ``open_for_append`` (files appended to or locked in place:
  ``metrics.jsonl``, TensorBoard events, ``run.lock``): ``O_NOFOLLOW``, then the opened file
  must be a regular file.  A symbolic link (or a FIFO, a device, a folder) at the path is
  refused with ``UnsafeFileError`` naming the path; nothing is written through it.

Only the last component of a path is checked: a workdir that is itself a link is the user's
choice and is followed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import stat
from typing import IO, Iterator


class UnsafeFileError(OSError):
  """The destination is a symbolic link or not a regular file; ``str()`` is one line."""

  def __str__(self) -> str:
    return str(self.strerror)


def _refusal(path: str, what: str) -> UnsafeFileError:
  return UnsafeFileError(
    errno.ELOOP if what.startswith("a symbolic link") else errno.EEXIST,
    f"refusing to write {path}: it is {what}, not a regular file; remove it (nothing was "
    "written through it) or use another folder",
  )


def _kind(mode: int) -> str:
  if stat.S_ISDIR(mode):
    return "a folder"
  if stat.S_ISFIFO(mode):
    return "a named pipe"
  if stat.S_ISSOCK(mode):
    return "a socket"
  return "a device"


def open_no_follow(path: str, flags: int, permissions: int = 0o644) -> int:
  """``os.open(path, flags | O_NOFOLLOW | O_CLOEXEC)`` that only ever opens a regular file.

  A symbolic link at ``path`` (even a dangling one) or any other non-regular file raises
  ``UnsafeFileError`` naming ``path`` before anything is written; other OS errors
  (``ENOSPC``, ``EACCES``...) are raised unchanged.  ``O_NONBLOCK`` is set while opening, so
  a named pipe without a reader is refused instead of blocking, then cleared.
  Returns the file descriptor (the caller closes it)."""
  try:
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, permissions)
  except OSError as error:
    if error.errno == errno.ELOOP or (error.errno == errno.ENXIO and os.path.exists(path)):
      link = os.path.islink(path)
      what = f"a symbolic link (to {os.readlink(path)})" if link else _kind(os.lstat(path).st_mode)
      raise _refusal(path, what) from None
    if error.errno == errno.EISDIR:
      raise _refusal(path, "a folder") from None
    raise
  try:
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
      raise _refusal(path, _kind(mode))
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
  except BaseException:
    os.close(fd)
    raise
  return fd


def open_for_append(path: str, binary: bool = False) -> IO:
  """``open(path, "a")`` (``"ab"`` if ``binary``) through ``open_no_follow``: created if
  missing, every write goes to the end, a link or non-regular file is refused."""
  fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
  return os.fdopen(fd, "ab" if binary else "a", **({} if binary else {"encoding": "utf-8"}))


def _fsync_folder(folder: str) -> None:
  """Make a rename in ``folder`` durable (best effort: some filesystems refuse it)."""
  try:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")  # .<name>.<random>.tmp


def _create_temporary(folder: str, name: str) -> tuple[str, int]:
  """A new file ``<folder>/.<name>.<random>.tmp`` (``O_EXCL``: never an existing file or
  link), with the usual permissions (0o666 less the umask)."""
  while True:
    path = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
      flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
      return path, os.open(path, flags, 0o666)
    except FileExistsError:
      continue


@contextlib.contextmanager
def atomic_writer(path: str, binary: bool = False, **open_kwargs) -> Iterator[IO]:
  """``with atomic_writer(path) as f: f.write(...)`` replaces ``path`` as a whole.

  Writes to a temporary file in ``path``'s folder; when the block ends without an error the
  file is flushed, ``fsync``-ed and ``os.replace``-d over ``path`` (a link at ``path`` is
  replaced, not followed; the folder is ``fsync``-ed too).  On any error in the block, the
  write, the ``fsync`` or the rename, the temporary file is removed, ``path`` is as it was and
  the error propagates.  ``open_kwargs`` go to ``os.fdopen`` (text mode defaults to UTF-8)."""
  folder, name = os.path.split(os.path.abspath(path))
  if os.path.isdir(path) and not os.path.islink(path):
    raise _refusal(path, "a folder")
  temporary, fd = _create_temporary(folder, name)
  try:
    if not binary:
      open_kwargs.setdefault("encoding", "utf-8")
    with os.fdopen(fd, "wb" if binary else "w", **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(temporary)
    raise
  _fsync_folder(folder)


def write_atomic(path: str, content: str | bytes | bytearray) -> None:
  """Replace ``path`` by ``content`` (text, or bytes-like) as a whole (see ``atomic_writer``)."""
  with atomic_writer(path, binary=not isinstance(content, str)) as f:
    f.write(content)


def remove_leftovers(folder: str) -> None:
  """Remove the temporary files that a kill during ``atomic_writer`` left in ``folder``
  (call it only while no other process writes there, e.g. holding the workdir's lock)."""
  for name in os.listdir(folder):
    if _TEMPORARY.fullmatch(name):
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, name))
