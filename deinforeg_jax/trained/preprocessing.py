"""The run's own preprocessing: raw images or texts -> the model's input."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from deinforeg_jax.data import text as text_data


class InputError(ValueError):
  """The inputs do not fit the model (shape, size, kind, non-finite pixels)."""


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
    finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
    if not finite.all():
      bad = np.flatnonzero(~finite)
      raise InputError(
        f"{len(bad)} of {len(x)} images hold NaN or infinite pixels (the first: index "
        f"{bad[0]}); the model would classify them as garbage. Fix or drop them."
      )
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
