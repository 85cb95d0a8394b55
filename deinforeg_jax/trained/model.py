"""``TrainedModel``: a loaded run's model, variables, exits and predictions."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deinforeg_jax import inference
from deinforeg_jax.trained.preprocessing import InputError, Preprocessing


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
    """An exit index, or ``"adaptive"``; ``InputError`` naming the choices otherwise."""
    if isinstance(exit, str) and exit.lstrip("-").isdigit():
      exit = int(exit)
    if exit == "best":
      return self.best_exit
    if exit == "adaptive":
      return "adaptive"
    if isinstance(exit, (int, np.integer)) and not isinstance(exit, bool):
      if -self.num_exits <= exit < self.num_exits:
        return int(exit) % self.num_exits
    raise InputError(
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
