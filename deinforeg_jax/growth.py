"""Growing a trained stack: the growth *plan* (arXiv 2506.18193, dynamic extended layers).

Three ways to add blocks, all driven by ``config.grow``:

* **From a trained run** (``grow.from_workdir=OLD``): the old blocks'
  parameters and BatchNorm statistics are read from OLD's Orbax checkpoint
  (partial restore; every array is checked against the new model's shape), the
  new blocks are initialised, and only the new blocks train unless
  ``grow.train_old``.  Frozen blocks run in inference mode (BatchNorm reads its
  running statistics and does not update them), their gradients are cut, and
  the train step keeps their parameters, statistics and optimizer state as they
  were, bit for bit (``keep_frozen``; big_vision-style freezing).
* **During one run** (``grow.schedule="e1,e2,..."``): the run starts with
  ``model.num_blocks - len(schedule)`` blocks and adds one after ``e_i`` epochs.
  Blocks not yet added are not run.  Earlier blocks keep training (the reading
  of the reference code's ``VGG_DeInfoReg_Dynamic``), or freeze when a block is
  added with ``grow.freeze_on_add``.  The parameter tree always holds every
  block, so checkpoints and resuming work as for any run.
* **New features** (``grow.side_split``, ``grow.side_layers``): the model is a
  ``stack.SplitInputStack`` (``models.create_model``); grown from a run trained
  on the old features only, its old blocks are restored and frozen as above.

``make_plan`` computes all of this up front as a ``GrowthPlan``: the phases
(from which epoch which blocks run and which are frozen) and what is restored.
The trainer only applies a phase's model and frozen set; it has no growth logic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import numpy as np
import optax

from deinforeg_jax import checkpoint, stack
from deinforeg_jax.config_error import ConfigError


class GrowthMismatchError(ValueError):
  """The checkpoint to grow from does not fit the new model."""


# ------------------------------------------------------------------ the plan


def parse_schedule(text: str) -> tuple[int, ...]:
  """``"5,10"`` -> ``(5, 10)``: epochs after which one block is added (non-decreasing)."""
  if not text.strip():
    return ()
  try:
    epochs = tuple(int(e) for e in text.split(","))
  except ValueError:
    epochs = ()
  if not epochs or any(e < 1 for e in epochs) or list(epochs) != sorted(epochs):
    raise ConfigError(
      f"config.grow.schedule={text!r} must be non-decreasing positive epochs separated by ',' "
      "(e.g. '5,10' adds one block after 5 and one after 10 epochs), or '' for none."
    )
  return epochs


@dataclasses.dataclass(frozen=True)
class Phase:
  """From epoch ``first_epoch`` on: the model to run and the blocks that keep their values."""

  first_epoch: int
  model: nn.Module  # the full model with only the active blocks, frozen ones in inference mode
  frozen: frozenset[str]  # block names: no gradient, parameters/statistics/optimizer state kept

  @property
  def key(self) -> tuple[int, frozenset[str]]:
    """What tells the phases of one config apart: the active blocks and the frozen ones."""
    return len(getattr(self.model, "blocks", ())), self.frozen


@dataclasses.dataclass(frozen=True)
class GrowthPlan:
  """Every phase of a run (in epoch order) and the run whose blocks are restored first."""

  phases: tuple[Phase, ...]
  restore_from: str = ""  # config.grow.from_workdir

  def at(self, epoch: int) -> Phase:
    """The phase (0-based) ``epoch`` trains in."""
    return [p for p in self.phases if p.first_epoch <= epoch][-1]

  @property
  def final(self) -> Phase:
    return self.phases[-1]

  def restore(self, state):
    """``state`` with the old run's blocks restored (unchanged when nothing is restored)."""
    if not self.restore_from:
      return state
    return restore_old_blocks(state, self.restore_from)[0]


def make_plan(config, model: nn.Module, num_old: int | None = None) -> GrowthPlan:
  """The phases of ``config.grow`` for ``model`` (``models.create_model(config, ...)``).

  In a phase the first ``num_active`` blocks run; frozen are the ``num_old``
  restored blocks (default: the block count of ``grow.from_workdir``'s checkpoint)
  unless ``grow.train_old``, with ``grow.freeze_on_add`` every block that existed
  before the latest addition, and the blocks not added yet.  Models without blocks
  to grow (BP, baselines) have one phase with nothing frozen.
  """
  if not hasattr(model, "frozen_blocks"):
    return GrowthPlan((Phase(0, model, frozenset()),))
  grow = config.grow
  schedule = parse_schedule(grow.schedule)
  if num_old is None:
    num_old = check_growable(grow.from_workdir, model) if grow.from_workdir else 0
  total = len(model.blocks)
  phases = []
  for first_epoch in sorted({0, *schedule}):
    added = sum(first_epoch >= e for e in schedule)
    num_active = total - len(schedule) + added
    frozen = set() if grow.train_old else set(range(num_old))
    if grow.freeze_on_add and added:
      frozen |= set(range(num_active - 1))
    frozen |= set(range(num_active, total))  # not added yet: no weight decay either
    phases.append(freeze(model, num_active, frozen, first_epoch))
  return GrowthPlan(tuple(phases), grow.from_workdir)


def freeze(model: nn.Module, num_active: int, frozen: Sequence[int], first_epoch: int = 0) -> Phase:
  """The phase running ``model``'s first ``num_active`` blocks with ``frozen`` (indices) kept."""
  indices = tuple(sorted(frozen))
  module = model.clone(blocks=tuple(model.blocks[:num_active]), frozen_blocks=indices)
  return Phase(first_epoch, module, frozenset(stack.block_name(k) for k in indices))


def check_growable(workdir: str, model: nn.Module) -> int:
  """The block count of ``workdir``'s latest checkpoint (its metadata only), after checking
  that it is the end of that run and that ``model`` has more blocks.

  Raises:
    FileNotFoundError: ``workdir`` holds no checkpoint.
    GrowthMismatchError: the run was interrupted before its end, or ``model`` adds no block.
  """
  try:
    metadata = checkpoint.read_metadata(workdir)
  except FileNotFoundError as error:
    raise FileNotFoundError(
      f"config.grow.from_workdir={workdir!r}: {error}; point it at a finished training run."
    ) from None
  step, end = metadata["step"], _end_step(metadata)
  if step < end:
    raise GrowthMismatchError(
      f"config.grow.from_workdir={workdir!r} is an interrupted run: its latest checkpoint is "
      f"at step {step} of {end}, so its blocks are not trained yet. Finish it first (run its "
      "command again: it resumes from that checkpoint), then grow from it."
    )
  num_old = metadata["num_blocks"]
  num_new = len(model.blocks) + (getattr(model, "side", None) is not None)
  if num_new <= num_old:
    raise GrowthMismatchError(
      f"config.grow.from_workdir={workdir!r} has {num_old} blocks and the new model "
      f"{num_new}: growing must add a block. Set config.model.num_blocks above {num_old} (or "
      "add a new-feature block with config.grow.side_layers); to train the same blocks "
      "longer, resume that run with a larger config.train.num_epochs instead."
    )
  return num_old


def _end_step(metadata: dict[str, Any]) -> int:
  """The step at which the run that wrote ``metadata`` ends (``run.Run.total_steps``)."""
  saved = metadata["config"]
  per_epoch = metadata["dataset"]["num_train"] // saved["data"]["batch_size"]
  total = per_epoch * saved["train"]["num_epochs"]
  max_steps = saved["train"].get("max_steps", 0)
  return min(total, max_steps) if max_steps else total


# ------------------------------------------------------------------ freezing in the train step


def stop_frozen(params: dict[str, Any], frozen: frozenset[str]) -> dict[str, Any]:
  """``params`` with ``stop_gradient`` on the frozen blocks (their backward pass is skipped)."""
  return {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}


def keep_frozen(
  tx: optax.GradientTransformation, frozen: frozenset[str], old, params, batch_stats, opt_state
):
  """``(params, batch_stats, opt_state)`` with the frozen blocks' entries taken from ``old``.

  The selection is static (Python), so the frozen values are the old ones bit for bit;
  the optimizer state is matched to parameters with ``optax.tree_utils.tree_map_params``.
  """
  if not frozen:
    return params, batch_stats, opt_state
  pick = lambda new, was: {k: was[k] if k in frozen and k in was else v for k, v in new.items()}
  trainable = {k: jax.tree.map(lambda _, t=k not in frozen: t, v) for k, v in old.params.items()}
  use_new = optax.tree_utils.tree_map_params(
    tx,
    lambda _, keep: keep,
    opt_state,
    trainable,
    transform_non_params=lambda v: jax.tree.map(lambda _: True, v),
  )
  opt_state = jax.tree.map(
    lambda keep, new, was: new if keep else was, use_new, opt_state, old.opt_state
  )
  return pick(params, old.params), pick(batch_stats, old.batch_stats), opt_state


# ------------------------------------------------------------------ restoring old blocks


def restore_old_blocks(state, workdir: str):
  """``state`` with every block of ``workdir``'s latest checkpoint restored into it.

  Returns ``(state, num_restored)``.  Raises ``GrowthMismatchError`` naming the
  block when an array's shape (or the block itself) does not fit the new model.
  """
  try:
    old, metadata = checkpoint.read_variables(workdir)
  except FileNotFoundError as error:
    raise FileNotFoundError(
      f"config.grow.from_workdir={workdir!r}: {error}; point it at a finished training run."
    ) from None
  params = flax.core.unfreeze(state.params)
  batch_stats = flax.core.unfreeze(state.batch_stats)
  blocks = sorted(k for k in old["params"] if k.startswith("block_"))
  for name in blocks:
    for key, new_tree in (("params", params), ("batch_stats", batch_stats)):
      saved = old[key].get(name)
      if saved is None:
        continue
      if name not in new_tree:
        raise GrowthMismatchError(
          f"block {name!r} of the checkpoint in {workdir} is not in the new model "
          f"(checkpoint: {metadata['num_blocks']} blocks): set config.model.num_blocks to at "
          "least the old block count."
        )
      _check_shapes(name, key, saved, new_tree[name], workdir)
      new_tree[name] = jax.tree.map(
        lambda x, like: jax.device_put(np.asarray(x, like.dtype), like.sharding),
        saved,
        new_tree[name],
      )
  return state.replace(params=params, batch_stats=batch_stats), len(blocks)


def _check_shapes(name: str, key: str, saved, new, workdir: str) -> None:
  flat_old = flax.traverse_util.flatten_dict(saved, sep="/")
  flat_new = flax.traverse_util.flatten_dict(flax.core.unfreeze(new), sep="/")
  for path in sorted(set(flat_old) | set(flat_new)):
    old_shape = list(flat_old[path].shape) if path in flat_old else "absent"
    new_shape = list(flat_new[path].shape) if path in flat_new else "absent"
    if old_shape != new_shape:
      raise GrowthMismatchError(
        f"cannot grow from {workdir}: block {name!r} does not match the new model: "
        f"{key} '{name}/{path}' has shape {old_shape} in the checkpoint but {new_shape} in "
        "the model. Keep the old blocks' config (model.arch, vgg_blocks, width, projector, "
        "classifier_mode, grow.side_split) and change only model.num_blocks / grow.side_layers."
      )
