"""One row per config field: what it may hold and how a run treats it.

A field's default lives in ``launch/configs/default.py``; every other fact about it lives in
its row of ``FIELDS``, keyed by its dotted name (``"data.batch_size"``), so adding a field means
one line there and one row here (``tests/test_config_fields.py`` checks that the two agree):

* ``kind``: the values it takes.  ``validate_config`` checks the kinds with a ``check``;
  ``bool``/``str``/``int``/``number`` fields are typed by ``ml_collections`` on override, and
  strings with a syntax (``model.projector``, ``grow.schedule``, ...) are parsed by the module
  that reads them.  A choice's values come from the module that uses them.
* ``text_only``: only text runs check it (a vision run never reads it), and a vision run's
  checkpoint need not hold it when it was added later.
* ``resumable``: a resumed run may change it freely; every other field is part of the
  checkpoint's identity (``checkpoint.changed_fields``).
* ``compiled``: it may change the compiled programs (``False``: it steers only the loop around
  them, so the in-process program cache ignores it).
* ``evaluate``: ``launch.evaluate`` may override it (the model stays the run's own).
* ``added_later``: when the field appeared after checkpoints were first written, and the value
  that stands for the behaviour every run had before: a saved config without the field reads
  as that value (``checkpoint.fields_added_later``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from deinforeg_jax import baselines, inference, models, optim, precision, profiling, rules
from deinforeg_jax.data import augment, label_noise
from deinforeg_jax.data import text as data_text
from deinforeg_jax.modules import heads, layers, text


@dataclasses.dataclass(frozen=True)
class Kind:
  """The values of a field; ``check(value)`` is what ``validate_config`` asks (None: nothing),
  and ``requirement`` ends its message: ``config.<field>=<value> <requirement>.``."""

  name: str
  check: Callable[[Any], bool] | None = None
  requirement: str = ""


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def choice(values: tuple) -> Kind:
  """One of ``values`` (listed sorted in the message)."""
  return Kind(f"one of {values}", lambda v: v in values, f"must be one of {sorted(values)}")


POSITIVE_INT = Kind("int > 0", lambda v: _is_int(v) and v > 0, "must be a positive integer")
NON_NEGATIVE_INT = Kind("int >= 0", lambda v: _is_int(v) and v >= 0, "must be an integer >= 0")
POSITIVE_NUMBER = Kind(
  "number > 0", lambda v: _is_number(v) and v > 0, "must be a positive finite number"
)
NON_NEGATIVE_NUMBER = Kind(
  "number >= 0", lambda v: _is_number(v) and v >= 0, "must be a finite number >= 0"
)
COSINE = Kind("number in [-1, 1]", lambda v: _is_number(v) and -1 <= v <= 1, "must lie in [-1, 1]")
INT, NUMBER, BOOL, STR = Kind("int"), Kind("number"), Kind("bool"), Kind("str")


def checked_where_used(where: str) -> Kind:
  """A string the module ``where`` checks when it reads it (``pipeline/`` imports ``checkpoint``,
  which reads this table, so its values cannot be imported here)."""
  return Kind(f"str, checked by {where}")


@dataclasses.dataclass(frozen=True)
class AddedLater:
  """A field checkpoints written before ``on`` lack; ``earlier`` is the behaviour they had."""

  on: str
  earlier: Any


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field's facts (the module docstring says what each means)."""

  kind: Kind
  text_only: bool = False
  resumable: bool = False
  compiled: bool = True
  evaluate: bool = False
  added_later: AddedLater | None = None


FIELDS = {
  "rule": Field(choice(tuple(rules.RULES))),
  "seed": Field(NON_NEGATIVE_INT),
  # data.*: evaluate may read another dataset, split or batch size with the run's model.
  "data.kind": Field(choice(("image", "text")), evaluate=True),
  "data.name": Field(STR, evaluate=True),
  "data.data_dir": Field(STR, resumable=True, evaluate=True),
  "data.download": Field(BOOL, resumable=True, evaluate=True),
  "data.split_seed": Field(NON_NEGATIVE_INT, evaluate=True),
  "data.augment": Field(choice(augment.KINDS), evaluate=True),
  "data.label_noise.kind": Field(choice(label_noise.KINDS), evaluate=True),
  "data.label_noise.rate": Field(NON_NEGATIVE_NUMBER, evaluate=True),
  "data.label_noise.seed": Field(NON_NEGATIVE_INT, evaluate=True),
  "data.batch_size": Field(POSITIVE_INT, evaluate=True),
  "data.eval_batch_size": Field(POSITIVE_INT, resumable=True, evaluate=True),
  "data.max_len": Field(NON_NEGATIVE_INT, evaluate=True),  # text runs read it; all check it
  "data.vocab_size": Field(POSITIVE_INT, text_only=True, evaluate=True),
  "data.stop_words": Field(BOOL, text_only=True, evaluate=True),
  "data.vocab_from": Field(choice(data_text.VOCAB_FROM), text_only=True, evaluate=True),
  "model.arch": Field(choice(models.VISION_ARCHITECTURES + models.TEXT_ARCHITECTURES)),
  "model.vgg_blocks": Field(STR),
  "model.width": Field(POSITIVE_NUMBER),
  "model.num_blocks": Field(POSITIVE_INT),
  "model.projector": Field(STR),
  "model.classifier_mode": Field(choice(heads.CLASSIFIER_MODES)),
  "model.bp_head_hidden": Field(INT),
  "model.batch_norm": Field(BOOL),
  "model.init": Field(choice(layers.INITS), added_later=AddedLater("2026-11-29", "flax")),
  "model.bn_running_var": Field(
    choice(layers.BN_RUNNING_VARS), added_later=AddedLater("2026-11-29", "biased")
  ),
  # How convolutions are computed, not what: the state is the same.
  "model.conv_impl": Field(choice(layers.CONV_IMPLS), resumable=True),
  # Mixed precision: another dtype on resume is refused unless allowed (the checkpoint is float32
  # either way, so an allowed change restores); the matmul precision changes rounding only.
  "model.dtype": Field(
    Kind("'float32' | 'bfloat16'", lambda v: v in precision.DTYPES, precision.DTYPE_REQUIREMENT),
    added_later=AddedLater("2026-12-07", "float32"),
  ),
  "model.matmul_precision": Field(
    choice(tuple(precision.MATMUL_PRECISIONS)),
    resumable=True,
    added_later=AddedLater("2026-12-07", "default"),
  ),
  "model.scpl_projector": Field(STR),
  "model.al_hidden": Field(POSITIVE_INT),
  "model.al_bridge": Field(STR),
  "model.al_activation": Field(choice(tuple(baselines.ACTIVATIONS))),
  "model.emb_dim": Field(POSITIVE_INT, text_only=True),
  "model.glove": Field(STR, text_only=True),
  "model.freeze_embedding": Field(BOOL, text_only=True),
  "model.embedding_pool": Field(choice(text.EMBEDDING_POOLS), text_only=True),
  "model.hidden": Field(POSITIVE_INT, text_only=True),
  "model.lstm_padding": Field(choice(text.LSTM_PADDING), text_only=True),
  # 2026-12-07: the BiLSTM's second bias, the Transformer's LayerNorm, the AL label-code width
  # and a side block's BiLSTM state follow the reference code; a vision run saved without them
  # is not built from them, and they are no part of its identity.
  "model.lstm_biases": Field(
    choice(text.LSTM_BIASES), text_only=True, added_later=AddedLater("2026-12-07", 1)
  ),
  # How the BiLSTM's gradient is computed, not what: the state is the same.
  "model.lstm_remat": Field(
    choice(text.LSTM_REMATS), text_only=True, resumable=True,
    added_later=AddedLater("2026-12-07", "off"),
  ),
  "model.heads": Field(POSITIVE_INT, text_only=True),
  "model.ff_dim": Field(POSITIVE_INT, text_only=True),
  "model.dropout": Field(NUMBER, text_only=True),
  "model.positional_encoding": Field(BOOL, text_only=True),
  "model.layer_norm": Field(
    choice(text.LAYER_NORMS), text_only=True, added_later=AddedLater("2026-12-07", "flax")
  ),
  "model.text_al_width": Field(
    choice(models.TEXT_AL_WIDTHS), text_only=True, added_later=AddedLater("2026-12-07", "hidden")
  ),
  "loss.invariance_weight": Field(NON_NEGATIVE_NUMBER),
  "loss.variance_weight": Field(NON_NEGATIVE_NUMBER),
  "loss.covariance_weight": Field(NON_NEGATIVE_NUMBER),
  "loss.ce_weight": Field(NON_NEGATIVE_NUMBER),
  "loss.variance_batch_scaling": Field(BOOL),
  "loss.contrastive_temperature": Field(POSITIVE_NUMBER),
  "optim.name": Field(choice(optim.OPTIMIZERS)),
  "optim.base_lr": Field(POSITIVE_NUMBER),
  "optim.end_lr": Field(NON_NEGATIVE_NUMBER),
  "optim.schedule": Field(choice(optim.SCHEDULES)),
  "optim.schedule_per_epoch": Field(BOOL),
  "optim.weight_decay": Field(NON_NEGATIVE_NUMBER),
  "optim.momentum": Field(NON_NEGATIVE_NUMBER),
  "optim.eta": Field(NUMBER),
  "train.num_epochs": Field(POSITIVE_INT),
  "train.max_steps": Field(NON_NEGATIVE_INT, resumable=True, compiled=False),  # where to stop
  "train.log_grad_norms": Field(BOOL, resumable=True),
  # How the run is compiled, measured and traced, not what it computes.
  "train.compile_cache": Field(STR, resumable=True, compiled=False),
  "train.peak_tflops": Field(NON_NEGATIVE_NUMBER, resumable=True, compiled=False),
  "train.profile_steps": Field(
    Kind("str", profiling.is_valid, profiling.SYNTAX), resumable=True, compiled=False
  ),
  # checkpoint.*: when and how the loop saves, nothing the programs compute.
  "checkpoint.every_steps": Field(NON_NEGATIVE_INT, resumable=True, compiled=False),
  "checkpoint.every_epochs": Field(POSITIVE_INT, resumable=True, compiled=False),
  "checkpoint.keep": Field(POSITIVE_INT, resumable=True, compiled=False),
  "checkpoint.allow_changed": Field(STR, resumable=True, compiled=False),
  "checkpoint.use_async": Field(BOOL, resumable=True, compiled=False),
  # parallel.*: how the same computation is spread over devices, free on resume.
  "parallel.mode": Field(choice(("data", "pipeline")), resumable=True),
  "parallel.num_devices": Field(NON_NEGATIVE_INT, resumable=True),
  "parallel.shard_state": Field(BOOL, resumable=True),
  "parallel.distributed": Field(BOOL, resumable=True),
  "parallel.num_stages": Field(NON_NEGATIVE_INT, resumable=True),
  "parallel.pipeline_schedule": Field(
    checked_where_used("pipeline/executor.py (SCHEDULES)"), resumable=True
  ),
  "parallel.pipeline_balance": Field(
    checked_where_used("pipeline/balance.py (BALANCE_METHODS)"), resumable=True
  ),
  "parallel.pipeline_dispatch": Field(
    checked_where_used("pipeline/executor.py (DISPATCH_MODES)"), resumable=True
  ),
  # inference.*: the adaptive exit after training, which evaluate may try on a trained model.
  "inference.patience": Field(POSITIVE_INT, resumable=True, compiled=False, evaluate=True),
  "inference.cosine_threshold": Field(COSINE, resumable=True, compiled=False, evaluate=True),
  "inference.exit_mode": Field(
    choice(inference.EXIT_MODES), resumable=True, compiled=False, evaluate=True
  ),
  "inference.patience_reset": Field(BOOL, resumable=True, compiled=False, evaluate=True),
  # Which blocks are frozen in a phase; engines key a phase's programs by the phase.
  "grow.from_workdir": Field(STR, compiled=False),
  "grow.train_old": Field(BOOL),
  "grow.schedule": Field(STR),
  "grow.freeze_on_add": Field(BOOL),
  "grow.side_split": Field(STR),
  "grow.side_layers": Field(STR),
  "grow.side_encoder": Field(STR),
  "grow.side_lstm_state": Field(
    choice(models.SIDE_LSTM_STATES), text_only=True, added_later=AddedLater("2026-12-07", "zero")
  ),
}


def program_free_fields() -> tuple[str, ...]:
  """The fields that never change the compiled programs (a program cache key drops them)."""
  return tuple(name for name, field in FIELDS.items() if not field.compiled)


def evaluate_may_override(name: str) -> bool:
  """Whether ``launch.evaluate`` takes ``--config.<name>`` (False for an unknown name)."""
  return name in FIELDS and FIELDS[name].evaluate
