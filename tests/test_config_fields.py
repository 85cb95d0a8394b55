"""``config_fields.FIELDS``: one row per field of ``launch/configs/default.py``, and the functions
that read it (validation, resume, program cache, evaluate) agree with it."""

from __future__ import annotations

import flax

from deinforeg_jax import checkpoint, config_fields
from deinforeg_jax.config_fields import FIELDS
from launch.configs import default
from launch.configs.spec_text import spec_text_config


def _leaves(config) -> dict:
  return flax.traverse_util.flatten_dict(config.to_dict(), sep=".")


def _table_mismatch(fields) -> str:
  """What a reader must fix for ``fields`` (a config's dotted field names) and ``FIELDS`` to
  list the same fields ("" when they do)."""
  problems = []
  if missing := sorted(set(fields) - set(FIELDS)):
    problems.append(f"fields without a row in config_fields.FIELDS: {missing}")
  if extra := sorted(set(FIELDS) - set(fields)):
    problems.append(f"rows of config_fields.FIELDS without a field in default.py: {extra}")
  return "; ".join(problems)


def test_the_table_and_default_py_list_the_same_fields():
  assert _table_mismatch(_leaves(default.get_config())) == ""
  # text configs set values of default.py's fields, never a field of their own
  assert _table_mismatch(_leaves(spec_text_config("ag_news", "transformer"))) == ""
  with_new_field = [*_leaves(default.get_config()), "model.compute_dtype"]
  assert _table_mismatch(with_new_field) == (
    "fields without a row in config_fields.FIELDS: ['model.compute_dtype']"
  )
  assert _table_mismatch(sorted(FIELDS)[1:]) == (
    f"rows of config_fields.FIELDS without a field in default.py: [{sorted(FIELDS)[0]!r}]"
  )


def test_every_default_and_earlier_value_is_of_its_kind():
  vision, text = _leaves(default.get_config()), _leaves(spec_text_config("ag_news", "lstm"))
  checked = {name: facts for name, facts in FIELDS.items() if facts.kind.check}
  assert "model.num_blocks" in checked and "data.name" not in checked  # str: ml_collections'
  wrong = [
    name
    for name, facts in checked.items()
    if not facts.kind.check((text if facts.text_only else vision)[name])
    or (facts.added_later and not facts.kind.check(facts.added_later.earlier))
  ]
  assert wrong == []


def test_choice_requirement_lists_the_values_sorted():
  kind = config_fields.choice(("sgd", "adam"))
  assert kind.check("adam") and not kind.check("lars")
  assert kind.requirement == "must be one of ['adam', 'sgd']"


def test_fields_added_later_are_the_rows_with_an_earlier_value():
  vision = checkpoint.fields_added_later({})
  text = checkpoint.fields_added_later({"data": {"kind": "text"}})
  assert vision == {
    "model.init": "flax", "model.bn_running_var": "biased", "model.dtype": "float32",
    "model.matmul_precision": "default",
  }
  assert {f: v for f, v in text.items() if f not in vision} == {
    name: facts.added_later.earlier
    for name, facts in FIELDS.items()
    if facts.added_later and facts.text_only
  }
  assert text["grow.side_lstm_state"] == "zero"


def test_a_resume_may_change_exactly_the_resumable_fields():
  saved = default.get_config().to_dict()
  everything_changed = flax.traverse_util.unflatten_dict(
    {name: ("changed",) for name in _leaves(default.get_config())}, sep="."
  )
  refused = checkpoint.changed_fields(saved, everything_changed)
  assert sorted(refused) == sorted(name for name, facts in FIELDS.items() if not facts.resumable)
  assert "parallel.mode" not in refused and "data.eval_batch_size" not in refused
  assert "optim.base_lr" in refused and "data.batch_size" in refused


def test_program_free_fields_are_the_loop_settings():
  """The fields the program cache drops: checkpointing, the adaptive exit, where to stop, the
  compilation cache, the MFU peak, the profiled steps and which run a grown stack starts from."""
  free = config_fields.program_free_fields()
  assert {name.split(".")[0] for name in free} == {"checkpoint", "inference", "train", "grow"}
  assert set(free) == {
    name for name in FIELDS if name.startswith(("checkpoint.", "inference."))
  } | {
    "train.max_steps", "train.compile_cache", "train.peak_tflops", "train.profile_steps",
    "grow.from_workdir",
  }


def test_evaluate_may_override_data_and_inference_fields_only():
  assert config_fields.evaluate_may_override("data.data_dir")
  assert config_fields.evaluate_may_override("data.label_noise.kind")
  assert config_fields.evaluate_may_override("inference.exit_mode")
  assert not config_fields.evaluate_may_override("model.width")
  assert not config_fields.evaluate_may_override("data")
  assert not config_fields.evaluate_may_override("data.no_such_field")
  overridable = {name for name in FIELDS if config_fields.evaluate_may_override(name)}
  assert overridable == {name for name in FIELDS if name.startswith(("data.", "inference."))}
