"""config -> model: the one factory for every stack the trainer runs.

``create_model(config, num_classes)`` reads ``config.rule``, ``config.model`` and
``config.grow`` and returns a Flax module (modules live in ``stack``,
``baselines`` and ``modules``; this file holds only the config reading):

* ``rule="deinforeg"``: a ``stack.DecoupledStack`` (vision: encoder + projector +
  classifier per block; text: the embedding block, then ``model.num_blocks``
  BiLSTM / Transformer blocks with identity projectors and Tanh-Dense
  classifiers), or a ``stack.SplitInputStack`` when ``grow.side_split`` gives
  the model new input features;
* ``rule="bp"``: a ``stack.BackpropNet`` over the same encoders and the reference
  code's BP head;
* ``rule="scpl" | "al"``: ``baselines.SCPLStack`` / ``baselines.ALStack``.

``model.num_blocks`` counts the exits, for vision and text.  ``model.init`` and
``model.bn_running_var`` choose Flax's or PyTorch's initialisers and BatchNorm
running variance for every layer, ``model.dtype`` and ``model.matmul_precision`` how
every layer computes (``modules.layers.Conventions``).  Every error names the
``config`` field to change.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

import flax.linen as nn

from deinforeg_jax import baselines, stack
from deinforeg_jax.modules import heads, layers, text, vision
from deinforeg_jax.modules.layers import Conventions
from deinforeg_jax.config_error import ConfigError

VISION_ARCHITECTURES = ("vgg", "resnet18", "resnet34", "resnet50")
TEXT_ARCHITECTURES = ("lstm", "transformer")
# Text AL label-code width: model.al_hidden | model.hidden (runs saved before 2026-12-07)
TEXT_AL_WIDTHS = ("al_hidden", "hidden")
SPLIT_AXES = {"height": 1, "width": 2, "channels": 3, "time": 1}  # [B, H, W, C] / [B, T]
SIDE_LSTM_STATES = ("zero", "old_top")  # config.grow.side_lstm_state: ours | the reference's


def parse_vgg_blocks(spec: str) -> tuple[tuple[int | str, ...], ...]:
  """``"128,128,M;256,M"`` -> ``((128, 128, "M"), (256, "M"))``; ``"spec"`` -> the paper's VGG.

  Raises:
    ValueError: naming ``config.model.vgg_blocks`` when the text does not parse.
  """
  if spec.strip() == "spec":
    return vision.VGG_PAPER_BLOCKS
  blocks = []
  for chunk in spec.split(";"):
    layers: list[int | str] = []
    for item in chunk.split(","):
      item = item.strip()
      if item.upper() == "M":
        layers.append("M")
      elif re.fullmatch(r"[0-9]+", item) and int(item) > 0:
        layers.append(int(item))
      else:
        raise ConfigError(
          f"config.model.vgg_blocks={spec!r} does not parse at {item!r}: expected "
          "blocks separated by ';', each a ','-separated list of conv widths and 'M' "
          "(max-pool), e.g. '128,128,M;256,M', or 'spec' for the paper's VGG."
        )
    blocks.append(tuple(layers))
  return tuple(blocks)


def parse_split(spec: str) -> tuple[int, int] | None:
  """``"width:4"`` -> ``(2, 4)`` (axis of ``[B, H, W, C]``, cut index), ``"time:100"`` ->
  ``(1, 100)`` (tokens ``[B, T]``); ``""`` -> None."""
  if not spec.strip():
    return None
  axis, _, at = spec.partition(":")
  if axis not in SPLIT_AXES or not at.isdigit() or int(at) < 1:
    raise ConfigError(
      f"config.grow.side_split={spec!r} must be '<axis>:<index>' with axis one of "
      f"{sorted(SPLIT_AXES)} and a positive index, e.g. 'width:4' (old features: columns "
      "0..3, new features: the rest), or '' for none."
    )
  return SPLIT_AXES[axis], int(at)


# ------------------------------------------------------------------ encoders and heads


def conventions(model_cfg) -> Conventions:
  """``config.model.init``, ``bn_running_var``, ``conv_impl`` (``"auto"`` resolved for the
  default backend, ``layers.resolve_conv_impl``), ``dtype`` and ``matmul_precision`` as a
  ``Conventions``."""
  return Conventions(
    model_cfg.init,
    model_cfg.bn_running_var,
    layers.resolve_conv_impl(model_cfg.conv_impl),
    model_cfg.dtype,
    model_cfg.matmul_precision,
  )


def _vgg_encoders(model_cfg) -> list[stack.EncoderFactory]:
  return [
    functools.partial(
      vision.VGGStage,
      stage,
      model_cfg.width,
      model_cfg.batch_norm,
      conventions=conventions(model_cfg),
    )
    for stage in parse_vgg_blocks(model_cfg.vgg_blocks)
  ]


def _resnet_encoders(model_cfg) -> list[stack.EncoderFactory]:
  depth = int(model_cfg.arch.removeprefix("resnet"))
  unit = "bottleneck" if depth >= 50 else "basic"
  return [
    functools.partial(
      vision.ResNetStage,
      features,
      units,
      1 if k == 0 else 2,
      unit,
      k == 0,
      model_cfg.width,
      conventions=conventions(model_cfg),
    )
    for k, (features, units) in enumerate(zip(vision.RESNET_WIDTHS, vision.RESNET_DEPTHS[depth]))
  ]


def _text_encoders(config, vocab_size: int) -> list[stack.EncoderFactory]:
  """The embedding + ``config.model.num_blocks`` BiLSTM / Transformer encoder factories."""
  m = config.model
  c = conventions(m)
  factories = [
    functools.partial(
      text.Embedding, vocab_size, m.emb_dim, m.embedding_pool, m.freeze_embedding, c
    )
  ]
  for k in range(m.num_blocks):
    if m.arch == "lstm":
      factories.append(
        functools.partial(
          text.BiLSTM, m.hidden, m.lstm_padding, m.lstm_biases, c,
          text.resolve_lstm_remat(m.lstm_remat),
        )
      )
    else:
      factories.append(
        functools.partial(
          text.TransformerEncoder,
          m.heads,
          m.ff_dim,
          m.dropout,
          m.positional_encoding and k == 0,
          conventions=c,
          layer_norm=m.layer_norm,
        )
      )
  return factories


def vision_encoders(model_cfg) -> list[stack.EncoderFactory]:
  """Encoder factories of every block ``config.model`` (``arch``, ``width``, ...) describes."""
  if model_cfg.arch == "vgg":
    return _vgg_encoders(model_cfg)
  return _resnet_encoders(model_cfg)


def bp_head(model_cfg, num_classes: int) -> Callable[..., nn.Module]:
  """The reference code's BP head factory for a vision ``config.model`` (VGG or ResNet)."""
  c = conventions(model_cfg)
  if model_cfg.arch == "vgg":
    hidden = vision.scale_width(model_cfg.bp_head_hidden, model_cfg.width)
    return functools.partial(stack.VGGHead, hidden, num_classes, conventions=c)
  return functools.partial(stack.ResNetHead, num_classes, conventions=c)


def _text_head(model_cfg, num_classes: int) -> Callable[..., nn.Module]:
  return functools.partial(text.TextHead, num_classes, conventions=conventions(model_cfg))


def _baseline(config, encoders, num_classes: int, is_text: bool) -> nn.Module:
  """``SCPLStack`` / ``ALStack`` for ``config.rule``.

  Vision: SCPL's contrastive head is ``model.scpl_projector`` and its final head the
  BP head; AL uses ``al_hidden``, ``al_bridge`` and ``al_activation``.  Text (the
  reference code's NLP variants): every encoder is a block, the embedding included;
  SCPL's contrastive head is the identity and its final head ``text.TextHead``; AL
  uses Tanh layers of width ``model.al_hidden`` (the reference's text AL: 300,
  whatever ``model.hidden``; ``model.text_al_width="hidden"``: ``model.hidden``, as runs
  saved before 2026-12-07 have) and a one-layer bridge.
  """
  m = config.model
  pool = text.pooled if is_text else vision.flatten
  c = conventions(m)
  if config.rule == "scpl":
    if is_text:
      return baselines.SCPLStack(tuple(encoders), _text_head(m, num_classes), (), pool, c)
    projector = heads.parse_layer_spec(m.scpl_projector, "model.scpl_projector")
    return baselines.SCPLStack(tuple(encoders), bp_head(m, num_classes), projector, pool, c)
  if is_text:
    width = m.al_hidden if m.text_al_width == "al_hidden" else m.hidden
    return baselines.ALStack(tuple(encoders), num_classes, width, (), "tanh", pool, c)
  bridge = heads.parse_layer_spec(m.al_bridge, "model.al_bridge")
  return baselines.ALStack(
    tuple(encoders), num_classes, m.al_hidden, bridge, m.al_activation, pool, c
  )


def _block_specs(config, encoders, is_text: bool) -> tuple[stack.BlockSpec, ...]:
  """DeInfoReg blocks: text has an embedding block and identity projectors."""
  m = config.model
  c = conventions(m)
  if is_text:
    if m.classifier_mode != "merge":
      raise ConfigError(
        f"config.model.classifier_mode={m.classifier_mode!r}: text stacks support only "
        "'merge' (Tanh-Dense classifier on the pooled vector)."
      )
    if heads.parse_layer_spec(m.projector, "model.projector"):
      raise ConfigError(
        f"config.model.projector={m.projector!r}: text blocks use the identity projector "
        "(as the reference code's NLP models); set it to ''."
      )
    specs = [
      stack.BlockSpec(encoders[0], (), pool=text.pooled, has_classifier=False, conventions=c)
    ]
    specs += [
      stack.BlockSpec(e, (), classifier_style="tanh", pool=text.pooled, conventions=c)
      for e in encoders[1:]
    ]
    return tuple(specs)
  projector = heads.parse_layer_spec(m.projector, "model.projector")
  return tuple(
    stack.BlockSpec(
      e,
      projector,
      classifier_mode=m.classifier_mode,
      classifier_hidden=projector,
      conventions=c,
    )
    for e in encoders
  )


def create_model(config, num_classes: int, *, vocab_size: int | None = None) -> nn.Module:
  """The model ``config`` describes (module docstring), for ``num_classes`` classes.

  ``vocab_size`` (text only): rows of the embedding table, default
  ``config.data.vocab_size``.

  Raises:
    ValueError: naming the ``config`` field that is out of range or does not parse.
  """
  m = config.model
  is_text = m.arch in TEXT_ARCHITECTURES
  if is_text:
    encoders = _text_encoders(config, config.data.vocab_size if vocab_size is None else vocab_size)
  else:
    encoders = vision_encoders(m)
    if m.num_blocks > len(encoders):
      raise ConfigError(
        f"config.model.num_blocks={m.num_blocks} is out of range: architecture {m.arch!r} as "
        f"configured has {len(encoders)} blocks, so use 1..{len(encoders)}."
      )
    encoders = encoders[: m.num_blocks]
  if config.rule == "bp":
    head = _text_head(m, num_classes) if is_text else bp_head(m, num_classes)
    model = stack.BackpropNet(tuple(encoders), head)
  elif config.rule in baselines.BASELINE_RULES:
    model = _baseline(config, encoders, num_classes, is_text)
  else:
    model = stack.DecoupledStack(_block_specs(config, encoders, is_text), num_classes)
  return _with_new_features(config, model, is_text)


# ------------------------------------------------------------------ growth wrappers


def _with_new_features(config, model: nn.Module, is_text: bool) -> nn.Module:
  """``model``, or a ``stack.SplitInputStack`` when ``config.grow.side_split`` is set."""
  grow = config.grow
  split = parse_split(grow.side_split)
  growing = grow.from_workdir or grow.schedule or split
  if growing and not isinstance(model, stack.DecoupledStack):
    raise ConfigError(
      f"config.grow needs a decoupled vision or text stack; config.rule={config.rule!r} with "
      f"config.model.arch={config.model.arch!r} builds a {type(model).__name__}."
    )
  if grow.side_layers and not split:
    raise ConfigError("config.grow.side_layers needs config.grow.side_split (e.g. 'width:4').")
  if split is None:
    return model
  if is_text != grow.side_split.startswith("time:"):
    raise ConfigError(
      f"config.grow.side_split={grow.side_split!r}: text models split along 'time', image "
      f"models along height, width or channels (config.model.arch={config.model.arch!r})."
    )
  blocks, last = tuple(model.blocks), model.blocks[-1]
  if is_text:
    if grow.side_encoder:
      raise ConfigError("config.grow.side_encoder is for image models; set it to '' for text.")
    if grow.side_layers and grow.side_layers != config.model.arch:
      raise ConfigError(
        f"config.grow.side_layers={grow.side_layers!r}: for text the new-feature block is one "
        f"more block of the stack's kind; set it to {config.model.arch!r}."
      )
    if grow.side_lstm_state not in SIDE_LSTM_STATES:
      raise ConfigError(
        f"config.grow.side_lstm_state={grow.side_lstm_state!r} is unknown; choose one of "
        f"{SIDE_LSTM_STATES}."
      )
    side = last if grow.side_layers else None
    return stack.SplitInputStack(
      blocks, model.num_classes, split, side, text=True,
      keep_order=config.model.lstm_padding == "read",
      start_from_old=grow.side_lstm_state == "old_top",
    )
  side = side_encoder = None
  if grow.side_layers:
    side = stack.BlockSpec(
      encoder=_vgg_stage(grow.side_layers, "grow.side_layers", config.model),
      projector=last.projector,
      classifier_mode=last.classifier_mode,
      classifier_hidden=last.classifier_hidden,
      conventions=last.conventions,
    )
    if grow.side_encoder:
      side_encoder = _vgg_stage(grow.side_encoder, "grow.side_encoder", config.model)
  return stack.SplitInputStack(blocks, model.num_classes, split, side, side_encoder)


def _vgg_stage(spec: str, field: str, model_cfg) -> stack.EncoderFactory:
  """One VGG stage factory from ``"64,M"``; errors name ``config.<field>``."""
  try:
    (stage,) = parse_vgg_blocks(spec)
  except ValueError:
    raise ConfigError(
      f"config.{field}={spec!r} must be one VGG stage: ','-separated conv widths and 'M' "
      "(max-pool), e.g. '64,M'."
    ) from None
  return functools.partial(
    vision.VGGStage, stage, model_cfg.width, conventions=conventions(model_cfg)
  )
