"""The decoupled stack, its end-to-end twin, and the stacks that take new input features.

``DecoupledStack`` holds N blocks under ``block_00``, ``block_01``, ...; each
block is encoder + projector + classifier, and block ``k+1`` receives
``stop_gradient(h_k)``, so block ``k``'s loss reaches only block ``k``'s
parameters (arXiv 2506.18193, the decoupled paradigm).  ``BackpropNet`` runs the
same encoders end to end (no ``stop_gradient``) followed by one head.  Parameter
names are shared, so a grown stack is a superset of the old one.  This module
holds modules only; ``models.create_model`` builds them from a config.

Shapes: input ``x`` ``[B, H, W, C]`` (vision) or ``tokens`` int32 ``[B, T]``
(text); per block ``z`` ``[B, D]`` and ``logits`` ``[B, num_classes]``.
A text stack's ``block_00`` is the embedding block (identity projector, no
classifier; its ``z`` goes to ``outputs["extra_z"]``).  Block outputs ``h`` and ``z`` are in
the compute dtype (``model.dtype``: bf16 under mixed precision), ``logits`` float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deinforeg_jax.modules import heads, vision
from deinforeg_jax.modules.layers import DEFAULT_CONVENTIONS, Conventions
from deinforeg_jax.config_error import ConfigError

EncoderFactory = Callable[..., nn.Module]  # called with ``name=`` only


def block_name(index: int) -> str:
  """Stable parameter-collection name of block ``index``: ``block_00``, ..."""
  return f"block_{index:02d}"


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """How to build one block: an encoder factory plus head settings (``conventions``: the heads')."""

  encoder: EncoderFactory
  projector: tuple[int, ...]
  classifier_mode: str = "merge"
  classifier_style: str = "bn_relu"
  classifier_hidden: tuple[int, ...] = ()
  pool: Callable[[Any], jax.Array] = vision.flatten
  has_classifier: bool = True  # False: the text embedding block (its z is an ``extra_z``)
  conventions: Conventions = DEFAULT_CONVENTIONS


class Block(nn.Module):
  """encoder -> pool -> projector -> classifier.  Returns ``(h, z, logits)``.

  ``logits`` is None for a block without classifier.
  """

  spec: BlockSpec
  num_classes: int

  @nn.compact
  def __call__(self, x: Any, train: bool) -> tuple[Any, jax.Array, jax.Array]:
    h = self.spec.encoder(name="encoder")(x, train)
    u = self.spec.pool(h)
    z = heads.MLP(self.spec.projector, self.spec.conventions, name="projector")(u, train)
    if not self.spec.has_classifier:
      return h, z, None
    classifier_input = z if self.spec.classifier_mode == "merge" else jax.lax.stop_gradient(u)
    logits = heads.BlockClassifier(
      self.num_classes,
      self.spec.classifier_mode,
      self.spec.classifier_style,
      self.spec.classifier_hidden,
      self.spec.conventions,
      name="classifier",
    )(classifier_input, train)
    return h, z, logits


def _run_blocks(
  blocks: Sequence[BlockSpec],
  num_classes: int,
  x: Any,
  train: bool,
  first_block: int = 0,
  frozen_blocks: Sequence[int] = (),
) -> tuple[dict[str, list[jax.Array]], Any, list[Block]]:
  """The block loop of every decoupled stack; call it inside a compact ``__call__``.

  Block ``first_block + i`` reads ``stop_gradient`` of the previous block's ``h``;
  frozen blocks run in inference mode.  Returns ``(outputs, stop_gradient(h_last),
  modules)``: ``outputs["z"]``/``["logits"]`` per exit, ``["extra_z"]`` for blocks
  without a classifier.
  """
  outputs: dict[str, list[jax.Array]] = {"z": [], "logits": []}
  modules = []
  for i, spec in enumerate(blocks):
    index = first_block + i
    block = Block(spec, num_classes, name=block_name(index))
    h, z, logits = block(x, train and index not in frozen_blocks)
    if logits is None:
      outputs.setdefault("extra_z", []).append(z)
    else:
      outputs["z"].append(z)
      outputs["logits"].append(logits)
    modules.append(block)
    x = jax.lax.stop_gradient(h)
  return outputs, x, modules


class DecoupledStack(nn.Module):
  """Blocks ``first_block, first_block + 1, ...`` with ``stop_gradient`` at every boundary.

  ``__call__`` returns ``{"z": [z_0..], "logits": [..]}``, one entry per block with
  a classifier (an *exit*); blocks without a classifier (the text embedding block)
  put their ``z`` in ``outputs["extra_z"]``.  Blocks listed in ``frozen_blocks``
  run in inference mode (BatchNorm uses and keeps its running statistics), as the
  frozen old blocks of a grown stack.  With ``with_carry`` (a pipeline stage,
  ``first_block`` > 0 allowed) ``outputs["carry"]`` is ``stop_gradient(h_last)``,
  the next stage's input.
  """

  blocks: Sequence[BlockSpec]
  num_classes: int
  frozen_blocks: Sequence[int] = ()
  first_block: int = 0
  with_carry: bool = False

  @nn.compact
  def __call__(self, x: Any, train: bool) -> dict[str, Any]:
    outputs, h, _ = _run_blocks(
      self.blocks, self.num_classes, x, train, self.first_block, self.frozen_blocks
    )
    if self.with_carry:
      outputs["carry"] = h
    return outputs


class BackpropNet(nn.Module):
  """The same encoders without gradient cuts, then one head (end-to-end BP).

  Parameters live under ``block_XX/encoder`` and ``head``.  Returns
  ``{"logits": [logits]}`` so per-exit code treats it as a one-exit model.
  """

  encoders: Sequence[EncoderFactory]
  head: Callable[[], nn.Module]

  @nn.compact
  def __call__(self, x: Any, train: bool) -> dict[str, list[jax.Array]]:
    for k, make_encoder in enumerate(self.encoders):
      x = _Encoded(make_encoder, name=block_name(k))(x, train)
    return {"logits": [self.head(name="head")(x, train)]}


class _Encoded(nn.Module):
  """Scope wrapper so a BP encoder's parameters sit at ``block_XX/encoder``."""

  make_encoder: EncoderFactory

  @nn.compact
  def __call__(self, x: Any, train: bool) -> Any:
    return self.make_encoder(name="encoder")(x, train)


class VGGHead(nn.Module):
  """The BP VGG head of the reference code: Flatten -> Dense(hidden) -> ReLU -> Dense(C)."""

  hidden: int
  num_classes: int
  conventions: Conventions = DEFAULT_CONVENTIONS

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> jax.Array:
    del train
    x = nn.relu(self.conventions.dense(vision.flatten(h), self.hidden))
    return self.conventions.logits(x, self.num_classes)


class ResNetHead(nn.Module):
  """The BP ResNet head of the reference code: global average pool -> Dense(C)."""

  num_classes: int
  conventions: Conventions = DEFAULT_CONVENTIONS

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> jax.Array:
    del train
    return self.conventions.logits(jnp.mean(h, axis=(1, 2)), self.num_classes)


# ------------------------------------------------------------------ new input features


def split_input(x: jax.Array, axis: int, at: int) -> tuple[jax.Array, jax.Array]:
  """``x`` (``[B, H, W, C]`` or tokens ``[B, T]``) cut at ``at`` along ``axis``."""
  return jax.lax.slice_in_dim(x, 0, at, axis=axis), jax.lax.slice_in_dim(
    x, at, x.shape[axis], axis=axis
  )


class FeatureBlock(nn.Module):
  """A block over the old top block's output and new input features.

  ``side_encoder(x_new)`` is average-pooled to ``h_old``'s spatial size and
  concatenated with ``h_old`` along channels; then encoder -> pool -> projector
  -> classifier as in ``Block``, whose parameters share this scope
  (``block_NN/{side_encoder, encoder, projector, classifier}``).  Returns
  ``(h, z, logits)``.
  """

  spec: BlockSpec
  side_encoder: Any  # encoder factory or None
  num_classes: int

  def setup(self):
    if self.side_encoder is not None:
      self.side = self.side_encoder(name="side_encoder")
    self.block = Block(self.spec, self.num_classes)
    nn.share_scope(self, self.block)

  def __call__(self, h_old: jax.Array, x_new: jax.Array, train: bool):
    side = x_new if self.side_encoder is None else self.side(x_new, train)
    (bh, bw), (sh, sw) = h_old.shape[1:3], side.shape[1:3]
    if sh % bh or sw % bw:
      raise ConfigError(
        f"new features of spatial size {(sh, sw)} cannot be pooled to the old top block's "
        f"{(bh, bw)}: change config.grow.side_encoder (add or remove 'M') or grow.side_split."
      )
    side = nn.avg_pool(side, (sh // bh, sw // bw), strides=(sh // bh, sw // bw))
    return self.block(jnp.concatenate([h_old, side], axis=-1), train)


class TextFeatureBlock(nn.Module):
  """The reference code's ``LSTM_DeInfoReg_side`` for text: one more LSTM/Transformer block over old outputs and new tokens.

  The old top block's sequence ``[B, a, D]`` (a BiLSTM's ``[fwd ; bwd]`` split
  into its two halves, which are placed one after the other in time, as the
  reference) is concatenated in time with the frozen embedding of the new tokens
  ``[B, b, E]``; real tokens are then moved to the front in order (so the
  "masked" BiLSTM sees one contiguous sequence) unless ``keep_order`` (the
  reference: under ``lstm_padding="read"`` the padding is read where it lies).
  The new BiLSTM starts from a zero state, or with ``start_from_old`` from the old
  top BiLSTM's final ``(c, h)`` (``grow.side_lstm_state="old_top"``, the reference).
  """

  spec: BlockSpec
  num_classes: int
  keep_order: bool = False
  start_from_old: bool = False

  def setup(self):
    self.block = Block(self.spec, self.num_classes)
    nn.share_scope(self, self.block)

  def __call__(self, top: dict, new: dict, train: bool):
    width = new["h"].shape[-1]
    h_old, mask_old = top["h"], top["mask"]
    if h_old.shape[-1] == 2 * width:
      parts, masks = [h_old[..., :width], h_old[..., width:]], [mask_old, mask_old]
    elif h_old.shape[-1] == width:
      parts, masks = [h_old], [mask_old]
    else:
      raise ConfigError(
        f"the old top block's width {h_old.shape[-1]} must equal the embedding width {width} "
        "(or twice it for a BiLSTM) to join the new tokens in time: set config.model.hidden "
        "= config.model.emb_dim."
      )
    h = jnp.concatenate(parts + [new["h"]], axis=1)
    mask = jnp.concatenate(masks + [new["mask"]], axis=1)
    if not self.keep_order:
      order = jnp.argsort(~mask, axis=1, stable=True)  # real tokens first, order kept
      h = jnp.take_along_axis(h, order[..., None], axis=1)
      mask = jnp.take_along_axis(mask, order, axis=1)
    state = {"h": h, "mask": mask}
    if self.start_from_old and "carry" in top:
      state["initial"] = top["carry"]
    return self.block(state, train)


class SplitInputStack(nn.Module):
  """Blocks ``0..N-1`` on ``x_old``, plus an optional new-feature block ``N`` on ``x_new``.

  ``x`` is cut by ``split_input(x, *split)``.  Same outputs and parameter names as
  ``DecoupledStack``.
  """

  blocks: Sequence[BlockSpec]
  num_classes: int
  split: tuple[int, int]
  side: BlockSpec | None = None
  side_encoder: Any = None
  frozen_blocks: Sequence[int] = ()
  text: bool = False
  keep_order: bool = False  # text: TextFeatureBlock's
  start_from_old: bool = False  # text: TextFeatureBlock's

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> dict[str, list[jax.Array]]:
    x_old, x_new = split_input(x, *self.split)
    outputs, h, blocks = _run_blocks(
      self.blocks, self.num_classes, x_old, train, frozen_blocks=self.frozen_blocks
    )
    if self.side is not None:
      name = block_name(len(self.blocks))
      if self.text:  # the new tokens through the (frozen) embedding block
        new = jax.lax.stop_gradient(blocks[0](x_new, False)[0])
        feature_block = TextFeatureBlock(
          self.side, self.num_classes, self.keep_order, self.start_from_old, name=name
        )
        _, z, logits = feature_block(h, new, train)
      else:
        feature_block = FeatureBlock(self.side, self.side_encoder, self.num_classes, name=name)
        _, z, logits = feature_block(h, x_new, train)
      outputs["z"].append(z)
      outputs["logits"].append(logits)
    return outputs


