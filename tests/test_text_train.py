"""End-to-end text training: launcher path, GloVe initialisation, saved vocabulary on resume."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from helpers import text_data_config, toy_records, write_jsonl

from deinforeg_jax import models, optim, steps, train
from deinforeg_jax.data import glove, load_dataset, text
from deinforeg_jax.data.prepare import text as text_prepare


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
  root = tmp_path_factory.mktemp("text_train")
  write_jsonl(root / "train.jsonl.gz", toy_records(32, 0))
  write_jsonl(root / "test.jsonl.gz", toy_records(9, 1))
  text_prepare.prepare_jsonl(
    "toy_text", str(root / "tfds"), str(root / "train.jsonl.gz"), str(root / "test.jsonl.gz")
  )
  with open(root / "glove.txt", "w") as f:
    f.write("alpha 1 2 3 4\nbeta 5 6 7 8\nnotinvocab 0 0 0 0\n")
  return root


def test_glove_vectors_replace_the_initial_embedding_rows(toy):
  config = text_data_config(toy / "tfds")
  config.model.glove = str(toy / "glove.txt")
  data = load_dataset(config.data)
  model = models.create_model(config, data.info.num_classes)
  state = steps.create_train_state(
    model, optim.make_optimizer(config.optim, lambda _: 1e-3), jax.random.key(0), (6,)
  )
  state, note = glove.initialise_embedding(config, state, data.vocabulary)
  table = np.asarray(state.params["block_00"]["encoder"]["embedding"])
  assert table.shape == (config.data.vocab_size, 4)
  np.testing.assert_array_equal(table[data.vocabulary.id("alpha")], [1, 2, 3, 4])
  np.testing.assert_array_equal(table[data.vocabulary.id("beta")], [5, 6, 7, 8])
  assert "2 of 10 vocabulary words found" in note


def test_text_run_logs_embedding_loss_and_refuses_another_vocabulary_on_resume(toy, tmp_path):
  config = text_data_config(toy / "tfds")
  config.model.glove = str(toy / "glove.txt")
  config.parallel.num_devices = 1  # an 8-device mesh only compiles and runs slower
  results = train.train_and_evaluate(config, str(tmp_path))
  assert len(results["per_block_test_accuracy"]) == 1  # one LSTM block = one exit
  with open(tmp_path / "metrics.jsonl") as f:
    record = json.loads(f.readline())
  assert record["train_embedding_loss"] > 0
  assert len(record["train_loss"]) == 1
  saved = text.load_vocabulary(str(tmp_path))
  assert saved.settings.max_len == 6 and saved.words[:2] == ("<pad>", "<unk>")
  config.data.stop_words = False
  with pytest.raises(text.VocabularyMismatchError, match="stop_words: saved True, now False"):
    train.train_and_evaluate(config, str(tmp_path))
