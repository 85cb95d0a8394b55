"""What every launcher shares: the ``--config`` flag, SIGTERM/SIGINT, and one error boundary.

``run`` runs a launcher's ``main`` behind ``guarded``: an error the user can act on exits with
one line and exit code 1 or 75, a bug keeps its traceback (``deinforeg_jax.user_errors`` says
which is which); ``--verbose`` prints the traceback of a user error too.

This module imports only absl, ml_collections and ``user_errors`` (the standard library), so a
launcher can install the signal handlers (``remember_signals``) before its slow imports.
docs/design.md, "Errors and exit codes".
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from deinforeg_jax import user_errors

DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_signals: list[str] = []  # names of the signals remembered by ``remember_signals``

flags.disclaim_key_flags()  # the flags defined here belong to the launcher that asks for them


# ------------------------------------------------------------------ signals


def remember_signals() -> None:
  """SIGTERM/SIGINT are remembered (``pending_signal``), not fatal, until the command installs
  handlers of its own (``train.train_and_evaluate`` does, and restores these after)."""

  def remember(signum, frame):
    del frame
    _signals.append(signal.Signals(signum).name)

  for sig in SIGNALS:
    signal.signal(sig, remember)


def pending_signal() -> str | None:
  """The first signal ``remember_signals`` caught (None: none arrived)."""
  return _signals[0] if _signals else None


def stop_on_signals() -> None:
  """SIGTERM/SIGINT raise ``user_errors.Stopped`` wherever the command is."""

  def stop(signum, frame):
    del frame
    raise user_errors.Stopped(signal.Signals(signum).name)

  for sig in SIGNALS:
    signal.signal(sig, stop)


# ------------------------------------------------------------------ flags


def define_config(name: str = "config", default: str | None = DEFAULT_CONFIG, **kwargs) -> None:
  """``config_flags.DEFINE_config_file``; an unknown ``--<name>.<field>`` in ``sys.argv``
  (applied here, at definition) exits with one line."""
  try:
    config_flags.DEFINE_config_file(name, default, **kwargs)
  except (AttributeError, KeyError) as error:
    _exit_with(unknown_field(error, sys.argv), user_errors.EXIT_ERROR)


def unknown_field(error: Exception, argv: list[str]) -> str:
  """One line for ml_collections' error on a ``--config.<field>`` that does not exist, e.g.
  ``KeyError('\\'trian\\'\\nDid you mean "train" instead of "trian"?')``."""
  while error.args and isinstance(error.args[0], Exception):  # AttributeError(KeyError(...))
    error = error.args[0]
  text = str(error.args[0]) if error.args else str(error)
  first, _, hint = text.partition("\n")
  field = first.strip("'\" ")
  given = [a.split("=")[0].lstrip("-") for a in argv[1:] if "." in a.split("=")[0]]
  flag = next((g for g in given if field in g.split(".")[1:]), ", ".join(given) or "a flag")
  hint = " ".join(hint.split())
  return (
    f"--{flag}: the config has no field {field!r}." + (f" {hint}" if hint else "")
    + " The fields and their defaults are in launch/configs/default.py."
  )


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, each mistake in one line (``app.run``'s ``flags_parser``)."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:  # ml_collections: a --config.<field> not in it
    _exit_with(unknown_field(error, argv), user_errors.EXIT_ERROR)
  except flags.Error as error:
    _exit_with(f"{error}. See --helpfull for the flags.", user_errors.EXIT_ERROR)


# ------------------------------------------------------------------ the error boundary


def run(main, *, on_signal: str = "stop", stopped_note: str = "") -> None:
  """``app.run(main)`` behind the error boundary (``guarded``; exit codes: ``user_errors``).

  ``on_signal``: ``"remember"`` (the command saves at safe points and reads
  ``pending_signal``) or ``"stop"`` (``user_errors.Stopped`` is raised at once).
  """
  (remember_signals if on_signal == "remember" else stop_on_signals)()
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "On an error, print its traceback too.")
  checked = guarded(main, stopped_note)

  def checked_then_done(argv: list[str]):
    code = checked(argv)
    for sig in SIGNALS:  # done: a signal from now on cannot leave anything unsaved
      signal.signal(sig, signal.SIG_IGN)  # (Python restores SIG_DFL for its handlers at exit)
    if pending_signal():
      print(f"{pending_signal()} received after the work completed: nothing was left to save.")
    return code

  app.run(checked_then_done, flags_parser=parse_flags)


def guarded(main, stopped_note: str = ""):
  """``main`` whose user errors exit with one line (``user_errors.one_line``); ``stopped_note``:
  what a ``Stopped`` command leaves behind, said after "stopped before finishing"."""

  @functools.wraps(main)
  def guarded_main(argv: list[str]):
    try:
      code = main(argv)
    except BaseException as error:  # pylint: disable=broad-except
      message, code = user_errors.one_line(error, stopped_note)
      if message is None:
        raise  # a bug (its traceback), or absl's UsageError / SystemExit as they were
      if code == user_errors.EXIT_ERROR and "verbose" in flags.FLAGS and flags.FLAGS.verbose:
        traceback.print_exc()
      _exit_with(message, code)
    return code

  return guarded_main


def _exit_with(message: str, code: int) -> None:
  stream = sys.stdout if code == user_errors.EXIT_PREEMPTED else sys.stderr
  prefix = "" if code == user_errors.EXIT_PREEMPTED else "error: "
  print(f"{prefix}{message}", file=stream, flush=True)
  sys.exit(code)
