"""Early, field-naming checks of a run config (``ml_collections.ConfigDict``).

``validate_config`` fails before any data is read or any model is built, with a
message that names the offending ``config.<field>`` and how to fix it.  Each field's
kind (allowed values, range) is its row of ``config_fields.FIELDS``, checked in that
order; the rules here relate fields to each other.  The defaults live only in the
config files (``launch/configs/default.py``).
"""

from __future__ import annotations

from deinforeg_jax import config_fields, growth, models
from deinforeg_jax.config_error import ConfigError


# Rules whose loss is a statistic over the batch, meaningless for one example, and why.
BATCH_STATISTIC_RULES = {
  "deinforeg": "its variance (unbiased: 1/(B-1)) and covariance terms are statistics over the "
  "batch, undefined (NaN) for one example",
  "scpl": "its supervised contrastive loss compares each example with the others in the batch "
  "(with one example it is 0 and teaches nothing)",
}


def _get(config, field: str):
  value = config
  for part in field.split("."):
    value = value[part]
  return value


def validate_config(config) -> None:
  """Raise ``ConfigError`` naming the first invalid field of ``config``."""
  is_text = config.model.arch in models.TEXT_ARCHITECTURES
  if is_text != (config.data.kind == "text"):
    raise ConfigError(
      f"config.model.arch={config.model.arch!r} does not fit config.data.kind="
      f"{config.data.kind!r}: text models ({', '.join(models.TEXT_ARCHITECTURES)}) read "
      "kind='text' data; start from launch/configs/agnews_lstm.py (spec_text.py) for text."
    )
  for field, facts in config_fields.FIELDS.items():
    if facts.kind.check is None or (facts.text_only and not is_text):
      continue
    value = _get(config, field)
    if not facts.kind.check(value):
      hint = _num_blocks_hint(config) if field == "model.num_blocks" else ""
      raise ConfigError(f"config.{field}={value!r} {facts.kind.requirement}{hint}.")
  if config.rule in BATCH_STATISTIC_RULES and config.data.batch_size < 2:
    raise ConfigError(
      f"config.data.batch_size={config.data.batch_size} is too small for config.rule="
      f"{config.rule!r}: {BATCH_STATISTIC_RULES[config.rule]}; set config.data.batch_size >= 2 "
      "(it is the global batch, shared by all devices)."
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
