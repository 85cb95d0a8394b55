"""``load(workdir)``: a ``TrainedModel`` from a run's latest checkpoint and saved config.

Nothing but the checkpoint (verified: ``checkpoint.read_variables``), the run's ``vocab.json``
(text) and its ``results.json`` / ``metrics.jsonl`` (the best exit) is read: never a dataset.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deinforeg_jax import checkpoint, inference, stack
from deinforeg_jax.data import text as text_data
from deinforeg_jax.run import DatasetShape, build_run
from deinforeg_jax.trained.model import TrainedModel
from deinforeg_jax.trained.preprocessing import Preprocessing


class WorkdirError(ValueError):
  """The workdir cannot be used as a trained model; the message names what is missing."""


def _fail(workdir: str, problem: str) -> WorkdirError:
  return WorkdirError(f"cannot load {workdir}: {problem}")


def saved_config(metadata: dict[str, Any]) -> ml_collections.ConfigDict:
  """The run's config, with the fields added later at the value older runs had."""
  config = ml_collections.ConfigDict(metadata["config"])
  for field, value in checkpoint.fields_added_later(metadata["config"]).items():
    section, name = field.rsplit(".", 1)
    part = config
    for key in section.split("."):
      part = part[key]
    if name not in part:
      part[name] = value
  return config


# The dataset description a model's preprocessing and outputs need, per ``config.data.kind``:
# ``checkpoint.make_metadata`` records it in every checkpoint saved since 2026-12-06.
DESCRIPTION_FIELDS = {
  "image": ("mean", "std", "pixel_max", "class_names"),
  "text": ("class_names",),
}


def _description(config, saved: dict[str, Any], workdir: str) -> dict[str, Any]:
  """The checkpoint's dataset description (``DESCRIPTION_FIELDS``); an older checkpoint without
  it is refused, saying how to record it (``description.record``)."""
  fields = DESCRIPTION_FIELDS["text" if config.data.kind == "text" else "image"]
  missing = [f for f in fields if f not in saved]
  if missing:
    raise _fail(
      workdir,
      f"its checkpoint does not record the dataset's {', '.join(missing)} (it was saved before "
      "2026-12-06), and a trained model is built from its checkpoint alone; record them once "
      f"from the run's dataset {config.data.name!r} with `python -m launch.evaluate "
      f"--workdir={workdir} --record_description` (add --config.data.data_dir=DIR if it is "
      "not prepared where the run read it).",
    )
  return {f: saved[f] for f in fields}


def _preprocessing(config, saved: dict[str, Any], described: dict, workdir: str) -> Preprocessing:
  input_shape = tuple(saved["input_shape"])
  if config.data.kind != "text":
    return Preprocessing(
      "image",
      input_shape,
      tuple(float(m) for m in described["mean"]),
      tuple(float(s) for s in described["std"]),
      float(described["pixel_max"]),
    )
  try:
    vocabulary = text_data.load_vocabulary(workdir)
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise _fail(workdir, f"its vocabulary {text_data.VOCAB_FILE} is unreadable: {error}") from None
  if vocabulary is None:
    raise _fail(
      workdir,
      f"no {text_data.VOCAB_FILE}: a text run keeps the vocabulary it was trained with there "
      "(launch.train writes it), and without it texts cannot be encoded.",
    )
  if vocabulary.settings.max_len != input_shape[0]:
    raise _fail(
      workdir,
      f"{text_data.VOCAB_FILE} has max_len {vocabulary.settings.max_len}, the checkpoint "
      f"{input_shape[0]}: they are from different runs.",
    )
  return Preprocessing("text", input_shape, vocabulary=vocabulary)


def _active_blocks(run, step: int) -> int:
  """How many blocks a ``config.grow.schedule`` run had added by checkpoint step ``step``: those
  of the phase that trained its last step (all blocks when nothing grows)."""
  return len(getattr(run.phase_at(max(step - 1, 0)).model, "blocks", ()))


def _check_variables(workdir: str, model, variables, input_shape) -> None:
  """The checkpoint's arrays (verified against their checksums when read) have the model's
  shapes."""
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape), jnp.float32), train=False)
  )
  for collection in ("params", "batch_stats"):
    want = checkpoint.parameter_shapes(abstract.get(collection, {}))
    have = checkpoint.parameter_shapes(variables.get(collection, {}))
    for path in sorted(set(want) | set(have)):
      if want.get(path) != have.get(path):
        raise _fail(
          workdir,
          f"{collection} {path!r} has shape {have.get(path, 'absent')} in the checkpoint but "
          f"{want.get(path, 'absent')} in the model its config builds (a checkpoint from "
          "another version of the code?).",
        )


def _best_exit(workdir: str, step: int, num_exits: int) -> tuple[int, str]:
  """``(exit, how it was chosen)``: the module docstring's ``"best"`` rule."""
  path = os.path.join(workdir, "results.json")
  try:
    with open(path) as f:
      results = json.load(f)
    if results.get("steps") == step and len(results["per_block_test_accuracy"]) == num_exits:
      return int(results["best_block"]), "results.json best_block"
  except (OSError, ValueError, KeyError, TypeError):
    pass
  path = os.path.join(workdir, "metrics.jsonl")
  try:
    with open(path) as f:
      records = [json.loads(line) for line in f if line.strip()]
    accuracy = [r["test_accuracy"] for r in records if r.get("step") == step and "epoch" in r]
    if accuracy and len(accuracy[-1]) == num_exits:
      return int(np.argmax(accuracy[-1])), (
        f"no results.json for step {step} (an interrupted run): the best test accuracy in "
        f"metrics.jsonl at step {step}"
      )
  except (OSError, ValueError, KeyError, TypeError):
    pass
  return num_exits - 1, f"no results.json or metrics.jsonl line for step {step}: the last exit"


def load(workdir: str) -> TrainedModel:
  """The trained model in ``workdir`` (its latest checkpoint; nothing is written, no dataset
  is read).

  Raises:
    WorkdirError: naming what is missing (the workdir, a checkpoint, the vocabulary of a
      text run, the dataset description of a checkpoint saved before 2026-12-06) or what
      does not match.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise _fail(workdir, "no such directory.")
  notes = []

  def warn(message: str) -> None:  # a damaged newest checkpoint, passed over
    checkpoint.print_warning(message)
    notes.append(message)

  try:
    variables, metadata = checkpoint.read_variables(workdir, warn=warn)
  except FileNotFoundError:
    raise _fail(
      workdir,
      f"no checkpoint in {os.path.join(workdir, 'checkpoints')} (train with "
      "`python -m launch.train --workdir=...` first, and point --workdir at that run).",
    ) from None
  except checkpoint.CorruptCheckpointError as error:
    raise _fail(workdir, f"{error}.") from None
  except Exception as error:  # noqa: BLE001
    raise _fail(
      workdir,
      f"its latest checkpoint is unreadable ({type(error).__name__}: "
      f"{(str(error).splitlines() or [''])[0]}).",
    ) from None
  variables = flax.core.unfreeze(variables)
  config = saved_config(metadata)
  saved = metadata["dataset"]
  shape = DatasetShape(
    input_shape=tuple(saved["input_shape"]),
    num_classes=saved["num_classes"],
    num_train=saved["num_train"],
    kind=config.data.kind,
  )
  try:
    run = build_run(config, shape, num_old=0)
  except (ValueError, KeyError, AttributeError) as error:
    raise _fail(workdir, f"its saved config does not build a model ({error}).") from None
  model = run.model
  _check_variables(workdir, model, variables, saved["input_shape"])
  described = _description(config, saved, workdir)
  preprocessing = _preprocessing(config, saved, described, workdir)
  active = _active_blocks(run, int(metadata["step"]))
  if active < len(getattr(model, "blocks", ())):
    model = model.clone(blocks=tuple(model.blocks[:active]))
    kept = {stack.block_name(k) for k in range(active)}
    variables = {
      c: {k: v for k, v in tree.items() if not k.startswith("block_") or k in kept}
      for c, tree in variables.items()
    }
    notes.append(
      f"config.grow.schedule={config.grow.schedule!r}: the run had added {active} blocks by "
      f"step {metadata['step']}; the blocks not added yet are not used"
    )
  num_exits = len(jax.eval_shape(
    lambda: model.apply(
      variables, jnp.zeros((1, *preprocessing.input_shape), preprocessing.dtype), train=False
    )["logits"]
  ))
  exit_blocks = inference.exit_blocks(variables["params"], num_exits)
  best, source = _best_exit(workdir, int(metadata["step"]), num_exits)
  names = tuple(str(n) for n in described.get("class_names") or ())
  if len(names) != saved["num_classes"]:
    names = tuple(str(k) for k in range(saved["num_classes"]))
  return TrainedModel(
    workdir=workdir,
    config=config,
    metadata=metadata,
    model=model,
    variables=variables,
    preprocessing=preprocessing,
    class_names=names,
    exit_blocks=exit_blocks,
    best_exit=best,
    best_exit_source=source,
    notes=notes,
  )
