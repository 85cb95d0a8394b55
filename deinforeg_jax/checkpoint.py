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

import os
from typing import Any

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
  """The checkpoint in the workdir does not fit the model or data being trained."""


def _shapes(tree) -> dict[str, list[int]]:
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")
  return {path: list(np.shape(value)) for path, value in flat.items()}


def parameter_shapes(params) -> dict[str, list[int]]:
  """``{"block_00/encoder/VGGStage_0/.../kernel": [3, 3, 1, 32], ...}``."""
  return _shapes(params)


def make_metadata(config, state, info, **bookkeeping) -> dict[str, Any]:
  """JSON-able description of a checkpoint (see the module docstring)."""
  shapes = parameter_shapes(state.params)
  blocks = sorted({path.split("/")[0] for path in shapes if path.startswith("block_")})
  return {
    "step": int(state.step),
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
    },
    "config": config.to_dict(),
    **bookkeeping,
  }


def check_compatible(saved: dict[str, Any], expected: dict[str, Any], directory: str) -> None:
  """Raise ``CheckpointMismatchError`` naming the first block/shape or dataset field that differs."""
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


class RunCheckpointer:
  """A ``CheckpointManager`` in ``<workdir>/checkpoints`` that keeps ``keep`` steps."""

  def __init__(self, workdir: str, *, keep: int = 2, use_async: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      create=True,
      cleanup_tmp_directories=True,
      enable_async_checkpointing=use_async,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state, metadata: dict[str, Any]) -> None:
    """Save ``state`` at ``metadata["step"]`` (asynchronously when enabled)."""
    self._manager.save(
      metadata["step"],
      force=True,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(flax.serialization.to_state_dict(state)),
        metadata=ocp.args.JsonSave(metadata),
      ),
    )

  def restore(self, state, expected_metadata: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The latest checkpoint restored into ``state``'s structure and shardings.

    Raises:
      CheckpointMismatchError: the saved model/dataset differs from ``expected_metadata``.
    """
    step = self._manager.latest_step()
    saved = self._manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))
    metadata = saved["metadata"]
    check_compatible(metadata, expected_metadata, self.directory)
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
    )
    return flax.serialization.from_state_dict(state, restored["state"]), metadata

  def wait(self) -> None:
    """Block until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _reader(workdir: str) -> tuple[ocp.CheckpointManager, int]:
  """A read-only manager of ``workdir``'s checkpoints and its latest step."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "metadata": ocp.JsonCheckpointHandler()}
  options = ocp.CheckpointManagerOptions(create=False)  # and never saves
  if os.path.isdir(directory):
    reader = ocp.CheckpointManager(directory, options=options, item_handlers=handlers)
    step = reader.latest_step()
    if step is not None:
      return reader, step
    reader.close()
  raise FileNotFoundError(f"no checkpoint in {directory}")


def read_metadata(workdir: str) -> dict[str, Any]:
  """The metadata of ``workdir``'s latest checkpoint (``make_metadata``; nothing is written).

  Raises:
    FileNotFoundError: ``workdir`` holds no checkpoint.
  """
  reader, step = _reader(workdir)
  with reader:
    return reader.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))[
      "metadata"
    ]


def read_variables(workdir: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """Partial restore of ``workdir``'s latest checkpoint (nothing there is written).

  Reads only ``params`` and ``batch_stats`` (as host arrays; not the optimizer
  state) and the metadata.  Returns ``(variables, metadata)``.

  Raises:
    FileNotFoundError: ``workdir`` holds no checkpoint.
  """
  reader, step = _reader(workdir)
  with reader:
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
  variables = dict(restored["state"])
  variables.setdefault("batch_stats", {})
  return variables, restored["metadata"]
