"""``config.data`` -> train/test sources, ``DatasetInfo`` and the label-noise summary.

``config.data.name``:
  - ``"digits"``: the embedded default (scikit-learn's bundled 8x8 digits, no files).
  - anything else: a TFDS image-classification dataset prepared (array_record) in
    ``config.data.data_dir`` ("" = TFDS's default ``~/tensorflow_datasets``), either a
    TFDS catalogue dataset (``cifar10``, ``cifar100``, ``mnist``...) or local data
    converted by ``python -m launch.prepare_data``. With ``config.data.download=True``
    TFDS downloads and prepares a catalogue dataset first.

Text (``config.data.kind == "text"``) reads a prepared TFDS text dataset
(``imdb_reviews``, ``ag_news_subset``, ``dbpedia`` or one made by
``launch.prepare_data --jsonl_train``), normalises and tokenises it into memory
(``data.text``) with ``max_len`` (0: the reference code's length for a catalogue dataset),
``vocab_size``, ``stop_words`` and ``vocab_from``; ``load_dataset(..., workdir=W)``
reuses / saves ``W/vocab.json``.

Other fields: ``split_seed`` (digits only), ``download``, ``label_noise`` (``kind``,
``rate`` in percent, ``seed``; training labels only, see ``label_noise``).  Every
field must be present: the defaults live in ``launch/configs/default.py`` (its
``get_config().data`` is a complete ``config.data``), and ``validate_config``
checks the allowed values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from deinforeg_jax.config_error import ConfigError
from deinforeg_jax.data.digits import load_digits
from deinforeg_jax.data.label_noise import RelabeledSource, apply_label_noise
from deinforeg_jax.data.loader import ArraySplit, DatasetInfo, RecordSource, validate_labels

EMBEDDED = {"digits": load_digits}


@dataclasses.dataclass(frozen=True)
class LoadedData:
  """A dataset ready for ``loader.train_batches`` / ``loader.eval_batches``.

  ``train`` yields the (possibly noisy) training labels; ``test`` is always clean.
  ``label_noise`` is ``{"kind", "rate", "seed", "num_changed", "changed_fraction"}``,
  or None when ``label_noise.kind == "none"``.  ``vocabulary`` is the
  ``text.Vocabulary`` of a text dataset, else None.
  """

  train: ArraySplit | RecordSource
  test: ArraySplit | RecordSource
  info: DatasetInfo
  label_noise: dict[str, Any] | None = None
  vocabulary: Any = None


def split_labels(split: ArraySplit | RecordSource) -> np.ndarray:
  """Every label of ``split`` as an array (TFDS splits read them without decoding images)."""
  if isinstance(split, ArraySplit):
    return np.asarray(split.labels)
  if hasattr(split, "labels") and callable(split.labels):
    return np.asarray(split.labels())
  records = (split[i] for i in range(len(split)))
  return np.asarray([r["label"] if isinstance(r, dict) else r[1] for r in records])


def _load_text(data_cfg, name: str, workdir: str | None):
  """Train/test ``TextSplit``s, ``DatasetInfo`` and vocabulary of a prepared text dataset."""
  from deinforeg_jax.data import text  # pylint: disable=import-outside-toplevel
  from deinforeg_jax.data.tfds_source import (  # pylint: disable=import-outside-toplevel
    TEXT_MAX_LEN,
    read_text_splits,
  )

  max_len = data_cfg.max_len or TEXT_MAX_LEN.get(name, 0)
  if not max_len:
    raise ConfigError(
      f"config.data.max_len=0 and {name!r} has no reference length; set config.data.max_len "
      "(reference: IMDB 350, AG News 60, DBpedia 350)."
    )
  settings = text.TextSettings(
    dataset=name,
    vocab_size=data_cfg.vocab_size,
    max_len=max_len,
    stop_words=bool(data_cfg.stop_words),
    vocab_from=data_cfg.vocab_from,
  )
  splits, class_names = read_text_splits(
    name,
    data_cfg.data_dir,
    download=bool(data_cfg.download),
  )
  train_ids, test_ids, vocab = text.tokenize_splits(
    splits["train"][0], splits["test"][0], settings, workdir
  )
  info = DatasetInfo(
    name=name,
    input_shape=(max_len,),
    num_classes=len(class_names),
    num_train=len(train_ids),
    num_test=len(test_ids),
    mean=(),
    std=(),
    pixel_max=1.0,
    class_names=class_names,
    kind="text",
  )
  train = text.TextSplit(train_ids, splits["train"][1])
  return train, text.TextSplit(test_ids, splits["test"][1]), info, vocab


def load_dataset(data_cfg, workdir: str | None = None) -> LoadedData:
  """Loads ``config.data``: sources, info, and the label noise applied to ``train``.

  Labels of both splits are range-checked against ``info.num_classes``.
  ``workdir`` (text only) holds the run's vocabulary: reused when saved there
  (refused when its settings differ), else built from the data and saved.
  """

  name = data_cfg.name
  vocabulary = None
  if data_cfg.kind == "text":
    train, test, info, vocabulary = _load_text(data_cfg, name, workdir)
  elif name in EMBEDDED:
    train, test, info = EMBEDDED[name](seed=data_cfg.split_seed)
  else:
    from deinforeg_jax.data.tfds_source import load_tfds  # pylint: disable=import-outside-toplevel

    train, test, info = load_tfds(
      name,
      data_cfg.data_dir,
      download=bool(data_cfg.download),
    )
  train_labels = split_labels(train)
  validate_labels(train_labels, info.num_classes, split_name=f"{info.name}/train")
  validate_labels(split_labels(test), info.num_classes, split_name=f"{info.name}/test")

  noise_cfg = data_cfg.label_noise
  noise = None
  if noise_cfg.kind != "none":
    noisy, noise = apply_label_noise(
      train_labels,
      info.num_classes,
      kind=noise_cfg.kind,
      rate=noise_cfg.rate,
      seed=noise_cfg.seed,
      class_names=info.class_names,
    )
    if isinstance(train, ArraySplit):
      train = ArraySplit(train.images, noisy)
    elif vocabulary is not None:
      train = type(train)(train.tokens, noisy)
    else:
      train = RelabeledSource(train, noisy)
  elif noise_cfg.rate:
    raise ConfigError(
      f"data.label_noise.rate={noise_cfg.rate} with kind='none'; set "
      "data.label_noise.kind to 'symmetric' or 'asymmetric' (or the rate to 0)"
    )
  return LoadedData(train=train, test=test, info=info, label_noise=noise, vocabulary=vocabulary)
