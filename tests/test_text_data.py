"""Tests of the text data path: normalisation, vocabulary, ids, GloVe, jsonl -> TFDS -> batches.

Data is generated here; the optional tests on ``../shared/data`` skip when it is absent.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from helpers import data_config, text_data_config, toy_records, write_jsonl
from deinforeg_jax.data import glove, load_dataset, prepare, text
from deinforeg_jax.data.loader import eval_batches, train_batches

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def settings(**overrides):
  return text.TextSettings(**{"dataset": "toy", "vocab_size": 8, "max_len": 4, **overrides})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("text")
  write_jsonl(root / "train.jsonl.gz", toy_records(30, 0))
  write_jsonl(root / "test.jsonl.gz", toy_records(9, 1, extra_word="omega"))
  result = prepare.prepare_jsonl(
    "toy_text", str(root / "tfds"), str(root / "train.jsonl.gz"), str(root / "test.jsonl.gz")
  )
  return root, result


# ------------------------------------------------------------------ normalise, vocabulary, ids


def test_normalize_lowercases_strips_html_and_punctuation_and_stop_words():
  raw = "<b>Don't</b> PANIC!<br />The answer: 42, is it?"
  assert text.normalize(raw, stop_words=False) == [
    "dont",
    "panic",
    "the",
    "answer",
    "42",
    "is",
    "it",
  ]
  assert text.normalize(raw) == ["dont", "panic", "answer", "42"]


def test_vocabulary_is_deterministic_and_ranked_by_count_then_alphabet():
  texts = [["b", "a", "c"], ["a", "c", "d"], ["a", "e"], ["c"]]
  vocab = text.build_vocabulary(texts, settings(vocab_size=5))
  assert vocab.words == ("<pad>", "<unk>", "a", "c", "b")  # a:3, c:3, then b/d/e tie -> "b"
  assert text.build_vocabulary(texts[::-1], settings(vocab_size=5)).words == vocab.words
  assert (vocab.id("a"), vocab.id("zzz"), vocab.id("<pad>")) == (2, text.UNK_ID, text.PAD_ID)


def test_encode_truncates_pads_with_zero_and_marks_unknown_words():
  vocab = text.build_vocabulary([["a", "b", "c"]], settings())
  ids = text.encode([["a", "x"], ["c", "b", "a", "c", "b"], []], vocab, max_len=4)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, [[2, 1, 0, 0], [4, 3, 2, 4], [0, 0, 0, 0]])


def test_tokenize_splits_builds_from_train_only_unless_parity_option():
  train_texts, test_texts = ["red blue red"], ["blue green"]
  train_ids, test_ids, vocab = text.tokenize_splits(train_texts, test_texts, settings())
  assert "green" not in vocab.words and test_ids[0, 1] == text.UNK_ID
  _, test_ids, both = text.tokenize_splits(
    train_texts, test_texts, settings(vocab_from="train_test")
  )
  assert "green" in both.words and test_ids[0, 1] == both.id("green")
  assert train_ids.shape == (1, 4)


def test_saved_vocabulary_is_reused_and_a_mismatch_is_refused(tmp_path):
  _, _, vocab = text.tokenize_splits(["one two two"], ["two"], settings(), str(tmp_path))
  assert (tmp_path / text.VOCAB_FILE).exists()
  # Other training text: the saved vocabulary wins, so the ids do not change.
  _, _, again = text.tokenize_splits(["three three three"], ["two"], settings(), str(tmp_path))
  assert again.words == vocab.words
  with pytest.raises(text.VocabularyMismatchError, match="max_len: saved 4, now 9"):
    text.tokenize_splits(["one"], ["two"], settings(max_len=9), str(tmp_path))
  assert text.load_vocabulary(str(tmp_path)).words == vocab.words  # nothing overwritten


# ------------------------------------------------------------------ GloVe


def test_glove_text_and_npz_give_the_same_matrix_and_seeded_unknown_rows(tmp_path):
  rng = np.random.default_rng(0)
  vectors = rng.normal(size=(3, 5)).astype(np.float32).round(4)
  words = ["alpha", "beta", "gamma"]
  with open(tmp_path / "g.txt", "w") as f:
    f.writelines(w + " " + " ".join(str(x) for x in v) + "\n" for w, v in zip(words, vectors))
  np.savez(tmp_path / "g.npz", words=np.array(words), vectors=vectors)
  vocab = ("<pad>", "<unk>", "beta", "omega", "alpha")
  m_txt, found = glove.embedding_matrix(vocab, str(tmp_path / "g.txt"), 5, rows=7, seed=3)
  m_npz, _ = glove.embedding_matrix(vocab, str(tmp_path / "g.npz"), 5, rows=7, seed=3)
  assert found == 2 and m_txt.shape == (7, 5)
  np.testing.assert_allclose(m_txt, m_npz)
  np.testing.assert_allclose(m_txt[2], vectors[1])
  np.testing.assert_allclose(m_txt[4], vectors[0])
  unknown = m_txt[[0, 1, 3, 5, 6]]
  assert unknown.min() >= 0.0 and unknown.max() < 1.0  # U[0, 1) as torch.rand
  other_seed, _ = glove.embedding_matrix(vocab, str(tmp_path / "g.txt"), 5, rows=7, seed=4)
  assert not np.allclose(other_seed[0], m_txt[0])
  with pytest.raises(ValueError, match="config.model.emb_dim=300 but .* 5-dimensional"):
    glove.embedding_matrix(vocab, str(tmp_path / "g.txt"), 300, rows=7)


def test_glove_subset_in_shared_data_covers_common_words():
  path = os.path.join(SHARED, "glove6b_50d_5k.npz")
  if not os.path.exists(path):
    pytest.skip("../shared/data is absent")
  matrix, found = glove.embedding_matrix(("<pad>", "<unk>", "the", "france"), path, 50, rows=4)
  assert found == 2
  np.testing.assert_allclose(matrix[2, :3], [0.418, 0.24968, -0.41242], atol=1e-6)


# ------------------------------------------------------------------ jsonl -> TFDS -> batches


def test_prepared_jsonl_loads_as_token_batches_and_saves_the_vocabulary(prepared, tmp_path):
  root, result = prepared
  assert result.num_examples == {"train": 30, "test": 9} and result.num_classes == 3
  data = load_dataset(text_data_config(root / "tfds").data, workdir=str(tmp_path))
  info = data.info
  assert (info.kind, info.input_shape, info.num_classes, info.num_train) == ("text", (6,), 3, 30)
  assert "omega" not in data.vocabulary.words  # test-only word: vocabulary from train only
  assert data.vocabulary.words[2:5] == ("alpha", "beta", "gamma")
  assert text.load_vocabulary(str(tmp_path)).words == data.vocabulary.words
  batch = next(train_batches(data.train, info, global_batch_size=8, seed=0, epoch=0))
  assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (8, 6)
  evals = list(eval_batches(data.test, info, global_batch_size=16))
  assert len(evals) == 1 and evals[0]["mask"].sum() == 9
  np.testing.assert_array_equal(evals[0]["tokens"][9:], 0)
  # Ids decode to the first max_len normalised words of the raw text.
  raw = prepare.read_jsonl(str(root / "test.jsonl.gz"))[0][0]
  decoded = [data.vocabulary.words[i] for i in data.test[0]["tokens"]]
  assert decoded == text.normalize(raw)[:6]


def test_label_noise_relabels_text_training_data(prepared):
  root, _ = prepared
  config = text_data_config(root / "tfds")
  config.data.label_noise.kind = "symmetric"
  config.data.label_noise.rate = 100
  data = load_dataset(config.data)
  assert data.label_noise["num_changed"] > 0
  assert (
    data.train.labels().tolist()
    != load_dataset(text_data_config(root / "tfds").data).train.labels().tolist()
  )
  assert isinstance(data.train, text.TextSplit)


def test_bad_jsonl_records_get_clear_errors(tmp_path):
  write_jsonl(tmp_path / "bad.jsonl.gz", [{"text": "a", "label": 0}, {"body": "b", "label": 1}])
  with pytest.raises(
    ValueError, match=r"bad.jsonl.gz:2: a record needs the fields 'text' and 'label'"
  ):
    prepare.read_jsonl(str(tmp_path / "bad.jsonl.gz"))
  write_jsonl(tmp_path / "neg.jsonl.gz", [{"text": "a", "label": -1}])
  with pytest.raises(ValueError, match="label -1 must be a 0-based integer class id"):
    prepare.read_jsonl(str(tmp_path / "neg.jsonl.gz"))


def test_image_config_on_a_text_dataset_says_to_use_a_text_config(prepared):
  root, _ = prepared
  with pytest.raises(ValueError, match="toy_text is a text dataset; train it with a text config"):
    load_dataset(data_config(name="toy_text", data_dir=str(root / "tfds")))


@pytest.mark.parametrize(
  "train_file, test_file, counts, classes",
  [
    ("ag_news_train_subset.jsonl.gz", "ag_news_test.jsonl.gz", (5000, 7600), 4),
    ("imdb_train.jsonl.gz", "imdb_test.jsonl.gz", (25000, 25000), 2),
  ],
)
def test_prepare_shared_jsonl(tmp_path, train_file, test_file, counts, classes):
  paths = [os.path.join(SHARED, f) for f in (train_file, test_file)]
  if not all(os.path.exists(p) for p in paths):
    pytest.skip("../shared/data is absent")
  result = prepare.prepare_jsonl("shared_text", str(tmp_path), *paths)
  assert (result.num_examples["train"], result.num_examples["test"]) == counts
  assert result.num_classes == classes


@pytest.mark.parametrize(
  "name, fields", [("imdb_reviews", ("text",)), ("ag_news_subset", ("title", "description"))]
)
def test_catalogue_text_datasets_map_to_their_text_fields(tmp_path, name, fields):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from deinforeg_jax.data.tfds_source import text_fields  # pylint: disable=import-outside-toplevel

  assert text_fields(tfds.builder(name, data_dir=str(tmp_path))) == fields  # info only, no data
