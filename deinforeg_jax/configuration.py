"""Early, field-naming checks of a run config (``ml_collections.ConfigDict``).

``validate_config`` fails before any data is read or any model is built, with a
message that names the offending ``config.<field>`` and how to fix it.
"""

from __future__ import annotations

from deinforeg_jax import optim, rules, stack


def _require_positive(value, field: str) -> None:
  if not isinstance(value, (int, float)) or value <= 0:
    raise ValueError(f"config.{field}={value!r} must be a positive number.")


def validate_config(config) -> None:
  """Raise ``ValueError`` naming the first invalid field of ``config``."""
  rules.get_objective(config.rule)
  stack.build_model(config, num_classes=2)  # checks arch, num_blocks, projector, classifier
  _require_positive(config.model.width, "model.width")
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
