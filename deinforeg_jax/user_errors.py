"""Which errors a user can act on, and the one line and exit code each becomes.

Exit codes of every ``launch.*`` command (``one_line``; ``launch.cli.run`` applies them):

* 0: done; also when SIGTERM/SIGINT arrive after the work completed (results written).
* 1 (``EXIT_ERROR``): a mistake the user can fix: one line ``error: <message>`` on stderr, no
  traceback.  These are the project's own public error classes (defined under ``deinforeg_jax``
  or ``launch``, e.g. ``configuration.ConfigError``, ``checkpoint.CheckpointMismatchError``,
  ``UserError``), file-system errors (``OSError``: a missing file, a full disk) and an unknown
  ``--config.<field>``.
* 75 (``EXIT_PREEMPTED``, ``EX_TEMPFAIL``): stopped by SIGTERM/SIGINT; what was done is saved
  (the message says what) and the same command continues.
* Anything else (a bug: ``TypeError``, a bare ``ValueError`` ...) keeps its traceback.

Only the standard library is imported here, so a launcher loads this before its slow imports.
docs/design.md, "Errors and exit codes".
"""

from __future__ import annotations


EXIT_ERROR = 1
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: run the same command again to continue
PROJECT_PACKAGES = ("deinforeg_jax", "launch")


class UserError(ValueError):
  """A command's flags or inputs do not fit (the message says which and how to fix it)."""


class Interrupted(Exception):
  """SIGTERM/SIGINT stopped the command at a safe point; the message says what was saved."""


class Stopped(KeyboardInterrupt):
  """SIGTERM/SIGINT raised where the command is (``launch.cli.stop_on_signals``), so that its
  clean-up (``finally``, ``except BaseException``) runs as it does for Ctrl-C."""

  def __init__(self, signal_name: str):
    super().__init__(f"{signal_name} received")
    self.signal_name = signal_name


def one_line(error: BaseException, stopped_note: str = "") -> tuple[str | None, int]:
  """``(message, exit code)`` of an error the user can act on; ``(None, 1)`` for a bug (and for
  ``SystemExit``, which exits as it is).  ``stopped_note``: what a ``Stopped`` command leaves
  behind, said after "stopped before finishing"."""
  if isinstance(error, Interrupted):  # a grid or a run (``preemption.Preempted``) stopped
    return str(error), EXIT_PREEMPTED
  if isinstance(error, Stopped):
    note = f": {stopped_note}" if stopped_note else ""
    return (
      f"{error.signal_name} received: stopped before finishing{note}. Run the same command "
      "again.", EXIT_PREEMPTED,
    )
  if isinstance(error, KeyboardInterrupt):  # a second SIGINT while training
    return (
      f"{error or 'SIGINT received'}; what no checkpoint holds is lost. Run the same command "
      "again to continue from the last checkpoint.", EXIT_PREEMPTED,
    )
  if isinstance(error, SystemExit):
    return None, EXIT_ERROR
  if _is_project_error(error):
    return str(error), EXIT_ERROR
  if isinstance(error, OSError):
    from deinforeg_jax import workdir_lock  # pylint: disable=import-outside-toplevel

    if error.errno in workdir_lock.DISK_ERRNOS and error.filename:
      return str(workdir_lock.write_error(error.filename, error)), EXIT_ERROR
    return str(error), EXIT_ERROR
  return None, EXIT_ERROR


def _is_project_error(error: BaseException) -> bool:
  """Raised as one of this project's public error classes (not a library's or Python's)."""
  kind = type(error)
  return kind.__module__.split(".")[0] in PROJECT_PACKAGES and not kind.__name__.startswith("_")
