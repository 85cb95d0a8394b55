"""Growing a trained stack (SPEC 8) and new-feature blocks (SPEC 9).

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
  Blocks not yet added are not run.  Earlier blocks keep training (the
  reading of SPEC 8 the reference intends), or freeze when a block is added
  with ``grow.freeze_on_add``.  The parameter tree always holds every block, so
  checkpoints and resuming work as for any run.
* **New features** (``grow.side_split``, ``grow.side_layers``): the input is
  split along an axis into the old features ``x_old`` and new features
  ``x_new``.  A stack trained with only ``side_split`` sees ``x_old`` only; grown
  from it with ``side_layers`` it gains block ``N`` whose encoder reads
  ``concat_channels(sg(h_{N-1}), side_encoder(x_new))`` (the side map is
  average-pooled to the old top block's spatial size), while blocks ``0..N-1``
  stay frozen.  Text (SPEC 9's recipe) splits the tokens in time
  (``side_split="time:a"``); the new block is one more LSTM/Transformer block
  (``side_layers="lstm"`` / ``"transformer"``) over the old top block's sequence
  followed in time by the frozen embedding of the new tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from deinforeg_jax import checkpoint, stack
from deinforeg_jax.modules import vision

SPLIT_AXES = {"height": 1, "width": 2, "channels": 3, "time": 1}  # [B, H, W, C] / [B, T]
TEXT_ARCHS = ("lstm", "transformer")


class GrowthMismatchError(ValueError):
  """The checkpoint to grow from does not fit the new model."""


# ------------------------------------------------------------------ schedule and freezing


def parse_schedule(text: str) -> tuple[int, ...]:
  """``"5,10"`` -> ``(5, 10)``: epochs after which one block is added (non-decreasing)."""
  if not text.strip():
    return ()
  try:
    epochs = tuple(int(e) for e in text.split(","))
  except ValueError:
    epochs = ()
  if not epochs or any(e < 1 for e in epochs) or list(epochs) != sorted(epochs):
    raise ValueError(
      f"config.grow.schedule={text!r} must be non-decreasing positive epochs separated by ',' "
      "(e.g. '5,10' adds one block after 5 and one after 10 epochs), or '' for none."
    )
  return epochs


def phase(config, model: nn.Module, epoch: int, num_old: int) -> tuple[int, tuple[int, ...]]:
  """``(num_active, frozen)`` in (0-based) ``epoch``: how many of ``model.blocks`` run and
  which block indices keep their values (restored old blocks unless ``grow.train_old``;
  with ``grow.freeze_on_add`` every block that existed before the latest addition; the
  blocks not added yet)."""
  if not hasattr(model, "frozen_blocks"):  # BP and other one-piece models never grow
    return 0, ()
  schedule = parse_schedule(config.grow.schedule)
  added = sum(epoch >= e for e in schedule)
  num_active = len(model.blocks) - len(schedule) + added
  frozen = set() if config.grow.train_old else set(range(num_old))
  if config.grow.freeze_on_add and added:
    frozen |= set(range(num_active - 1))
  frozen |= set(range(num_active, len(model.blocks)))  # not added yet: no weight decay either
  return num_active, tuple(sorted(frozen))


def phase_model(model: nn.Module, num_active: int, frozen: Sequence[int]) -> nn.Module:
  """``model`` with its first ``num_active`` blocks, ``frozen`` ones in inference mode."""
  if not hasattr(model, "frozen_blocks"):
    return model
  return model.clone(blocks=tuple(model.blocks[:num_active]), frozen_blocks=tuple(frozen))


def block_names(indices: Sequence[int]) -> frozenset[str]:
  return frozenset(stack.block_name(k) for k in indices)


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


# ------------------------------------------------------------------ new-feature blocks


def split_input(x: jax.Array, axis: int, at: int) -> tuple[jax.Array, jax.Array]:
  """``x`` (``[B, H, W, C]`` or tokens ``[B, T]``) cut at ``at`` along ``axis``."""
  return jax.lax.slice_in_dim(x, 0, at, axis=axis), jax.lax.slice_in_dim(
    x, at, x.shape[axis], axis=axis
  )


def parse_split(text: str) -> tuple[int, int] | None:
  """``"width:4"`` -> ``(2, 4)`` (axis of ``[B, H, W, C]``, cut index), ``"time:100"`` ->
  ``(1, 100)`` (tokens ``[B, T]``); ``""`` -> None."""
  if not text.strip():
    return None
  axis, _, at = text.partition(":")
  if axis not in SPLIT_AXES or not at.isdigit() or int(at) < 1:
    raise ValueError(
      f"config.grow.side_split={text!r} must be '<axis>:<index>' with axis one of "
      f"{sorted(SPLIT_AXES)} and a positive index, e.g. 'width:4' (old features: columns "
      "0..3, new features: the rest), or '' for none."
    )
  return SPLIT_AXES[axis], int(at)


class FeatureBlock(nn.Module):
  """A block over the old top block's output and new input features.

  ``side_encoder(x_new)`` is average-pooled to ``h_old``'s spatial size and
  concatenated with ``h_old`` along channels; then encoder -> pool -> projector
  -> classifier as in ``stack.Block``, whose parameters share this scope
  (``block_NN/{side_encoder, encoder, projector, classifier}``).  Returns
  ``(h, z, logits)``.
  """

  spec: stack.BlockSpec
  side_encoder: Any  # encoder factory or None
  num_classes: int

  def setup(self):
    if self.side_encoder is not None:
      self.side = self.side_encoder(name="side_encoder")
    self.block = stack.Block(self.spec, self.num_classes)
    nn.share_scope(self, self.block)

  def __call__(self, h_old: jax.Array, x_new: jax.Array, train: bool):
    side = x_new if self.side_encoder is None else self.side(x_new, train)
    (bh, bw), (sh, sw) = h_old.shape[1:3], side.shape[1:3]
    if sh % bh or sw % bw:
      raise ValueError(
        f"new features of spatial size {(sh, sw)} cannot be pooled to the old top block's "
        f"{(bh, bw)}: change config.grow.side_encoder (add or remove 'M') or grow.side_split."
      )
    side = nn.avg_pool(side, (sh // bh, sw // bw), strides=(sh // bh, sw // bw))
    return self.block(jnp.concatenate([h_old, side], axis=-1), train)


class TextFeatureBlock(nn.Module):
  """SPEC 9 for text: one more LSTM/Transformer block over old outputs and new tokens.

  The old top block's sequence ``[B, a, D]`` (a BiLSTM's ``[fwd ; bwd]`` split
  into its two halves, which are placed one after the other in time, as the
  reference) is concatenated in time with the frozen embedding of the new tokens
  ``[B, b, E]``; real tokens are then moved to the front in order (so the
  "masked" BiLSTM sees one contiguous sequence).  The new BiLSTM starts from a
  zero state (the reference starts it from the old top block's final state).
  """

  spec: stack.BlockSpec
  num_classes: int

  def setup(self):
    self.block = stack.Block(self.spec, self.num_classes)
    nn.share_scope(self, self.block)

  def __call__(self, top: dict, new: dict, train: bool):
    width = new["h"].shape[-1]
    h_old, mask_old = top["h"], top["mask"]
    if h_old.shape[-1] == 2 * width:
      parts, masks = [h_old[..., :width], h_old[..., width:]], [mask_old, mask_old]
    elif h_old.shape[-1] == width:
      parts, masks = [h_old], [mask_old]
    else:
      raise ValueError(
        f"the old top block's width {h_old.shape[-1]} must equal the embedding width {width} "
        "(or twice it for a BiLSTM) to join the new tokens in time: set config.model.hidden "
        "= config.model.emb_dim."
      )
    h = jnp.concatenate(parts + [new["h"]], axis=1)
    mask = jnp.concatenate(masks + [new["mask"]], axis=1)
    order = jnp.argsort(~mask, axis=1, stable=True)  # real tokens first, order kept
    h = jnp.take_along_axis(h, order[..., None], axis=1)
    mask = jnp.take_along_axis(mask, order, axis=1)
    return self.block({"h": h, "mask": mask}, train)


class SplitInputStack(nn.Module):
  """Blocks ``0..N-1`` on ``x_old``, plus an optional new-feature block ``N`` on ``x_new``.

  Same outputs and parameter names as ``stack.DecoupledStack``.
  """

  blocks: Sequence[stack.BlockSpec]
  num_classes: int
  split: tuple[int, int]
  side: stack.BlockSpec | None = None
  side_encoder: Any = None
  frozen_blocks: Sequence[int] = ()

  text: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, list[jax.Array]]:
    x_old, x_new = split_input(x, *self.split)
    outputs = {"z": [], "logits": []}
    blocks = [
      stack.Block(spec, self.num_classes, name=stack.block_name(k))
      for k, spec in enumerate(self.blocks)
    ]
    h = x_old
    for k, block in enumerate(blocks):
      h, z, logits = block(h, train and k not in self.frozen_blocks)
      if logits is None:  # the text embedding block
        outputs.setdefault("extra_z", []).append(z)
      else:
        outputs["z"].append(z)
        outputs["logits"].append(logits)
      h = jax.lax.stop_gradient(h)
    if self.side is not None:
      name = stack.block_name(len(self.blocks))
      if self.text:  # the new tokens through the (frozen) embedding block
        new = jax.lax.stop_gradient(blocks[0](x_new, False)[0])
        _, z, logits = TextFeatureBlock(self.side, self.num_classes, name=name)(h, new, train)
      else:
        feature_block = FeatureBlock(self.side, self.side_encoder, self.num_classes, name=name)
        _, z, logits = feature_block(h, x_new, train)
      outputs["z"].append(z)
      outputs["logits"].append(logits)
    return outputs


def wrap_model(config, model: nn.Module) -> nn.Module:
  """``model`` adapted to ``config.grow``: a ``SplitInputStack`` when ``grow.side_split``.

  Raises ``ValueError`` naming the ``config.grow`` field for unsupported combinations.
  """
  grow = config.grow
  split = parse_split(grow.side_split)
  parse_schedule(grow.schedule)
  growing = grow.from_workdir or parse_schedule(grow.schedule) or split
  if growing and not isinstance(model, stack.DecoupledStack):
    raise ValueError(
      f"config.grow needs a decoupled vision or text stack; config.rule={config.rule!r} with "
      f"config.model.arch={config.model.arch!r} builds a {type(model).__name__}."
    )
  if grow.side_layers and not split:
    raise ValueError("config.grow.side_layers needs config.grow.side_split (e.g. 'width:4').")
  schedule = parse_schedule(grow.schedule)
  if grow.side_layers and schedule:
    raise ValueError("config.grow.schedule cannot be combined with config.grow.side_layers.")
  if schedule and (
    len(schedule) >= config.model.num_blocks or schedule[-1] >= config.train.num_epochs
  ):
    raise ValueError(
      f"config.grow.schedule={grow.schedule!r} adds {len(schedule)} blocks: it needs "
      f"config.model.num_blocks > {len(schedule)} (now {config.model.num_blocks}; the run "
      f"starts with num_blocks - {len(schedule)}) and every epoch < config.train.num_epochs "
      f"(now {config.train.num_epochs})."
    )
  if split is None:
    return model
  text = config.model.arch in TEXT_ARCHS
  if text != grow.side_split.startswith("time:"):
    raise ValueError(
      f"config.grow.side_split={grow.side_split!r}: text models split along 'time', image "
      f"models along height, width or channels (config.model.arch={config.model.arch!r})."
    )
  if text:
    return _text_split_stack(config, model, split)
  side = side_encoder = None
  if grow.side_layers:
    side = stack.BlockSpec(
      encoder=_vgg_stage(grow.side_layers, "grow.side_layers", config.model.width),
      projector=model.blocks[-1].projector,
      classifier_mode=model.blocks[-1].classifier_mode,
      classifier_hidden=model.blocks[-1].classifier_hidden,
    )
    if grow.side_encoder:
      side_encoder = _vgg_stage(grow.side_encoder, "grow.side_encoder", config.model.width)
  return SplitInputStack(tuple(model.blocks), model.num_classes, split, side, side_encoder)


def _vgg_stage(text: str, field: str, width: float):
  """One VGG stage factory from ``"64,M"``; errors name ``config.<field>``."""
  try:
    (layers,) = stack.parse_vgg_blocks(text)
  except ValueError:
    raise ValueError(
      f"config.{field}={text!r} must be one VGG stage: ','-separated conv widths and 'M' "
      "(max-pool), e.g. '64,M'."
    ) from None
  return functools.partial(vision.VGGStage, layers, width)


def _text_split_stack(config, model, split) -> SplitInputStack:
  """SPEC 9 for text: ``grow.side_layers`` must name the stack's own block kind."""
  grow, side = config.grow, None
  if grow.side_encoder:
    raise ValueError("config.grow.side_encoder is for image models; set it to '' for text.")
  if grow.side_layers:
    if grow.side_layers != config.model.arch:
      raise ValueError(
        f"config.grow.side_layers={grow.side_layers!r}: for text the new-feature block is one "
        f"more block of the stack's kind; set it to {config.model.arch!r}."
      )
    side = model.blocks[-1]
  return SplitInputStack(tuple(model.blocks), model.num_classes, split, side, text=True)
