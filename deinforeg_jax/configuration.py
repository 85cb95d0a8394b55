"""Early, field-naming checks of a run config (``ml_collections.ConfigDict``).

``validate_config`` fails before any data is read or any model is built, with a
message that names the offending ``config.<field>`` and how to fix it.
"""

from __future__ import annotations

from deinforeg_jax import growth, inference, optim, rules, stack


def _require_positive(value, field: str) -> None:
  if not isinstance(value, (int, float)) or value <= 0:
    raise ValueError(f"config.{field}={value!r} must be a positive number.")


def validate_config(config) -> None:
  """Raise ``ValueError`` naming the first invalid field of ``config``."""
  rules.get_objective(config.rule)
  model = stack.build_model(config, num_classes=2)  # checks arch, num_blocks, projector, ...
  growth.wrap_model(config, model)  # checks config.grow
  _validate_growth_and_inference(config)
  _require_positive(config.model.width, "model.width")
  if config.model.arch in stack.TEXT_ARCHITECTURES:
    _validate_text(config)
  if config.optim.name not in optim.OPTIMIZERS:
    raise ValueError(
      f"config.optim.name={config.optim.name!r} is unknown; choose one of {optim.OPTIMIZERS}."
    )
  if config.optim.schedule not in optim.SCHEDULES:
    raise ValueError(
      f"config.optim.schedule={config.optim.schedule!r} is unknown; choose one "
      f"of {optim.SCHEDULES}."
    )
  _require_positive(config.optim.base_lr, "optim.base_lr")
  for field in ("data.batch_size", "data.eval_batch_size", "train.num_epochs"):
    section, name = field.split(".")
    value = config[section][name]
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"config.{field}={value!r} must be a positive integer.")
  for name in ("invariance_weight", "variance_weight", "covariance_weight", "ce_weight"):
    if config.loss[name] < 0:
      raise ValueError(f"config.loss.{name}={config.loss[name]!r} must be >= 0.")
  if config.rule == "scpl":
    _require_positive(config.loss.contrastive_temperature, "loss.contrastive_temperature")


def _validate_growth_and_inference(config) -> None:
  """``config.inference`` (SPEC 7) and ``config.grow`` fields that need no model."""
  inf = config.inference
  if not isinstance(inf.patience, int) or inf.patience < 1:
    raise ValueError(f"config.inference.patience={inf.patience!r} must be an integer >= 1.")
  if not -1.0 <= inf.cosine_threshold <= 1.0:
    raise ValueError(
      f"config.inference.cosine_threshold={inf.cosine_threshold!r} must lie in [-1, 1]."
    )
  if inf.exit_mode not in inference.EXIT_MODES:
    raise ValueError(
      f"config.inference.exit_mode={inf.exit_mode!r} is unknown; choose one of "
      f"{inference.EXIT_MODES}."
    )
  growing = config.grow.from_workdir or config.grow.schedule or config.grow.side_split
  if growing and config.parallel.mode != "data":
    raise ValueError(
      f"config.grow needs config.parallel.mode='data' (got {config.parallel.mode!r})."
    )


def _validate_text(config) -> None:
  """Text fields (``launch/configs/spec_text.py``), checked before any data is read."""
  from deinforeg_jax.modules import text  # pylint: disable=import-outside-toplevel

  if "max_len" not in config.data:
    raise ValueError(
      f"config.model.arch={config.model.arch!r} needs a text config (config.data.max_len, "
      "vocab_size, ...): start from launch/configs/agnews_lstm.py or spec_text.py."
    )
  m = config.model
  for field in ("emb_dim", "hidden", "ff_dim"):
    _require_positive(m[field], f"model.{field}")
  if m.embedding_pool not in text.EMBEDDING_POOLS:
    raise ValueError(
      f"config.model.embedding_pool={m.embedding_pool!r} must be one of {text.EMBEDDING_POOLS}."
    )
  if m.lstm_padding not in text.LSTM_PADDING:
    raise ValueError(
      f"config.model.lstm_padding={m.lstm_padding!r} must be one of {text.LSTM_PADDING}."
    )
  if m.arch == "transformer" and (m.heads <= 0 or m.emb_dim % m.heads):
    raise ValueError(
      f"config.model.heads={m.heads} must divide config.model.emb_dim={m.emb_dim} (d_model)."
    )
  if config.data.augment != "none":
    raise ValueError(f"config.data.augment={config.data.augment!r}: text takes 'none'.")
