"""A trained run, ready to use: ``load(workdir)`` -> ``TrainedModel``.

``load`` reads a workdir that ``launch.train`` wrote (finished or interrupted) and
builds the model from the latest checkpoint and the config saved in its metadata
(``checkpoint.read_variables``); no training data and no launcher are needed.

    model = deinforeg_jax.load("runs/digits")
    out = model.predict(images)                  # raw pixels [N, H, W, C], exit="best"
    out.labels, out.probabilities, out.class_names
    model.predict(images, exit="adaptive")       # the run's early-exit rule (config.inference)
    model.predict(["a news text", ...], exit=0)  # a text run reads strings

Exits.  Exit ``e`` is the run's ``e``-th classifier, in the order of ``results.json``'s
``per_block_test_accuracy`` (its ``best_block`` is an exit index); ``exit_blocks[e]`` is
the ``block_XX`` that holds it (a text stack's ``block_00``, the embedding, has none).
``exit`` is one of:

* an int: that exit (negative counts from the last);
* ``"best"``: ``results.json``'s ``best_block`` when that file describes the loaded
  checkpoint (same step).  Otherwise (an interrupted run) the exit with the best test
  accuracy in the ``metrics.jsonl`` line of the checkpoint's step, else the last exit;
  ``best_exit_source`` says which rule chose it;
* ``"adaptive"``: ``inference.decide_exits`` with ``config.inference`` (patience, cosine
  threshold, sample or batch mode, counter reset), as ``results.json``'s adaptive report.
  Batch mode decides per chunk of ``batch_size`` rows.

Preprocessing (the run's own, ``Preprocessing``): images are raw pixels in the units the
dataset stores (``pixel_max``: 1 for [0, 1] floats such as digits, 255 for uint8), then
``(x - mean) / std`` per channel; uint8 inputs to a ``pixel_max = 1`` run are divided by
255 first.  Text is normalised and encoded with the run's ``vocab.json`` (``data.text``).
The statistics and class names are read from the checkpoint's dataset description; a
checkpoint without them (older runs) takes them from the dataset named in its config
(digits: embedded; a prepared TFDS dataset: its metadata in ``config.data.data_dir``),
and class names default to ``"0" .. "C-1"``.

Grown runs (``config.grow``: from a workdir, in-run schedule, new features) and pipeline
runs load like any other (checkpoints hold the whole one-program state); a run
interrupted before its schedule added every block uses the blocks trained so far.
Every problem is one ``WorkdirError`` / ``InputError`` line naming what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deinforeg_jax import checkpoint, growth, inference, models, stack
from deinforeg_jax.data import registry
from deinforeg_jax.data import text as text_data


class WorkdirError(ValueError):
  """The workdir cannot be used as a trained model; the message names what is missing."""


class InputError(ValueError):
  """The inputs do not fit the model (shape, size, kind)."""


# ------------------------------------------------------------------ preprocessing


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How raw inputs become the model's input (``kind`` "image" or "text").

  Image: raw pixels ``[N, H, W, C]`` in ``[0, pixel_max]`` -> ``(x - mean) / std`` float32.
  Text: ``normalize`` (lower case, HTML tags and punctuation removed, stop words removed
  when ``stop_words``), the first ``max_len`` words to ids of ``vocabulary``, padded with 0.
  """

  kind: str
  input_shape: tuple[int, ...]
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  pixel_max: float = 1.0
  vocabulary: text_data.Vocabulary | None = None

  @property
  def dtype(self) -> np.dtype:
    """The model input's dtype: int32 token ids or float32 pixels."""
    return np.dtype(np.int32 if self.kind == "text" else np.float32)

  def __call__(self, inputs) -> np.ndarray:
    """Raw inputs (images ``[N, H, W, C]`` / ``[N, H, W]``, or a sequence of strings) ->
    the model's input ``[N, *input_shape]``.  Raises ``InputError`` for a wrong shape."""
    return self.texts(inputs) if self.kind == "text" else self.images(inputs)

  def images(self, images) -> np.ndarray:
    if self.kind != "image":
      raise InputError("this model reads text: give strings (or token ids with preprocessed=True)")
    if isinstance(images, str) or (
      isinstance(images, Sequence) and images and isinstance(images[0], str)
    ):
      raise InputError("this model reads images, not text: give pixels [N, H, W, C]")
    x = np.asarray(images)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
      raise InputError(f"images must hold real numbers, got dtype {x.dtype}")
    if x.ndim == len(self.input_shape) and self.input_shape[-1] == 1:
      x = x[..., None]  # [N, H, W] grey
    self.check(x, "images (raw pixels)")
    scale = 1.0 / 255.0 if x.dtype == np.uint8 and self.pixel_max == 1.0 else 1.0
    x = x.astype(np.float32) * np.float32(scale)
    return (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)

  def texts(self, texts: Sequence[str]) -> np.ndarray:
    if self.kind != "text":
      raise InputError("this model reads images, not text")
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
      raise InputError(
        "this model reads text: give a sequence of strings, one per example (or token ids "
        f"[N, {self.input_shape[0]}] with preprocessed=True)"
      )
    settings = self.vocabulary.settings
    words = [text_data.normalize(t, stop_words=settings.stop_words) for t in texts]
    return text_data.encode(words, self.vocabulary, self.input_shape[0])

  def check(self, x: np.ndarray, what: str) -> None:
    """``InputError`` unless ``x`` is ``[N, *input_shape]``."""
    if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != tuple(self.input_shape):
      expected = "x".join(str(d) for d in self.input_shape)
      raise InputError(
        f"{what} have shape {list(x.shape)}, but the model takes [N, {expected}] "
        f"({'token ids' if self.kind == 'text' else 'height x width x channels'}); resize or "
        "convert them to that size first."
      )

  def to_json(self) -> dict[str, Any]:
    """The preprocessing as JSON (``launch.export``'s description)."""
    out: dict[str, Any] = {"kind": self.kind, "input_shape": list(self.input_shape)}
    if self.kind == "image":
      out.update(
        mean=list(self.mean),
        std=list(self.std),
        pixel_max=self.pixel_max,
        formula="(x - mean) / std per channel; x: raw pixels [N, H, W, C] in [0, pixel_max] "
        "(uint8 inputs to a pixel_max=1 model are divided by 255 first)",
      )
    else:
      settings = self.vocabulary.settings
      out.update(
        max_len=self.input_shape[0],
        stop_words=settings.stop_words,
        pad_id=text_data.PAD_ID,
        unk_id=text_data.UNK_ID,
        formula="lower case; HTML tags -> space; ASCII punctuation deleted; split on "
        "whitespace; English stop words removed (scikit-learn's list) when stop_words; "
        "first max_len words -> ids of vocabulary (unknown: unk_id), right-padded with pad_id",
        vocabulary=list(self.vocabulary.words),
      )
    return out


# ------------------------------------------------------------------ predictions


@dataclasses.dataclass(frozen=True)
class Prediction:
  """Per input: ``labels`` int ``[N]``, ``probabilities`` float32 ``[N, C]`` (softmax of the
  exit used), ``exits`` int ``[N]`` (exit index) and ``blocks`` int ``[N]`` (its block)."""

  labels: np.ndarray
  probabilities: np.ndarray
  exits: np.ndarray
  blocks: np.ndarray
  class_names: tuple[str, ...]

  @property
  def names(self) -> list[str]:
    """The class name of each predicted label."""
    return [self.class_names[k] for k in self.labels]

  @property
  def confidence(self) -> np.ndarray:
    """The probability of each predicted label ``[N]``."""
    return np.take_along_axis(self.probabilities, self.labels[:, None], axis=1)[:, 0]


@dataclasses.dataclass
class TrainedModel:
  """A trained run: model, variables, preprocessing, class names and the exit rules."""

  workdir: str
  config: ml_collections.ConfigDict
  metadata: dict[str, Any]
  model: Any  # the Flax module (``models.create_model``), the blocks the run trained
  variables: dict[str, Any]  # {"params", "batch_stats"} host arrays
  preprocessing: Preprocessing
  class_names: tuple[str, ...]
  exit_blocks: list[int]
  best_exit: int
  best_exit_source: str
  notes: list[str] = dataclasses.field(default_factory=list)
  _programs: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

  @property
  def step(self) -> int:
    return int(self.metadata["step"])

  @property
  def num_exits(self) -> int:
    return len(self.exit_blocks)

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def kind(self) -> str:
    return self.preprocessing.kind

  def describe(self) -> str:
    """One line: what was loaded."""
    return (
      f"{self.config.rule} {self.config.model.arch} on {self.metadata['dataset']['name']} "
      f"(step {self.step}, {self.num_exits} exits at blocks {self.exit_blocks}, "
      f"{self.num_classes} classes; best exit {self.best_exit}: {self.best_exit_source})"
    )

  # -------------------------------------------------------------- logits

  def _apply(self):
    if "logits" not in self._programs:
      model = self.model
      self._programs["logits"] = jax.jit(
        lambda v, x: jnp.stack(model.apply(v, x, train=False)["logits"])
      )
      self._programs["variables"] = jax.device_put(self.variables)
    return self._programs["logits"], self._programs["variables"]

  def model_input(self, inputs, preprocessed: bool = False) -> np.ndarray:
    """``inputs`` as the model's input ``[N, *input_shape]`` (``preprocess`` unless
    ``preprocessed``, which checks the shape only)."""
    if not preprocessed:
      return self.preprocessing(inputs)
    x = np.asarray(inputs, self.preprocessing.dtype)
    self.preprocessing.check(x, "preprocessed inputs")
    return x

  def _chunks(self, x: np.ndarray, batch_size: int | None):
    """``(chunk [b, ...], real rows)``: ``x`` in chunks of ``batch_size`` rows, the last
    padded with zeros when ``x`` is longer than one chunk (one compiled size)."""
    size = int(batch_size or self.config.data.eval_batch_size)
    if len(x) <= size:
      yield x, len(x)
      return
    for start in range(0, len(x), size):
      chunk = x[start : start + size]
      real = len(chunk)
      if real < size:
        chunk = np.concatenate([chunk, np.zeros((size - real, *x.shape[1:]), x.dtype)])
      yield chunk, real

  def logits(self, inputs, *, preprocessed: bool = False, batch_size: int | None = None):
    """Every exit's logits, float32 ``[K, N, C]``."""
    x = self.model_input(inputs, preprocessed)
    apply, variables = self._apply()
    parts = [np.asarray(apply(variables, c))[:, :real] for c, real in self._chunks(x, batch_size)]
    if not parts:
      return np.zeros((self.num_exits, 0, self.metadata["dataset"]["num_classes"]), np.float32)
    return np.concatenate(parts, axis=1)

  # -------------------------------------------------------------- exits

  def resolve_exit(self, exit: int | str) -> int | str:  # pylint: disable=redefined-builtin
    """An exit index, or ``"adaptive"``; ``ValueError`` naming the choices otherwise."""
    if isinstance(exit, str) and exit.lstrip("-").isdigit():
      exit = int(exit)
    if exit == "best":
      return self.best_exit
    if exit == "adaptive":
      return "adaptive"
    if isinstance(exit, (int, np.integer)) and not isinstance(exit, bool):
      if -self.num_exits <= exit < self.num_exits:
        return int(exit) % self.num_exits
    raise ValueError(
      f"exit={exit!r}: choose an exit index 0..{self.num_exits - 1} (blocks "
      f"{self.exit_blocks}), 'best' or 'adaptive'."
    )

  def decide(
    self, logits: np.ndarray, batch_size: int | None = None, mask: np.ndarray | None = None
  ) -> np.ndarray:
    """Exit index per row ``[N]`` of the run's adaptive rule over ``logits`` ``[K, N, C]``
    (in chunks of ``batch_size`` rows; one batch when ``mask`` is given)."""
    cfg = self.config.inference
    if "decide" not in self._programs:
      self._programs["decide"] = jax.jit(
        inference.decide_exits, static_argnames=("mode", "reset")
      )
    decide = self._programs["decide"]
    if mask is not None:
      chunks = [(np.moveaxis(logits, 1, 0), np.asarray(mask, np.float32))]
    else:
      chunks = []
      for chunk, real in self._chunks(np.moveaxis(logits, 1, 0), batch_size):
        chunks.append((chunk, (np.arange(len(chunk)) < real).astype(np.float32)))
    exits = []
    for chunk, rows in chunks:
      out = decide(
        np.moveaxis(chunk, 0, 1),
        cfg.patience,
        cfg.cosine_threshold,
        rows,
        mode=cfg.exit_mode,
        reset=cfg.patience_reset,
      )
      exits.append(np.asarray(out["exit"])[: int(rows.sum())] if mask is None else out["exit"])
    return np.concatenate(exits) if exits else np.zeros((0,), np.int32)

  def predict(
    self,
    inputs,
    exit: int | str = "best",  # pylint: disable=redefined-builtin
    *,
    preprocessed: bool = False,
    batch_size: int | None = None,
  ) -> Prediction:
    """Labels and probabilities of ``inputs`` at ``exit`` (module docstring).

    ``inputs``: raw images ``[N, H, W, C]`` (or ``[N, H, W]`` for one channel) or a
    sequence of strings; with ``preprocessed=True`` the model's input itself
    (normalised float32 images, or int32 token ids ``[N, max_len]``).
    """
    chosen = self.resolve_exit(exit)
    logits = self.logits(inputs, preprocessed=preprocessed, batch_size=batch_size)
    return self.prediction(logits, chosen, batch_size)

  def prediction(
    self,
    logits: np.ndarray,
    exit: int | str,  # pylint: disable=redefined-builtin
    batch_size: int | None = None,
    mask: np.ndarray | None = None,
  ) -> Prediction:
    """``Prediction`` from exit logits ``[K, N, C]`` (``exit``: as in ``predict``).

    ``mask`` ``[N]`` (1 real, 0 padding): decide ``"adaptive"`` over the ``N`` rows as one
    batch, ignoring padding (an evaluation batch), instead of chunks of ``batch_size``.
    """
    chosen = self.resolve_exit(exit)
    n = logits.shape[1]
    if chosen == "adaptive":
      exits = self.decide(logits, batch_size, mask).astype(np.int64)
    else:
      exits = np.full((n,), chosen, np.int64)
    chosen_logits = logits[exits, np.arange(n)] if n else logits[0]
    probabilities = np.asarray(jax.nn.softmax(chosen_logits.astype(np.float32), axis=-1))
    return Prediction(
      labels=np.argmax(chosen_logits, axis=-1).astype(np.int64),
      probabilities=probabilities,
      exits=exits,
      blocks=np.asarray(self.exit_blocks, np.int64)[exits],
      class_names=self.class_names,
    )


# ------------------------------------------------------------------ loading


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

