"""``load(workdir)``: a ``TrainedModel`` from a run's latest checkpoint and saved config."""

from __future__ import annotations

import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deinforeg_jax import checkpoint, growth, inference, models, stack
from deinforeg_jax.data import registry
from deinforeg_jax.data import text as text_data
from deinforeg_jax.trained.model import TrainedModel
from deinforeg_jax.trained.preprocessing import Preprocessing


class WorkdirError(ValueError):
  """The workdir cannot be used as a trained model; the message names what is missing."""


def _fail(workdir: str, problem: str) -> WorkdirError:
  return WorkdirError(f"cannot load {workdir}: {problem}")


def _saved_config(metadata: dict[str, Any]) -> ml_collections.ConfigDict:
  """The run's config, with the fields added later at the value older runs had."""
  config = ml_collections.ConfigDict(metadata["config"])
  for field, value in checkpoint.FIELDS_ADDED_LATER.items():
    section, name = field.rsplit(".", 1)
    part = config
    for key in section.split("."):
      part = part[key]
    if name not in part:
      part[name] = value
  return config


def _dataset_description(config, saved: dict[str, Any], workdir: str) -> tuple[dict, str]:
  """``(description, note)``: ``mean``, ``std``, ``pixel_max`` and ``class_names`` of the
  run's dataset, from the checkpoint when it records them, else from the dataset."""
  fields = ("mean", "std", "pixel_max", "class_names")
  if config.data.kind == "text":
    names = saved.get("class_names") or _text_class_names(config)
    return {"class_names": tuple(names or ())}, ""
  if all(f in saved for f in fields):
    return {f: saved[f] for f in fields}, ""
  name = config.data.name
  try:
    if name in registry.EMBEDDED:
      info = registry.EMBEDDED[name](seed=config.data.split_seed)[2]
    else:
      from deinforeg_jax.data import tfds_source  # pylint: disable=import-outside-toplevel

      info = tfds_source.load_tfds(name, config.data.data_dir)[2]
  except Exception as error:  # noqa: BLE001  # one line naming what is missing
    raise _fail(
      workdir,
      f"its checkpoint does not record the input normalisation (mean/std), and the dataset "
      f"{name!r} it was trained on cannot be read to recompute it ({type(error).__name__}: "
      f"{str(error).splitlines()[0]}); pass data_dir= where {name!r} is prepared.",
    ) from None
  note = f"input normalisation and class names taken from the dataset {name!r}"
  return {f: getattr(info, f) for f in fields}, note


def _text_class_names(config) -> tuple[str, ...]:
  """A prepared TFDS text dataset's label names, or () when it cannot be read."""
  try:
    from deinforeg_jax.data import tfds_source  # pylint: disable=import-outside-toplevel

    data_dir = os.path.expanduser(config.data.data_dir) or tfds_source.default_data_dir()
    builder = tfds_source.open_builder(config.data.name, data_dir)
    return tuple(builder.info.features["label"].names)
  except Exception:  # noqa: BLE001  # names are optional: "0".."C-1"
    return ()


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


def _active_blocks(config, metadata: dict[str, Any], model) -> int:
  """How many blocks a ``config.grow.schedule`` run had added by its checkpoint's step."""
  schedule = growth.parse_schedule(config.grow.schedule)
  total = len(getattr(model, "blocks", ()))
  if not schedule or not total:
    return total
  per_epoch = max(metadata["dataset"]["num_train"] // config.data.batch_size, 1)
  last_epoch = max(int(metadata["step"]) - 1, 0) // per_epoch  # the epoch of the last step
  return total - len(schedule) + sum(last_epoch >= e for e in schedule)


def _check_variables(workdir: str, model, variables, input_shape, metadata) -> None:
  """The checkpoint's arrays have the model's shapes and their saved checksums."""
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
  expected = metadata.get("checksums") or {}
  found = checkpoint.checksums(variables)
  bad = sorted(p for p, v in found.items() if p in expected and expected[p] != v)
  if bad:
    raise _fail(
      workdir, f"array {bad[0]} of step {metadata['step']} does not match its saved checksum."
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


def load(workdir: str, *, data_dir: str | None = None) -> TrainedModel:
  """The trained model in ``workdir`` (its latest checkpoint; nothing is written).

  ``data_dir``: where the run's TFDS dataset is prepared, read only when the checkpoint
  does not record the input normalisation (default: the run's ``config.data.data_dir``).

  Raises:
    WorkdirError: naming what is missing (the workdir, a checkpoint, the vocabulary of a
      text run, a readable dataset description) or what does not match.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise _fail(workdir, "no such directory.")
  try:
    variables, metadata = checkpoint.read_variables(workdir)
  except FileNotFoundError:
    raise _fail(
      workdir,
      f"no checkpoint in {os.path.join(workdir, 'checkpoints')} (train with "
      "`python -m launch.train --workdir=...` first, and point --workdir at that run).",
    ) from None
  except Exception as error:  # noqa: BLE001
    raise _fail(
      workdir,
      f"its latest checkpoint is unreadable ({type(error).__name__}: "
      f"{(str(error).splitlines() or [''])[0]}).",
    ) from None
  variables = flax.core.unfreeze(variables)
  config = _saved_config(metadata)
  if data_dir is not None:
    config.data.data_dir = data_dir
  saved = metadata["dataset"]
  try:
    model = models.create_model(config, saved["num_classes"])
  except (ValueError, KeyError, AttributeError) as error:
    raise _fail(workdir, f"its saved config does not build a model ({error}).") from None
  _check_variables(workdir, model, variables, saved["input_shape"], metadata)
  described, note = _dataset_description(config, saved, workdir)
  preprocessing = _preprocessing(config, saved, described, workdir)
  notes = [note] if note else []
  active = _active_blocks(config, metadata, model)
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
