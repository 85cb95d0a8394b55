"""The decoupled stack and its end-to-end twin.

``DecoupledStack`` holds N blocks under ``block_00``, ``block_01``, ...; each
block is encoder + projector + classifier, and block ``k+1`` receives
``stop_gradient(h_k)``, so block ``k``'s loss reaches only block ``k``'s
parameters.  ``BackpropNet`` runs the same encoders end to end (no
``stop_gradient``) followed by the SPEC BP head.  Both are built from a config by
``build_model``; parameter names are shared, so a grown stack is a superset of
the old one.

Shapes: input ``x`` ``[B, H, W, C]`` (vision) or ``tokens`` int32 ``[B, T]``
(text); per block ``z`` ``[B, D]`` and ``logits`` ``[B, num_classes]``.

Text (``config.model.arch`` "lstm" | "transformer", SPEC 4.3/4.4): ``block_00`` is
the embedding block (identity projector, no classifier; its ``z`` goes to
``outputs["extra_z"]``), followed by ``config.model.num_blocks`` BiLSTM or
Transformer blocks ``block_01 ..`` with identity projectors and ``Tanh-Dense(C)``
classifiers.  ``num_blocks`` therefore counts the exits, for vision and text.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from deinforeg_jax.modules import heads, text, vision

EncoderFactory = Callable[..., nn.Module]  # called with ``name=`` only


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """How to build one block: an encoder factory plus head settings."""

  encoder: EncoderFactory
  projector: tuple[int, ...]
  classifier_mode: str = "merge"
  classifier_style: str = "bn_relu"
  classifier_hidden: tuple[int, ...] = ()
  pool: Callable[[Any], jax.Array] = vision.flatten
  has_classifier: bool = True  # False: the text embedding block (its z is an ``extra_z``)


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
    z = heads.MLP(self.spec.projector, name="projector")(u, train)
    if not self.spec.has_classifier:
      return h, z, None
    classifier_input = z if self.spec.classifier_mode == "merge" else jax.lax.stop_gradient(u)
    logits = heads.BlockClassifier(
      self.num_classes,
      self.spec.classifier_mode,
      self.spec.classifier_style,
      self.spec.classifier_hidden,
      name="classifier",
    )(classifier_input, train)
    return h, z, logits


class DecoupledStack(nn.Module):
  """N blocks with ``stop_gradient`` at every boundary.

  ``__call__`` returns ``{"z": [z_0..z_{N-1}], "logits": [..]}``, one entry per
  block with a classifier (an *exit*); blocks without a classifier (the text
  embedding block) put their ``z`` in ``outputs["extra_z"]`` instead.
  Blocks listed in ``frozen_blocks`` always run in inference mode (BatchNorm
  uses and keeps its running statistics), as frozen old blocks of a grown stack.
  """

  blocks: Sequence[BlockSpec]
  num_classes: int
  frozen_blocks: Sequence[int] = ()

  @nn.compact
  def __call__(self, x: Any, train: bool) -> dict[str, list[jax.Array]]:
    outputs: dict[str, list[jax.Array]] = {"z": [], "logits": []}
    for k, spec in enumerate(self.blocks):
      block_train = train and k not in self.frozen_blocks
      h, z, logits = Block(spec, self.num_classes, name=block_name(k))(x, block_train)
      if logits is None:
        outputs.setdefault("extra_z", []).append(z)
      else:
        outputs["z"].append(z)
        outputs["logits"].append(logits)
      x = jax.lax.stop_gradient(h)
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
  """SPEC BP VGG head: Flatten -> Dense(hidden) -> ReLU -> Dense(C)."""

  hidden: int
  num_classes: int

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> jax.Array:
    del train
    x = nn.relu(nn.Dense(self.hidden)(vision.flatten(h)))
    return nn.Dense(self.num_classes)(x)


class ResNetHead(nn.Module):
  """SPEC BP ResNet head: global average pool -> Dense(C)."""

  num_classes: int

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> jax.Array:
    del train
    return nn.Dense(self.num_classes)(jnp.mean(h, axis=(1, 2)))


def block_name(index: int) -> str:
  """Stable parameter-collection name of block ``index``: ``block_00``, ..."""
  return f"block_{index:02d}"


def parse_vgg_blocks(text: str) -> tuple[tuple[int | str, ...], ...]:
  """``"128,128,M;256,M"`` -> ``((128, 128, "M"), (256, "M"))``; ``"spec"`` -> SPEC 4.1.

  Raises:
    ValueError: naming ``config.model.vgg_blocks`` when the text does not parse.
  """
  if text.strip() == "spec":
    return vision.VGG_SPEC_BLOCKS
  blocks = []
  for chunk in text.split(";"):
    layers: list[int | str] = []
    for item in chunk.split(","):
      item = item.strip()
      if item.upper() == "M":
        layers.append("M")
      elif re.fullmatch(r"[0-9]+", item) and int(item) > 0:
        layers.append(int(item))
      else:
        raise ValueError(
          f"config.model.vgg_blocks={text!r} does not parse at {item!r}: expected "
          "blocks separated by ';', each a ','-separated list of conv widths and 'M' "
          "(max-pool), e.g. '128,128,M;256,M', or 'spec' for the SPEC VGG."
        )
    blocks.append(tuple(layers))
  return tuple(blocks)


def _vgg_encoders(model_cfg) -> list[EncoderFactory]:
  blocks = parse_vgg_blocks(model_cfg.vgg_blocks)
  batch_norm = model_cfg.get("batch_norm", True)
  return [
    functools.partial(vision.VGGStage, layers, model_cfg.width, batch_norm) for layers in blocks
  ]


def _resnet_encoders(model_cfg) -> list[EncoderFactory]:
  depth = int(model_cfg.arch.removeprefix("resnet"))
  unit = "bottleneck" if depth >= 50 else "basic"
  return [
    functools.partial(
      vision.ResNetStage, features, units, 1 if k == 0 else 2, unit, k == 0, model_cfg.width
    )
    for k, (features, units) in enumerate(zip(vision.RESNET_WIDTHS, vision.RESNET_DEPTHS[depth]))
  ]


ARCHITECTURES = {
  "vgg": _vgg_encoders,
  "resnet18": _resnet_encoders,
  "resnet34": _resnet_encoders,
  "resnet50": _resnet_encoders,
}
TEXT_ARCHITECTURES = ("lstm", "transformer")


def _text_encoders(config, vocab_size: int | None) -> list[EncoderFactory]:
  """Embedding + ``config.model.num_blocks`` BiLSTM / Transformer encoder factories.

  Reads ``config.model``: ``emb_dim``, ``hidden`` (LSTM H), ``heads``, ``ff_dim``,
  ``dropout``, ``positional_encoding``, ``embedding_pool``, ``lstm_padding``,
  ``freeze_embedding``; the table has ``vocab_size`` rows (default
  ``config.data.vocab_size``).
  """
  m = config.model
  if not isinstance(m.num_blocks, int) or m.num_blocks < 1:
    raise ValueError(
      f"config.model.num_blocks={m.num_blocks!r} must be a positive integer: the number of "
      f"{m.arch} blocks after the embedding block."
    )
  vocab_size = config.data.vocab_size if vocab_size is None else vocab_size
  factories = [
    functools.partial(
      text.Embedding, vocab_size, m.emb_dim, m.embedding_pool, m.freeze_embedding
    )
  ]
  for k in range(m.num_blocks):
    if m.arch == "lstm":
      factories.append(functools.partial(text.BiLSTM, m.hidden, m.lstm_padding))
    else:
      factories.append(
        functools.partial(
          text.TransformerEncoder, m.heads, m.ff_dim, m.dropout, m.positional_encoding and k == 0
        )
      )
  return factories


def _build_text_model(config, num_classes: int, vocab_size: int | None) -> nn.Module:
  encoders = _text_encoders(config, vocab_size)
  if config.rule == "bp":
    return BackpropNet(tuple(encoders), functools.partial(text.TextHead, num_classes))
  if config.rule in ("scpl", "al"):
    from deinforeg_jax import baselines  # pylint: disable=import-outside-toplevel (cycle)

    head = functools.partial(text.TextHead, num_classes)
    return baselines.build_baseline(config, encoders, num_classes, text_head=head, pool=text.pooled)
  if config.model.classifier_mode != "merge":
    raise ValueError(
      f"config.model.classifier_mode={config.model.classifier_mode!r}: text stacks support "
      "only 'merge' (Tanh-Dense classifier on the pooled vector)."
    )
  if heads.parse_layer_spec(config.model.projector, "model.projector"):
    raise ValueError(
      f"config.model.projector={config.model.projector!r}: text blocks use the identity "
      "projector (SPEC 3.6); set it to ''."
    )
  specs = [BlockSpec(encoders[0], (), pool=text.pooled, has_classifier=False)]
  specs += [BlockSpec(e, (), classifier_style="tanh", pool=text.pooled) for e in encoders[1:]]
  return DecoupledStack(tuple(specs), num_classes)


def build_encoders(model_cfg) -> list[EncoderFactory]:
  """Encoder factories for ``config.model`` (``arch``, ``width``, ``vgg_blocks``)."""
  if model_cfg.arch not in ARCHITECTURES:
    raise ValueError(
      f"config.model.arch={model_cfg.arch!r} is unknown; choose one of "
      f"{sorted(ARCHITECTURES) + list(TEXT_ARCHITECTURES)}."
    )
  return ARCHITECTURES[model_cfg.arch](model_cfg)


def bp_head(model_cfg, num_classes: int) -> Callable[..., nn.Module]:
  """The SPEC BP head factory for a vision ``config.model`` (VGG or ResNet)."""
  if model_cfg.arch == "vgg":
    hidden = vision.scale_width(model_cfg.bp_head_hidden, model_cfg.width)
    return functools.partial(VGGHead, hidden, num_classes)
  return functools.partial(ResNetHead, num_classes)


def build_model(config, num_classes: int, *, vocab_size: int | None = None) -> nn.Module:
  """The model for ``config.rule``: a ``DecoupledStack``, a ``BackpropNet``, or for
  ``scpl`` / ``al`` a ``baselines.SCPLStack`` / ``baselines.ALStack``.

  ``vocab_size`` (text only): rows of the embedding table, default
  ``config.data.vocab_size``.
  """
  model_cfg = config.model
  if model_cfg.arch in TEXT_ARCHITECTURES:
    return _build_text_model(config, num_classes, vocab_size)
  encoders = build_encoders(model_cfg)
  num_blocks = model_cfg.num_blocks
  if not 1 <= num_blocks <= len(encoders):
    raise ValueError(
      f"config.model.num_blocks={num_blocks} is out of range: architecture "
      f"{model_cfg.arch!r} as configured has {len(encoders)} blocks, so use 1..{len(encoders)}."
    )
  encoders = encoders[:num_blocks]
  if config.rule == "bp":
    return BackpropNet(tuple(encoders), bp_head(model_cfg, num_classes))
  if config.rule in ("scpl", "al"):
    from deinforeg_jax import baselines  # pylint: disable=import-outside-toplevel (cycle)

    return baselines.build_baseline(config, encoders, num_classes)
  projector = heads.parse_layer_spec(model_cfg.projector, "model.projector")
  mode = model_cfg.classifier_mode
  if mode not in heads.CLASSIFIER_MODES:
    raise ValueError(
      f"config.model.classifier_mode={mode!r} is unknown; choose one of {heads.CLASSIFIER_MODES}."
    )
  specs = tuple(
    BlockSpec(encoder=e, projector=projector, classifier_mode=mode, classifier_hidden=projector)
    for e in encoders
  )
  return DecoupledStack(specs, num_classes)
