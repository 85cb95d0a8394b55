"""GloVe vectors and the initial embedding table (reference: utils/nlp_utils.py).

Sources: the standard GloVe text format (``glove.6B.300d.txt``: one word and its
``d`` floats per line, space-separated) or an ``.npz`` with ``words`` ``[N]`` and
``vectors`` float32 ``[N, d]`` (e.g. ``glove6b_50d_5k.npz``).  Only the words of
the vocabulary are kept while reading, so a 300d file needs no more memory than
the table.

``embedding_matrix``: row ``i`` is the GloVe vector of ``vocab.words[i]``; words
GloVe lacks, ``<pad>`` and ``<unk>`` included, get ``U[0, 1)`` vectors (the
reference's ``torch.rand``), drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from deinforeg_jax.data.text import Vocabulary
from deinforeg_jax.config_error import ConfigError


def read_vectors(path: str, wanted: set[str] | None = None) -> tuple[dict[str, np.ndarray], int]:
  """``({word: float32 [d]}, d)`` from a GloVe ``.txt`` or ``.npz`` (only ``wanted`` words)."""
  path = os.path.expanduser(path)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"config.model.glove={path!r} does not exist; give a GloVe .txt (e.g. glove.6B.300d.txt) "
      "or .npz (words, vectors) file, or '' for a random N(0, 1) embedding."
    )
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      if not {"words", "vectors"} <= set(data.files):
        raise ValueError(f"{path} must hold 'words' [N] and 'vectors' [N, d]; found {data.files}")
      words, vectors = data["words"], data["vectors"].astype(np.float32)
    dim = vectors.shape[1]
    table = {
      str(w): v for w, v in zip(words.tolist(), vectors) if wanted is None or str(w) in wanted
    }
    return table, dim
  table, dim = {}, None
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      parts = line.rstrip("\n").rstrip(" ").split(" ")
      if dim is None:
        dim = len(parts) - 1
      if len(parts) != dim + 1:
        raise ValueError(
          f"{path}:{number}: expected a word and {dim} numbers, got {len(parts) - 1} numbers"
        )
      if wanted is None or parts[0] in wanted:
        table[parts[0]] = np.asarray(parts[1:], np.float32)
  if dim is None:
    raise ValueError(f"{path} is empty")
  return table, dim


def embedding_matrix(
  vocab: Vocabulary | Sequence[str], path: str, emb_dim: int, *, rows: int, seed: int = 0
) -> tuple[np.ndarray, int]:
  """The initial table ``float32 [rows, emb_dim]`` and how many words GloVe covered.

  Rows past the vocabulary (``rows > len(vocab)``) are never looked up and are
  ``U[0, 1)`` like the other unknown words.

  Raises:
    ValueError: naming ``config.model.emb_dim`` when it differs from the file's width.
  """
  words = list(vocab.words if isinstance(vocab, Vocabulary) else vocab)
  if len(words) > rows:
    raise ValueError(f"{len(words)} vocabulary words do not fit a table of {rows} rows")
  vectors, dim = read_vectors(path, set(words))
  if dim != emb_dim:
    raise ConfigError(
      f"config.model.emb_dim={emb_dim} but {path} holds {dim}-dimensional vectors; set "
      f"config.model.emb_dim={dim} (and a divisible config.model.heads for a Transformer)."
    )
  matrix = np.random.default_rng(seed).random((rows, emb_dim), dtype=np.float32)
  found = 0
  for i, word in enumerate(words):
    if word in vectors:
      matrix[i] = vectors[word]
      found += 1
  return matrix, found


def with_embedding(params: dict, matrix: np.ndarray, block: str = "block_00") -> dict:
  """``params`` with ``block/encoder/embedding`` replaced by ``matrix`` (same shape)."""
  encoder = params[block]["encoder"]
  old = encoder["embedding"]
  if tuple(old.shape) != tuple(matrix.shape):
    raise ValueError(
      f"the embedding table is {tuple(old.shape)} but the GloVe matrix is {matrix.shape}"
    )
  return {**params, block: {**params[block], "encoder": {**encoder, "embedding": matrix}}}


def initialise_embedding(config, state, vocabulary) -> tuple[Any, str]:
  """A text run's ``TrainState`` with its embedding table set from ``config.model.glove`` (if
  any; placed as the table it replaces), and a note saying how many vocabulary words GloVe
  had ("" when nothing changed)."""
  path = config.model.glove if vocabulary is not None else ""
  if not path:
    return state, ""
  matrix, found = embedding_matrix(
    vocabulary, path, config.model.emb_dim, rows=config.data.vocab_size, seed=config.seed
  )
  old = state.params["block_00"]["encoder"]["embedding"]
  params = with_embedding(state.params, jax.device_put(matrix, old.sharding))
  note = f"GloVe {path}: {found} of {len(vocabulary)} vocabulary words found, the rest U[0, 1)"
  return state.replace(params=params), note
