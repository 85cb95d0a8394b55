"""JAX's persistent compilation cache for a run: ``config.train.compile_cache``.

``use(folder)`` points JAX's cache at ``folder`` (``~`` expanded; a ``gs://`` path is passed
as it is; ``""`` turns the cache off) before a run's first compile, and keeps every program:
the minimum compile time is 0 s and the minimum entry size 0 bytes, so the small per-block
programs are kept too, unless JAX's own ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` /
``JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES`` are set.  A rerun (a resume, the next cell of a
grid, the same job again) then reads its compiled programs instead of compiling them.
``train.train_and_evaluate`` calls it after ``jax.distributed`` is initialised.

Multi-host jobs: every process compiles the same programs, so give the processes one shared
folder (a network file system or a bucket) or a folder per host; never a local folder that
only some hosts have.  JAX trusts what it reads there: share it only with users you trust.

``Counter`` counts JAX's cache events (``jax.monitoring``): programs read from the cache and
programs compiled, for the run's log and ``results.json``.
"""

from __future__ import annotations

import os

import jax
from jax.experimental.compilation_cache import compilation_cache

# JAX option -> (its environment variable, the value a run uses when that is unset).
THRESHOLDS = {
  "jax_persistent_cache_min_compile_time_secs": ("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0),
  "jax_persistent_cache_min_entry_size_bytes": ("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", 0),
}
REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
HITS = "/jax/compilation_cache/cache_hits"
_events = {REQUESTS: 0, HITS: 0}  # this process's count, since ``Counter`` was first used


def folder_path(folder: str) -> str | None:
  """Where ``config.train.compile_cache = folder`` puts the cache (None: off)."""
  if not folder:
    return None
  return folder if "://" in folder else os.path.abspath(os.path.expanduser(folder))


def use(folder: str) -> str | None:
  """Use ``folder`` as JAX's persistent compilation cache from now on (``""``: none) and
  return its path.  A different folder than the one in use is opened at the next compile."""
  path = folder_path(folder)
  if jax.config.jax_compilation_cache_dir != path:
    compilation_cache.reset_cache()  # JAX opens its cache once; reopen it at the new folder
    jax.config.update("jax_compilation_cache_dir", path)
  for option, (variable, value) in THRESHOLDS.items():
    if variable not in os.environ:
      jax.config.update(option, value)
  return path


def _count(event: str, **kwargs) -> None:
  del kwargs
  if event in _events:
    _events[event] += 1


class Counter:
  """Programs read from the cache and programs compiled since it was made (this process)."""

  _listening = False

  def __init__(self):
    if not Counter._listening:
      jax.monitoring.register_event_listener(_count)
      Counter._listening = True
    self._start = dict(_events)

  def counts(self) -> dict[str, int]:
    """``{"read": programs loaded from the cache, "compiled": programs compiled}``; with no
    cache in use every program is compiled but neither is counted."""
    requests, hits = (_events[e] - self._start[e] for e in (REQUESTS, HITS))
    return {"read": hits, "compiled": requests - hits}
