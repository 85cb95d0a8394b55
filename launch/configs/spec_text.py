"""The paper's text settings (the reference code's ``nlp/setting.py``), shared by the ``<dataset>_<arch>.py`` configs.

Embedding block (``block_00``) + 4 BiLSTM or Transformer blocks
(``config.model.num_blocks`` counts the blocks after the embedding), identity
projectors, ``Tanh-Dense(C)`` classifiers, Adam 1e-3 constant, batch 128 (test
1024), 50 epochs, vocabulary 30,000 from the training split, stop words removed.
The class count comes from the dataset, so each config trains on any prepared
text dataset by overriding ``config.data.name`` / ``config.data.data_dir`` (and
``config.data.max_len``).  GloVe: ``config.model.glove`` is a GloVe ``.txt`` or
``.npz`` path whose width must equal ``config.model.emb_dim`` ("" = random
``N(0, 1)`` init); the reference uses ``glove.6B.300d.txt``.

Deviations from the reference, with the reference behaviour as an option
(``launch/configs/reference.py:lstm`` / ``:transformer`` sets them all):
``embedding_pool="masked"`` (reference "all": mean over padding too),
``lstm_padding="masked"`` (reference "read": no packing), ``vocab_from="train"``
(reference "train_test").  Without an option: fixed ``max_len`` padding (reference:
per batch), scikit-learn's stop-word list (reference: NLTK's), equally frequent words
ordered alphabetically in the vocabulary (reference: by first occurrence), one
``model.heads`` for every rule (reference: BP ``--heads`` 4, the others 6), and AL's
Transformer layers mask the padding at evaluation too (the reference's
``Transformer_AL.inference`` passes the mask to layers 1-3 as ``label``), and IMDB is
TFDS's ``imdb_reviews``, 25,000 training and 25,000 test reviews (reference: a random 80/20
split of Kaggle's 50,000, 40,000 / 10,000; ``launch.prepare_data --jsonl=... --test_fraction=0.2``
makes such a split, stratified by class).
Step-for-step replays of the reference's eight text classes: ``tests/oracles``.
"""

import ml_collections

from deinforeg_jax.data.tfds_source import TEXT_MAX_LEN
from launch.configs import default


def spec_text_config(dataset: str, arch: str) -> ml_collections.ConfigDict:
  """The reference settings for ``dataset`` (a TFDS name) and ``arch`` ("lstm" | "transformer")."""
  config = default.get_config()
  config.data.kind = "text"
  config.data.name = dataset
  config.data.batch_size = 128
  config.data.eval_batch_size = 1024
  config.data.max_len = TEXT_MAX_LEN.get(dataset, 0)  # reference: IMDB 350, AG News 60, DBpedia 350

  config.model.arch = arch
  config.model.num_blocks = 4  # LSTM/Transformer blocks after the embedding block_00
  config.model.projector = ""  # identity, as the reference code's NLP models
  config.model.al_hidden = 300  # the reference's text AL label-code and bridge width

  config.optim.name = "adam"
  config.optim.base_lr = 1e-3
  config.optim.end_lr = 1e-3
  config.optim.schedule = "constant"
  config.optim.weight_decay = 0.0
  config.train.num_epochs = 50
  return config
