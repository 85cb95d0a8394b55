"""Text preprocessing: normalise, tokenise, vocabulary, fixed-length ids.

After the reference code's utils/nlp_utils.py (``data_preprocessing``, ``create_vocab``).

``normalize``: lower case, HTML tags replaced by a space, ASCII punctuation
deleted (``"don't"`` -> ``"dont"``), optionally English stop words removed
(scikit-learn's 318-word list; the reference used NLTK's 179-word list, which
needs a download).  Tokens are the whitespace-separated words.

``Vocabulary``: ``<pad>`` = 0, ``<unk>`` = 1, then the ``size - 2`` most frequent
words (ties broken alphabetically, so the result is deterministic), counted on
the training texts only (the reference also counted the test texts; that is
``vocab_from="train_test"``).  It is saved as JSON with the settings that made
it, and a saved vocabulary whose settings differ from the current ones is
refused (``VocabularyMismatchError``) rather than silently rebuilt.

``encode``: ids ``int32 [N, max_len]``, truncated to the first ``max_len`` words
and right-padded with 0.  The reference padded each batch to its longest
sequence; a fixed ``max_len`` keeps shapes static for ``jax.jit``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import re
import string
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from deinforeg_jax import safe_files
from deinforeg_jax.config_error import ConfigError

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
VOCAB_FROM = ("train", "train_test")
VOCAB_FILE = "vocab.json"
FORMAT_VERSION = 1

_HTML_TAG = re.compile(r"<[^>]*>")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@functools.cache
def _stop_words() -> frozenset[str]:
  from sklearn.feature_extraction.text import (  # pylint: disable=import-outside-toplevel
    ENGLISH_STOP_WORDS,
  )

  return frozenset(w.translate(_PUNCTUATION) for w in ENGLISH_STOP_WORDS)


def normalize(text: str, *, stop_words: bool = True) -> list[str]:
  """``"<b>Don't</b> PANIC!"`` -> ``["dont", "panic"]`` (the words of ``text``)."""
  text = _HTML_TAG.sub(" ", text.lower()).translate(_PUNCTUATION)
  words = text.split()
  if stop_words:
    stop = _stop_words()
    words = [w for w in words if w not in stop]
  return words


@dataclasses.dataclass(frozen=True)
class TextSettings:
  """Everything that fixes the token ids of a dataset (saved with the vocabulary)."""

  dataset: str
  vocab_size: int = 30000
  max_len: int = 350
  stop_words: bool = True
  vocab_from: str = "train"

  def __post_init__(self):
    if self.vocab_size < 3:
      raise ConfigError(f"config.data.vocab_size={self.vocab_size} must be at least 3.")
    if self.max_len < 1:
      raise ConfigError(f"config.data.max_len={self.max_len} must be a positive integer.")
    if self.vocab_from not in VOCAB_FROM:
      raise ConfigError(f"config.data.vocab_from={self.vocab_from!r} must be one of {VOCAB_FROM}.")


class VocabularyMismatchError(ValueError):
  """A saved vocabulary was built with other settings than the current ones."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """``words[i]`` is the word of id ``i``; ``words[0] = <pad>``, ``words[1] = <unk>``."""

  words: tuple[str, ...]
  settings: TextSettings

  def __post_init__(self):
    if self.words[:2] != (PAD, UNK):
      raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {self.words[:2]}")
    object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words)})

  def __len__(self) -> int:
    return len(self.words)

  def id(self, word: str) -> int:
    """The id of ``word``; ``UNK_ID`` for a word outside the vocabulary."""
    return self._ids.get(word, UNK_ID)

  def to_json(self) -> dict[str, Any]:
    return {
      "format_version": FORMAT_VERSION,
      "settings": dataclasses.asdict(self.settings),
      "words": list(self.words),
    }


def build_vocabulary(texts: Iterable[Sequence[str]], settings: TextSettings) -> Vocabulary:
  """The ``settings.vocab_size - 2`` most frequent words of the tokenised ``texts``.

  Ties are broken alphabetically; fewer distinct words give a shorter vocabulary.
  """
  counts = collections.Counter()
  for words in texts:
    counts.update(words)
  counts.pop(PAD, None)
  counts.pop(UNK, None)
  ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
  words = (PAD, UNK) + tuple(w for w, _ in ranked[: settings.vocab_size - 2])
  return Vocabulary(words, settings)


def save_vocabulary(vocab: Vocabulary, directory: str) -> str:
  """Writes ``<directory>/vocab.json`` atomically; returns its path."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, VOCAB_FILE)
  safe_files.write_atomic(path, json.dumps(vocab.to_json()))
  return path


def load_vocabulary(directory: str, expected: TextSettings | None = None) -> Vocabulary | None:
  """The vocabulary saved in ``directory``, or None when there is none.

  Raises:
    VocabularyMismatchError: its settings differ from ``expected``.
  """
  path = os.path.join(directory, VOCAB_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    saved = json.load(f)
  settings = TextSettings(**saved["settings"])
  if expected is not None and settings != expected:
    diffs = [
      f"{field}: saved {getattr(settings, field)!r}, now {getattr(expected, field)!r}"
      for field in (f.name for f in dataclasses.fields(TextSettings))
      if getattr(settings, field) != getattr(expected, field)
    ]
    raise VocabularyMismatchError(
      f"{path} was built with other text settings ({'; '.join(diffs)}), so its token ids do "
      "not fit this run. Use a new --workdir, or restore the config.data fields that built it "
      "(dataset name, vocab_size, max_len, stop_words, vocab_from)."
    )
  return Vocabulary(tuple(saved["words"]), settings)


def encode(texts: Iterable[Sequence[str]], vocab: Vocabulary, max_len: int) -> np.ndarray:
  """Token ids ``int32 [N, max_len]``: the first ``max_len`` words, right-padded with 0."""
  rows = []
  for words in texts:
    row = np.zeros(max_len, np.int32)
    ids = [vocab.id(w) for w in words[:max_len]]
    row[: len(ids)] = ids
    rows.append(row)
  return np.stack(rows) if rows else np.zeros((0, max_len), np.int32)


class TextSplit:
  """An in-memory tokenised split: ``tokens`` int32 ``[N, T]``, ``labels`` int ``[N]``.

  A record source for ``loader``: ``split[i] = {"tokens": [T], "label": int}``.
  """

  def __init__(self, tokens: np.ndarray, labels: np.ndarray):
    tokens, labels = np.asarray(tokens), np.asarray(labels)
    if tokens.ndim != 2 or labels.shape != tokens.shape[:1]:
      raise ValueError(
        f"expected tokens [N, T] and labels [N], got {tokens.shape} and {labels.shape}"
      )
    self.tokens = tokens.astype(np.int32)
    self._labels = labels

  def __len__(self) -> int:
    return len(self._labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {"tokens": self.tokens[index], "label": int(self._labels[index])}

  def labels(self) -> np.ndarray:
    return self._labels


def tokenize_splits(
  train_texts: Sequence[str],
  test_texts: Sequence[str],
  settings: TextSettings,
  workdir: str | None = None,
) -> tuple[np.ndarray, np.ndarray, Vocabulary]:
  """Normalised, encoded train/test ids and the vocabulary.

  With ``workdir`` the vocabulary saved there is reused (and must match
  ``settings``), else it is built and saved there; without, it is only built.
  """
  train_words = [normalize(t, stop_words=settings.stop_words) for t in train_texts]
  test_words = [normalize(t, stop_words=settings.stop_words) for t in test_texts]
  vocab = load_vocabulary(workdir, settings) if workdir else None
  if vocab is None:
    source = train_words + test_words if settings.vocab_from == "train_test" else train_words
    vocab = build_vocabulary(source, settings)
    if workdir:
      save_vocabulary(vocab, workdir)
  max_len = settings.max_len
  return encode(train_words, vocab, max_len), encode(test_words, vocab, max_len), vocab
