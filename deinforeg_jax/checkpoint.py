"""Orbax checkpoints of a run: save, keep K, resume exactly, refuse mismatches.

Layout: ``<workdir>/checkpoints/<step>/{state, metadata}``.  ``state`` is the
``TrainState`` as a nested dict (``flax.serialization.to_state_dict``) saved
with ``PyTreeSave``; ``metadata`` is JSON: the config, the dataset name and
sizes, the step, the block count, every parameter's shape, and the run's
bookkeeping (best epoch accuracy, training time).

Training is a pure function of ``(config, state.step)``: the data order and the
augmentation are seeded by ``(seed, epoch, position)`` and the step fixes the
epoch and the position inside it, so restoring the state continues exactly as
an uninterrupted run.

``read_variables`` reads only a run's parameters and BatchNorm statistics
(Orbax partial restore, no optimizer state), to grow a stack from it
(``growth``) or to evaluate it offline (``benchmarks/adaptive_inference.py``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import traceback
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from deinforeg_jax import config_fields, safe_files
from deinforeg_jax.workdir_lock import WorkdirError, write_error
from deinforeg_jax.config_error import ConfigError

class CheckpointMismatchError(ValueError):
  """The checkpoint in the workdir does not fit the model or data being trained."""


class CorruptCheckpointError(RuntimeError):
  """No kept checkpoint of the workdir could be read and verified."""


class CheckpointWriteError(WorkdirError):
  """A checkpoint could not be written (disk full, read-only filesystem, file-size limit...).

  One line: the step folder, the cause, what to do and the last good checkpoint."""


# tensorstore, which writes Orbax's arrays, reports an OS error as a ``ValueError`` that starts
# with a status name and ends with the errno (tensorstore 0.1.86, pinned in requirements.txt):
# 'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "...": Failed writing:
# "<file>": Failed to write 2121443 bytes to file 5: No space left on device [os_error_code='28']'
# (a full filesystem), 'OUT_OF_RANGE: ... File too large [os_error_code='27']' (ulimit -f).
_TENSORSTORE_ERRNO = re.compile(r"\[os_error_code='?(\d+)'?\]")
_TENSORSTORE_FILE = re.compile(r'Failed writing: "([^"]+)"')
# A failed write without an errno, by its status: what that status means for a local file.
_TENSORSTORE_WRITE_STATUS = {"RESOURCE_EXHAUSTED": errno.ENOSPC, "OUT_OF_RANGE": errno.EFBIG}


def _tensorstore_os_error(error: BaseException) -> OSError | None:
  """The ``OSError`` that a tensorstore ``ValueError`` reports (None: not an OS error)."""
  if not isinstance(error, ValueError):
    return None
  text = str(error)
  found = _TENSORSTORE_ERRNO.search(text)
  if found:
    code = int(found.group(1))
  elif "Error writing" in text and text.split(":", 1)[0] in _TENSORSTORE_WRITE_STATUS:
    code = _TENSORSTORE_WRITE_STATUS[text.split(":", 1)[0]]
  else:
    return None
  path = _TENSORSTORE_FILE.search(text)
  return OSError(code, os.strerror(code), path.group(1) if path else None)


def _os_error(error: BaseException) -> OSError | None:
  """The ``OSError`` behind ``error`` (itself, a cause, a context or a group member; or the one
  a tensorstore ``ValueError`` reports)."""
  seen = set()
  todo = [error]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno is not None:
      return e
    reported = _tensorstore_os_error(e)
    if reported is not None:
      return reported
    todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  return None


# ------------------------------------------------------------------ checksums


def _words(x: jax.Array) -> jax.Array:
  """``x``'s bytes as ``uint32`` words (one word per element up to 4 bytes wide)."""
  size = x.dtype.itemsize
  if size in (4, 8):
    return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
  unsigned = {2: jnp.uint16, 1: jnp.uint8}[size]
  return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


# Arrays of at most this many words are summed together, as the zero-padded rows of one matrix:
# XLA:CPU compiles an integer reduction in ~30 ms per distinct shape, and a model has many small
# arrays (biases, norms and their optimizer state), so one reduction for all of them instead of
# one each cuts the compile (the default digits run, optimised: 3.8 -> 2.2 s).
_SMALL_WORDS = 4096
# Word i of an array weighs (_POSITION_MULTIPLIER * i | 1) mod 2**32 (Knuth's multiplicative hash).
_POSITION_MULTIPLIER = 2654435761


@jax.jit
def _checksum_leaves(leaves: list) -> list:
  """Per array: ``Σ_i w_i · (_POSITION_MULTIPLIER·i | 1)`` over its uint32 words, mod 2**32
  (position-weighted, so a changed, swapped or zeroed word changes the sum).  On device."""

  def weighted_words(x):
    words = _words(jnp.asarray(x))
    weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(_POSITION_MULTIPLIER)
    weights = weights | jnp.uint32(1)
    return words * weights

  terms = [weighted_words(x) for x in leaves]
  sums = {i: jnp.sum(t, dtype=jnp.uint32) for i, t in enumerate(terms) if t.size > _SMALL_WORDS}
  small = [i for i, t in enumerate(terms) if t.size <= _SMALL_WORDS]
  if small:
    width = max(terms[i].size for i in small)
    rows = jnp.stack([jnp.pad(terms[i], (0, width - terms[i].size)) for i in small])
    sums.update(zip(small, jnp.sum(rows, axis=1, dtype=jnp.uint32)))
  return [sums[i] for i in range(len(leaves))]


_HOST_CHUNK_WORDS = 1 << 22  # words per numpy pass: bounds the host's temporaries to ~32 MiB


def _host_checksum(x) -> int:
  """``_checksum_leaves``' sum of one array in numpy (uint32 arithmetic wraps mod 2**32).
  Values are first given JAX's dtype for them (without x64: int64 -> int32, float64 ->
  float32), as ``jnp.asarray`` does on the device path."""
  x = np.asarray(x)
  x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)
  unsigned = {8: np.uint32, 4: np.uint32, 2: np.uint16, 1: np.uint8}[x.dtype.itemsize]
  words = np.ascontiguousarray(x).reshape(-1).view(unsigned)
  total = 0
  for start in range(0, words.size, _HOST_CHUNK_WORDS):
    chunk = words[start : start + _HOST_CHUNK_WORDS].astype(np.uint32)
    weights = np.arange(start, start + chunk.size, dtype=np.uint32)
    weights *= np.uint32(_POSITION_MULTIPLIER)
    weights |= np.uint32(1)
    chunk *= weights
    total += int(np.sum(chunk, dtype=np.uint32))
  return total % 2**32


def _on_cpu_host(leaf) -> bool:
  """Whether this process holds every element of ``leaf`` in host memory (a numpy value or
  a fully addressable array on CPU devices)."""
  if not isinstance(leaf, jax.Array):
    return True
  return leaf.is_fully_addressable and all(d.platform == "cpu" for d in leaf.devices())


def checksums(state_dict) -> dict[str, int]:
  """``{"params/block_00/.../kernel": checksum, ...}`` of a state dict (host ints).

  Arrays this process holds in host memory are summed in numpy (no program to compile);
  the others where they live, one program per placement (a pipeline's stages sit on
  different devices; a multi-process job's arrays span processes).  Both give the same sums.
  """
  flat = flax.traverse_util.flatten_dict(state_dict, sep="/")
  sums, groups = {}, {}
  for path, leaf in flat.items():
    if _on_cpu_host(leaf):
      sums[path] = _host_checksum(leaf)
    else:
      groups.setdefault(leaf.sharding, []).append(path)
  for paths in groups.values():
    values = jax.device_get(_checksum_leaves([flat[p] for p in paths]))
    sums.update({p: int(v) for p, v in zip(paths, values)})
  return {path: sums[path] for path in flat}


def fields_added_later(saved_config: dict) -> dict[str, Any]:
  """``{field: value}`` that a run saved with ``saved_config`` had for each field added later
  (``config_fields.AddedLater``: a saved config without the field is read as that value, so
  older workdirs still resume, and a resume that asks for another value is refused by name);
  a vision run has none of the text-only ones."""
  is_text = saved_config.get("data", {}).get("kind") == "text"
  return {
    name: field.added_later.earlier
    for name, field in config_fields.FIELDS.items()
    if field.added_later and (is_text or not field.text_only)
  }


def changed_fields(saved_config: dict, config: dict) -> dict[str, tuple[Any, Any]]:
  """``{field: (saved, now)}`` for the config fields that differ and that a resume may not change
  (all but ``config_fields.Field.resumable``: the model, data, loss, optimizer, schedule,
  epochs and seed make the checkpoint's identity).  A field added later that the saved config
  lacks has its earlier value (``fields_added_later``); a text-only one that a vision run's
  config lacks is not compared."""
  saved = flax.traverse_util.flatten_dict(saved_config, sep=".")
  old = {**fields_added_later(saved_config), **saved}
  new = flax.traverse_util.flatten_dict(config, sep=".")
  changed = {}
  for field in sorted(set(old) | set(new)):
    facts = config_fields.FIELDS.get(field)
    if facts and (facts.resumable or (facts.text_only and facts.added_later and field not in old)):
      continue
    if old.get(field, "<absent>") != new.get(field, "<absent>"):
      changed[field] = (old.get(field, "<absent>"), new.get(field, "<absent>"))
  return changed


def _shapes(tree) -> dict[str, list[int]]:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  return {path: list(np.shape(value)) for path, value in flat.items()}


def parameter_shapes(params) -> dict[str, list[int]]:
  """``{"block_00/encoder/VGGStage_0/.../kernel": [3, 3, 1, 32], ...}``."""
  return _shapes(params)


def make_metadata(config, state, info, **bookkeeping) -> dict[str, Any]:
  """JSON-able description of a checkpoint (see the module docstring); ``state`` may be
  abstract (``jax.eval_shape``), to check a checkpoint before anything is built."""
  shapes = parameter_shapes(state.params)
  blocks = sorted({path.split("/")[0] for path in shapes if path.startswith("block_")})
  return {
    "step": None if isinstance(state.step, jax.ShapeDtypeStruct) else int(state.step),
    "rule": config.rule,
    "num_blocks": len(blocks),
    "parameter_shapes": shapes,
    "optimizer": config.optim.name,
    "optimizer_state_shapes": _shapes(flax.serialization.to_state_dict(state.opt_state)),
    "dataset": {
      "name": info.name,
      "num_train": info.num_train,
      "num_test": info.num_test,
      "input_shape": list(info.input_shape),
      "num_classes": info.num_classes,
      # What a trained model needs to preprocess new inputs without the dataset
      # (``deinforeg_jax.load``); not part of the run's identity (``check_compatible``).
      "kind": info.kind,
      "mean": [float(m) for m in info.mean],
      "std": [float(s) for s in info.std],
      "pixel_max": float(info.pixel_max),
      "class_names": [str(n) for n in info.class_names],
    },
    "config": config.to_dict(),
    **bookkeeping,
  }


# ------------------------------------------------------------------ metadata digest

# The metadata key of the digest below: the arrays are covered by ``checksums``, the metadata
# (config, dataset description, the checksums themselves) by this.  Metadata written before
# 2026-12-07 has none and is read as it is.
METADATA_DIGEST = "metadata_sha256"


def _metadata_digest(metadata: dict[str, Any]) -> str:
  """SHA-256 of ``metadata`` without its digest, as JSON with sorted keys and no spaces (of the
  value as written to and read back from JSON, so that a tuple and its list agree)."""
  body = {k: v for k, v in json.loads(json.dumps(metadata)).items() if k != METADATA_DIGEST}
  canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(canonical.encode()).hexdigest()


def with_metadata_digest(metadata: dict[str, Any]) -> dict[str, Any]:
  """``metadata`` with its ``METADATA_DIGEST``, as ``RunCheckpointer.save`` writes it."""
  return {**metadata, METADATA_DIGEST: _metadata_digest(metadata)}


def verified_metadata(metadata: dict[str, Any], step_dir: str) -> dict[str, Any]:
  """``metadata``, read from ``step_dir``, when it matches its digest (or has none: older).

  Raises:
    CorruptCheckpointError: the metadata was edited or damaged after it was saved.
  """
  saved = metadata.get(METADATA_DIGEST)
  if saved is not None and saved != _metadata_digest(metadata):
    raise CorruptCheckpointError(
      f"the metadata of {step_dir} does not match its saved digest ({METADATA_DIGEST}): it "
      "was edited or damaged after it was saved"
    )
  return metadata


def check_compatible(
  saved: dict[str, Any], expected: dict[str, Any], directory: str, allowed: tuple[str, ...] = ()
) -> dict[str, tuple[Any, Any]]:
  """Raise ``CheckpointMismatchError`` naming the first block/shape or dataset field that
  differs, then every config field of the run's identity that differs and is not in
  ``allowed`` (``config.checkpoint.allow_changed``).  Returns the allowed changes."""
  hint = (
    f"The checkpoint in {directory} was written by a different model or dataset. Use a new "
    "--workdir, or restore the config that wrote it (its config is in the checkpoint's "
    "metadata)."
  )
  if saved["rule"] != expected["rule"]:
    raise CheckpointMismatchError(
      f"checkpoint rule {saved['rule']!r} != config.rule {expected['rule']!r}. {hint}"
    )
  for field in ("name", "num_train", "num_classes", "input_shape"):
    if saved["dataset"][field] != expected["dataset"][field]:
      raise CheckpointMismatchError(
        f"checkpoint dataset {field} {saved['dataset'][field]!r} != current "
        f"{expected['dataset'][field]!r}. {hint}"
      )
  old, new = saved["parameter_shapes"], expected["parameter_shapes"]
  for path in sorted(set(old) | set(new)):
    if old.get(path) != new.get(path):
      block = path.split("/")[0]
      raise CheckpointMismatchError(
        f"block {block!r} does not match the checkpoint: parameter {path!r} has shape "
        f"{old.get(path, 'absent')} in the checkpoint but {new.get(path, 'absent')} in the model "
        f"(checkpoint: {saved['num_blocks']} blocks, model: {expected['num_blocks']}). {hint}"
      )
  if (
    saved["optimizer"] != expected["optimizer"]
    or saved["optimizer_state_shapes"] != expected["optimizer_state_shapes"]
  ):
    raise CheckpointMismatchError(
      f"the optimizer state does not match the checkpoint (checkpoint optimizer "
      f"{saved['optimizer']!r}, config.optim.name {expected['optimizer']!r}). {hint}"
    )
  changes = changed_fields(saved["config"], expected["config"])
  refused = {f: v for f, v in changes.items() if f not in allowed}
  if refused:
    listed = "; ".join(f"config.{f}: saved {o!r}, now {n!r}" for f, (o, n) in refused.items())
    raise CheckpointMismatchError(
      f"the run in {directory} was trained with other settings, so resuming it would not "
      f"continue that run: {listed}. Resume with the saved values, use a new --workdir, or "
      f"accept the change explicitly with --config.checkpoint.allow_changed={','.join(refused)}"
    )
  return changes


def _join_writers(timeout_s: float = 60.0) -> None:
  """Wait (at most ``timeout_s``) for Orbax's writer threads: a synchronous save raises at its
  first failed writer and leaves the others writing into the step's partial folder, which a
  retry in the same process would then collide with."""
  from orbax.checkpoint._src.futures import future  # pylint: disable=import-outside-toplevel

  writer = getattr(future, "_SignalingThread", ())  # () matches nothing if Orbax renames it
  deadline = time.monotonic() + timeout_s
  for thread in threading.enumerate():
    if isinstance(thread, writer) and thread is not threading.current_thread():
      thread.join(max(0.0, deadline - time.monotonic()))


class _QuietWriteErrors(logging.Filter):
  """Drops Orbax's logs of a background save that failed with an OS error (with a traceback
  each, ~30 lines): ``RunCheckpointer`` reports that failure in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not ("orbax" in record.pathname and error is not None and _os_error(error))


_QUIET_WRITE_ERRORS = _QuietWriteErrors()


def _is_abandoned_io_report(unraisable) -> bool:
  """Whether ``sys.unraisablehook`` got a report of Orbax's abandoned reads or writes.

  Orbax runs each save or restore in an asyncio loop of its own that it closes at the first
  failed array; tensorstore then completes the other arrays' operations and hands each
  result to that closed loop ("Event loop is closed", reported with no object), and their
  coroutines, never resumed, are finalised at exit, when Orbax's code in them fails again.
  Reports of nothing else: the failure itself reaches the caller."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return unraisable.object is None
  code = getattr(unraisable.object, "cr_code", None)
  return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


class _QuietAbandonedFutures(logging.Filter):
  """Drops asyncio's "exception was never retrieved" logs of the futures that Orbax abandons
  after an OS error: a traceback through Orbax's code, or none at all (a tensorstore write's
  future, failed in C++; which of the two arrives first varies from run to run)."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    if error is None or _os_error(error) is None:
      return True
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and not any(f"{os.sep}orbax{os.sep}" in f.filename for f in frames)


def _quiet_abandoned_io() -> None:
  """Route ``_is_abandoned_io_report`` reports and ``_QuietAbandonedFutures`` logs nowhere
  (from now on, in this process: they arrive up to its exit); every other report goes to the
  hook there was."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_abandoned_io", False):
    return

  def hook(unraisable) -> None:
    if not _is_abandoned_io_report(unraisable):
      previous(unraisable)

  hook.drops_abandoned_io = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(_QuietAbandonedFutures())


class RunCheckpointer:
  """A ``CheckpointManager`` in ``<workdir>/checkpoints`` that keeps ``keep`` steps.

  Every save records a checksum of each array in the metadata (``checksums``) and a digest of
  the metadata itself (``METADATA_DIGEST``); ``restore`` verifies both and falls back to
  the previous kept step when the latest one cannot be read or verified, moving the bad
  step folder to ``<workdir>/corrupt_checkpoints/`` (nothing is deleted).  ``info`` prints
  notes.

  A save that cannot be written (disk full, read-only filesystem, file-size limit)
  raises ``CheckpointWriteError``: one line naming the step folder, the cause and the
  last good checkpoint, which stays as it was (Orbax removes older steps only after a
  new one is complete); the failed step's partial ``*.orbax-checkpoint-tmp`` folder is
  removed by Orbax when the next run starts (writers of the failed save may still be
  running when the failure is known).  An asynchronous save fails in the background:
  ``check()`` (non-blocking, cheap enough for every step), ``wait()``, the next ``save()``
  and ``close()`` raise it; after a failure every further call raises it again, so a run
  never continues past a failed save without saying so.
  """

  def __init__(
    self, workdir: str, *, keep: int = 2, use_async: bool = True, info: Callable = print
  ):
    if not isinstance(keep, int) or keep < 1:
      raise ConfigError(f"config.checkpoint.keep={keep!r} must be an integer >= 1.")
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, "checkpoints")
    self._info = info
    self._pending: int | None = None  # step of an asynchronous save not known to be on disk
    self._failed: CheckpointWriteError | None = None
    self._use_async = use_async
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=True,
      cleanup_tmp_directories=True,
      enable_async_checkpointing=use_async,
    )
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise WorkdirError(
        errno.ENOTDIR,
        f"cannot create the checkpoint folder {self.directory}: a file has that name; move it "
        "away or use another --workdir",
      )
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as error:  # noqa: BLE001  # an OS error becomes one line, others stay
      cause = _os_error(error)
      if cause is None:
        raise
      raise write_error(self.directory, cause, "create the checkpoint folder") from None
    logging.getLogger("absl").addFilter(_QUIET_WRITE_ERRORS)
    _quiet_abandoned_io()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state, metadata: dict[str, Any]) -> None:
    """Save ``state`` at ``metadata["step"]`` (asynchronously when enabled), with checksums.

    Raises ``CheckpointWriteError`` when this save (synchronous) or the previous one
    (asynchronous) could not be written."""
    self._settle()
    state_dict = flax.serialization.to_state_dict(state)
    metadata = with_metadata_digest({**metadata, "checksums": checksums(state_dict)})
    step = metadata["step"]
    try:
      self._manager.save(
        step,
        force=True,
        args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state_dict),
          metadata=ocp.args.JsonSave(metadata),
        ),
      )
    except Exception as error:  # noqa: BLE001
      raise self._fail(step, error) from None
    self._pending = step
    if not self._use_async:  # written now: a failure is raised by this save
      self._settle()

  def check(self) -> None:
    """Raise ``CheckpointWriteError`` if an asynchronous save has failed; never blocks (a save
    still being written is checked by the next ``check``, ``wait`` or ``save``).  With several
    processes it does nothing: they learn of a failure together, at ``wait`` or ``save``."""
    if self._failed is not None:
      raise self._failed
    if (
      self._pending is not None
      and jax.process_count() == 1
      and not self._manager.is_saving_in_progress()
    ):
      self._settle()

  def _settle(self) -> None:
    """Wait for the pending save; its failure becomes ``CheckpointWriteError``."""
    if self._failed is not None:
      raise self._failed
    try:
      self._manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001
      raise self._fail(self._pending, error) from None
    self._pending = None

  def _fail(self, step: int | None, error: Exception) -> Exception:
    """The ``CheckpointWriteError`` of a failed save at ``step`` (remembered for later calls);
    ``error`` itself if no OS error is behind it."""
    cause = _os_error(error)
    if cause is None:
      return error
    self._pending = None
    try:  # let the save's other writers finish, so that the kept steps are known
      self._manager.wait_until_finished()
    except Exception:  # noqa: BLE001  # the same failure, already in hand
      pass
    _join_writers()
    try:
      self._manager.reload()
      good = self._manager.latest_step()
    except Exception:  # noqa: BLE001
      good = None
    last = (
      f"the last good checkpoint, step {good} in {self.directory}, is kept and the same command "
      "resumes from it once that is fixed"
      if good is not None
      else "no checkpoint of this run was saved before"
    )
    where = os.path.join(self.directory, str(step))
    message = str(write_error(where, cause, f"save the checkpoint of step {step} to"))
    self._failed = CheckpointWriteError(cause.errno, f"{message}. The run stops; {last}.")
    return self._failed

  def check_latest(self, expected_metadata: dict[str, Any], allowed: tuple[str, ...] = ()) -> int:
    """``check_compatible`` against the newest readable metadata, before anything is built;
    returns its step (-1 when none is readable: ``restore`` then reports the damage)."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        metadata = self._metadata(step)
      except Exception:  # noqa: BLE001  # unreadable: restore() sets it aside with a message
        continue
      check_compatible(metadata, expected_metadata, self.directory, allowed)
      return int(metadata["step"])
    return -1

  def restore(
    self, state, expected_metadata: dict[str, Any], allowed: tuple[str, ...] = ()
  ) -> tuple[Any, dict[str, Any], dict[str, tuple[Any, Any]]]:
    """The newest readable, verified checkpoint restored into ``state``'s structure and
    shardings; returns ``(state, metadata, allowed config changes)``.

    Raises:
      CheckpointMismatchError: the saved model/dataset/run differs from ``expected_metadata``.
      CorruptCheckpointError: no kept step could be read and verified.
    """
    failures = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        metadata = self._metadata(step)
      except Exception as error:  # noqa: BLE001  # any unreadable step: try the previous one
        failures.append(self._set_aside(step, error))
        continue
      changes = check_compatible(metadata, expected_metadata, self.directory, allowed)
      try:
        restored = self._restore_verified(step, state, metadata)
      except Exception as error:  # noqa: BLE001
        failures.append(self._set_aside(step, error))
        continue
      return restored, metadata, changes
    raise CorruptCheckpointError(
      f"no checkpoint in {self.directory} could be restored: " + "; ".join(failures) + ". The "
      f"damaged step folders were moved to {self.workdir}/corrupt_checkpoints/; use a new "
      "--workdir or delete the checkpoints folder to start over."
    )

  def _metadata(self, step: int) -> dict[str, Any]:
    metadata = self._manager.restore(
      step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
    )["metadata"]
    return verified_metadata(metadata, os.path.join(self.directory, str(step)))

  def _restore_verified(self, step: int, state, metadata: dict[str, Any]):
    target = flax.serialization.to_state_dict(state)
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target
    )
    restored = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)
        )
      ),
    )["state"]
    _verify_checksums(restored, metadata)
    return flax.serialization.from_state_dict(state, restored)

  def damage(self, step: int) -> str | None:
    """Why ``step``'s parameters and BatchNorm statistics do not read back verified (what
    ``read_variables``, and so ``deinforeg_jax.load``, reads), in one line; None if they do."""
    reader, _ = _reader(self.workdir)
    with reader:
      try:
        _read_variables_at(reader, step)
      except Exception as error:  # noqa: BLE001  # any damage: the caller says what it does
        return _damage(error)
    return None

  def _set_aside(self, step: int, error: Exception) -> str:
    """Move a bad step folder to ``corrupt_checkpoints/`` and say so; returns the reason."""
    source = os.path.join(self.directory, str(step))
    target = os.path.join(self.workdir, "corrupt_checkpoints", str(step))
    reason = f"step folder {source}: {type(error).__name__}: {str(error)[:300]}"
    if jax.process_index() == 0 and os.path.isdir(source):
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(source, target if not os.path.exists(target) else f"{target}.{os.getpid()}")
    self._manager.reload()
    self._info(
      f"WARNING: the checkpoint {reason} cannot be restored; moved it to {target} and trying "
      "the previous kept step."
    )
    return reason

  def wait(self) -> None:
    """Block until pending asynchronous saves are on disk (``CheckpointWriteError`` if one
    failed)."""
    self._settle()

  def close(self) -> None:
    """Finish pending saves and close the manager; a failed save raises
    ``CheckpointWriteError`` unless it was already raised."""
    reported = self._failed is not None
    try:
      if not reported:
        self._settle()
    finally:
      try:
        self._manager.close()
      except Exception:  # noqa: BLE001  # the background error again: already reported
        if not (reported or self._failed is not None):
          raise
      finally:
        logging.getLogger("absl").removeFilter(_QUIET_WRITE_ERRORS)


def _verify_checksums(arrays: dict[str, Any], metadata: dict[str, Any]) -> None:
  """``arrays`` (a state dict, or a part of one: its top-level keys) match the checksums in
  ``metadata`` (none recorded: nothing to check).

  Raises:
    CorruptCheckpointError: naming the first array that differs.
  """
  expected = metadata.get("checksums")
  if expected is None:
    return
  expected = {p: v for p, v in expected.items() if p.split("/")[0] in arrays}
  found = checksums(arrays)
  bad = sorted(path for path in expected if found.get(path) != expected[path])
  if bad or set(found) != set(expected):
    raise CorruptCheckpointError(
      f"array {bad[0] if bad else '(structure)'} does not match its saved checksum"
    )


def _damage(error: Exception) -> str:
  """What is wrong with a step, in one line: the error's type and first line (cut short)."""
  return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


def print_warning(message: str) -> None:
  """``message`` as one ``warning:`` line on stderr."""
  print(f"warning: {message}", file=sys.stderr, flush=True)


def _reader(workdir: str) -> tuple[ocp.CheckpointManager, int]:
  """A read-only manager of ``workdir``'s checkpoints and its latest step."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()}
  options = ocp.CheckpointManagerOptions(create=False)  # and never saves
  _quiet_abandoned_io()  # a damaged step's abandoned reads
  if os.path.isdir(directory):
    reader = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
    step = reader.latest_step()
    if step is not None:
      return reader, step
    reader.close()
  raise FileNotFoundError(f"no checkpoint in {directory}")


def _newest_good(workdir: str, read: Callable, warn: Callable[[str], None]):
  """``read(reader, step)`` of the newest kept step of ``workdir`` for which it succeeds; the
  newer steps it fails for are passed over, saying so in one line through ``warn``.

  Raises:
    FileNotFoundError: ``workdir`` holds no checkpoint.
    CorruptCheckpointError: ``read`` fails for every kept step (one line, each step's cause).
  """
  reader, _ = _reader(workdir)
  passed_over = []
  with reader:
    for step in sorted(reader.all_steps(), reverse=True):
      try:
        result = read(reader, step)
      except Exception as error:  # noqa: BLE001  # a damaged step: try the previous one
        passed_over.append(f"step {step} in {reader.directory}/{step}: {_damage(error)}")
        continue
      if passed_over:
        warn(
          f"the newest checkpoint of {workdir} is damaged ({'; '.join(passed_over)}); read "
          f"step {step}, the newest intact one, instead"
        )
      return result
  raise CorruptCheckpointError(f"no checkpoint of {workdir} is intact: {'; '.join(passed_over)}")


def _read_metadata_at(reader: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  """``step``'s metadata, verified against its digest."""
  metadata = reader.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
  return verified_metadata(metadata["metadata"], os.path.join(str(reader.directory), str(step)))


def _read_variables_at(reader: ocp.CheckpointManager, step: int):
  """``step``'s ``params`` and ``batch_stats`` (host arrays) and metadata, both verified."""
  tree = reader.item_metadata(step)["state"]
  item = {
    key: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), dict(tree[key]))
    for key in ("params", "batch_stats")
    if key in tree
  }
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  restored = reader.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True),
      metadata=ocp.args.JsonRestore(),
    ),
  )
  metadata = verified_metadata(restored["metadata"], os.path.join(str(reader.directory), str(step)))
  variables = dict(restored["state"])
  _verify_checksums(variables, metadata)
  variables.setdefault("batch_stats", {})
  return variables, metadata


def read_metadata(workdir: str, warn: Callable[[str], None] = print_warning) -> dict[str, Any]:
  """The metadata of ``workdir``'s newest checkpoint whose metadata is intact (``make_metadata``;
  nothing is written; a newer damaged one is passed over with a ``warn`` line).

  Raises:
    FileNotFoundError: ``workdir`` holds no checkpoint.
    CorruptCheckpointError: no kept metadata matches its digest.
  """
  return _newest_good(workdir, _read_metadata_at, warn)


def read_variables(
  workdir: str, warn: Callable[[str], None] = print_warning
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Partial restore of ``workdir``'s newest intact checkpoint (nothing there is written).

  Reads only ``params`` and ``batch_stats`` (as host arrays; not the optimizer
  state) and the metadata, and verifies both (checksums, digest).  A newer step that
  cannot be read or verified (a truncated file, say) is passed over, saying so in one
  ``warn`` line (default: to stderr).  Returns ``(variables, metadata)``.

  Raises:
    FileNotFoundError: ``workdir`` holds no checkpoint.
    CorruptCheckpointError: no kept step reads and verifies.
  """
  return _newest_good(workdir, _read_variables_at, warn)


def rewrite_metadata(workdir: str, change: Callable[[dict], dict]) -> list[str]:
  """Replaces the metadata of each kept checkpoint of ``workdir`` that verifies by
  ``change(metadata)`` with its new digest; the arrays are not touched.  Each file is replaced
  atomically (a reader sees the old metadata or the new).  Returns the step folders rewritten
  (a step whose metadata is unreadable or edited is left as it is).

  Raises:
    FileNotFoundError: ``workdir`` holds no checkpoint.
  """
  reader, _ = _reader(workdir)
  rewritten = []
  with reader:
    for step in sorted(reader.all_steps()):
      step_dir = os.path.join(str(reader.directory), str(step))
      try:
        metadata = reader.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
        metadata = verified_metadata(metadata["metadata"], step_dir)
      except (OSError, ValueError, CorruptCheckpointError):
        continue
      # The file JsonCheckpointHandler writes for the item "metadata" (orbax 0.12.8).
      path = os.path.join(step_dir, "metadata", "metadata")
      safe_files.write_atomic(path, json.dumps(with_metadata_digest(change(metadata))))
      rewritten.append(step_dir)
  return rewritten
