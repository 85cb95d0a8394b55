"""Early, field-naming checks of a run config (``ml_collections.ConfigDict``).

``validate_config`` fails before any data is read or any model is built, with a
message that names the offending ``config.<field>`` and how to fix it.  Allowed
values live in one table per kind of check (``CHOICES``, ``POSITIVE_INTS``, ...);
the defaults live only in the config files (``launch/configs/default.py``).
"""

from __future__ import annotations

import math

from deinforeg_jax import baselines, growth, inference, models, optim, rules
from deinforeg_jax.config_error import ConfigError
from deinforeg_jax.data import augment, label_noise
from deinforeg_jax.data import text as data_text
from deinforeg_jax.modules import heads, layers, text


MODES = ("data", "pipeline")

CHOICES = {
  "rule": tuple(rules.RULES),
  "model.arch": models.VISION_ARCHITECTURES + models.TEXT_ARCHITECTURES,
  "model.classifier_mode": heads.CLASSIFIER_MODES,
  "model.al_activation": tuple(baselines.ACTIVATIONS),
  "model.init": layers.INITS,
  "model.bn_running_var": layers.BN_RUNNING_VARS,
  "model.conv_impl": layers.CONV_IMPLS,
  "optim.name": optim.OPTIMIZERS,
  "optim.schedule": optim.SCHEDULES,
  "data.kind": ("image", "text"),
  "data.augment": augment.KINDS,
  "data.label_noise.kind": label_noise.KINDS,
  "inference.exit_mode": inference.EXIT_MODES,
  "parallel.mode": MODES,
}
TEXT_CHOICES = {
  "model.embedding_pool": text.EMBEDDING_POOLS,
  "model.lstm_padding": text.LSTM_PADDING,
  "model.lstm_biases": text.LSTM_BIASES,
  "model.layer_norm": text.LAYER_NORMS,
  "model.text_al_width": models.TEXT_AL_WIDTHS,
  "data.vocab_from": data_text.VOCAB_FROM,
  "grow.side_lstm_state": models.SIDE_LSTM_STATES,
}
POSITIVE_INTS = (
  "data.batch_size",
  "data.eval_batch_size",
  "train.num_epochs",
  "model.num_blocks",
  "model.al_hidden",
  "inference.patience",
  "checkpoint.keep",
  "checkpoint.every_epochs",
)
NON_NEGATIVE_INTS = (
  "seed",
  "train.max_steps",
  "checkpoint.every_steps",
  "parallel.num_devices",
  "parallel.num_stages",
  "data.max_len",
  "data.split_seed",
  "data.label_noise.seed",
)
POSITIVE_NUMBERS = ("model.width", "optim.base_lr", "loss.contrastive_temperature")
NON_NEGATIVE_NUMBERS = (
  "optim.end_lr",
  "optim.weight_decay",
  "optim.momentum",
  "loss.invariance_weight",
  "loss.variance_weight",
  "loss.covariance_weight",
  "loss.ce_weight",
  "data.label_noise.rate",
)
# Rules whose loss is a statistic over the batch, meaningless for one example, and why.
BATCH_STATISTIC_RULES = {
  "deinforeg": "its variance (unbiased: 1/(B-1)) and covariance terms are statistics over the "
  "batch, undefined (NaN) for one example",
  "scpl": "its supervised contrastive loss compares each example with the others in the batch "
  "(with one example it is 0 and teaches nothing)",
}
TEXT_POSITIVE_INTS = (
  "model.emb_dim",
  "model.hidden",
  "model.ff_dim",
  "model.heads",
  "data.vocab_size",
)


def _get(config, field: str):
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate_config(config) -> None:
  """Raise ``ConfigError`` naming the first invalid field of ``config``."""
  is_text = config.model.arch in models.TEXT_ARCHITECTURES
  if is_text != (config.data.kind == "text"):
    raise ConfigError(
      f"config.model.arch={config.model.arch!r} does not fit config.data.kind="
      f"{config.data.kind!r}: text models ({', '.join(models.TEXT_ARCHITECTURES)}) read "
      "kind='text' data; start from launch/configs/agnews_lstm.py (spec_text.py) for text."
    )
  choices = {**CHOICES, **(TEXT_CHOICES if is_text else {})}
  for field, allowed in choices.items():
    if _get(config, field) not in allowed:
      raise ConfigError(
        f"config.{field}={_get(config, field)!r} must be one of {sorted(allowed)}."
      )
  for fields, check, requirement in (
    (POSITIVE_INTS + (TEXT_POSITIVE_INTS if is_text else ()), lambda v: _is_int(v) and v > 0,
     "must be a positive integer"),
    (NON_NEGATIVE_INTS, lambda v: _is_int(v) and v >= 0, "must be an integer >= 0"),
    (POSITIVE_NUMBERS, lambda v: _is_number(v) and v > 0, "must be a positive finite number"),
    (NON_NEGATIVE_NUMBERS, lambda v: _is_number(v) and v >= 0, "must be a finite number >= 0"),
  ):
    for field in fields:
      if not check(_get(config, field)):
        hint = _num_blocks_hint(config) if field == "model.num_blocks" else ""
        raise ConfigError(f"config.{field}={_get(config, field)!r} {requirement}{hint}.")
  if config.rule in BATCH_STATISTIC_RULES and config.data.batch_size < 2:
    raise ConfigError(
      f"config.data.batch_size={config.data.batch_size} is too small for config.rule="
      f"{config.rule!r}: {BATCH_STATISTIC_RULES[config.rule]}; set config.data.batch_size >= 2 "
      "(it is the global batch, shared by all devices)."
    )
  if not -1.0 <= config.inference.cosine_threshold <= 1.0:
    raise ConfigError(
      f"config.inference.cosine_threshold={config.inference.cosine_threshold!r} must lie in "
      "[-1, 1]."
    )
  for field in filter(None, config.checkpoint.allow_changed.split(",")):
    try:
      _get(config, field)
    except (KeyError, AttributeError):
      raise ConfigError(
        f"config.checkpoint.allow_changed names {field!r}, which is not a config field; list "
        "fields as dotted names separated by ',', e.g. 'train.num_epochs,optim.base_lr'."
      ) from None
  if is_text:
    _validate_text(config)
  try:
    _validate_growth(config)
    models.create_model(config, num_classes=2)  # parses projector, vgg_blocks, num_blocks range
  except ValueError as error:
    raise ConfigError(str(error)) from error


def _num_blocks_hint(config) -> str:
  if config.model.arch in models.TEXT_ARCHITECTURES:
    return " (the blocks after the embedding block)"
  try:
    return f": use 1..{len(models.vision_encoders(config.model))}"
  except ValueError:
    return ""


def _validate_text(config) -> None:
  """Text fields (``launch/configs/spec_text.py``), checked before any data is read."""
  m = config.model
  if m.arch == "transformer" and m.emb_dim % m.heads:
    raise ConfigError(
      f"config.model.heads={m.heads} must divide config.model.emb_dim={m.emb_dim} (d_model)."
    )
  if config.data.augment != "none":
    raise ConfigError(f"config.data.augment={config.data.augment!r}: text takes 'none'.")


def _validate_growth(config) -> None:
  """``config.grow`` fields that need no model."""
  grow = config.grow
  schedule = growth.parse_schedule(grow.schedule)
  if (grow.from_workdir or schedule or grow.side_split) and config.parallel.mode != "data":
    raise ConfigError(
      f"config.grow needs config.parallel.mode='data' (got {config.parallel.mode!r})."
    )
  if schedule and grow.side_layers:
    raise ConfigError("config.grow.schedule cannot be combined with config.grow.side_layers.")
  if schedule and (
    len(schedule) >= config.model.num_blocks or schedule[-1] >= config.train.num_epochs
  ):
    raise ConfigError(
      f"config.grow.schedule={grow.schedule!r} adds {len(schedule)} blocks: it needs "
      f"config.model.num_blocks > {len(schedule)} (now {config.model.num_blocks}; the run "
      f"starts with num_blocks - {len(schedule)}) and every epoch < config.train.num_epochs "
      f"(now {config.train.num_epochs})."
    )
