"""The SPEC text settings (SPEC 4.3, 4.4, 5.2), shared by the ``<dataset>_<arch>.py`` configs.

Embedding block (``block_00``) + 4 BiLSTM or Transformer blocks
(``config.model.num_blocks`` counts the blocks after the embedding), identity
projectors, ``Tanh-Dense(C)`` classifiers, Adam 1e-3 constant, batch 128 (test
1024), 50 epochs, vocabulary 30,000 from the training split, stop words removed.
The class count comes from the dataset, so each config trains on any prepared
text dataset by overriding ``config.data.name`` / ``config.data.data_dir`` (and
``config.data.max_len``).  GloVe: ``config.model.glove`` is a GloVe ``.txt`` or
``.npz`` path whose width must equal ``config.model.emb_dim`` ("" = random
``N(0, 1)`` init); the SPEC uses ``glove.6B.300d.txt``.

Deviations from the reference, with the reference behaviour as an option:
``embedding_pool="masked"`` (reference "all": mean over padding too),
``lstm_padding="masked"`` (reference "read": no packing), ``vocab_from="train"``
(reference "train_test"), fixed ``max_len`` padding (reference: per batch),
scikit-learn's stop-word list (reference: NLTK's).
"""

import ml_collections

from launch.configs import default

MAX_LEN = {"imdb_reviews": 350, "ag_news_subset": 60, "dbpedia": 350}


def spec_text_config(dataset: str, arch: str) -> ml_collections.ConfigDict:
  """SPEC settings for ``dataset`` (a TFDS name) and ``arch`` ("lstm" | "transformer")."""
  config = default.get_config()
  config.data.name = dataset
  config.data.batch_size = 128
  config.data.eval_batch_size = 1024
  config.data.max_len = MAX_LEN.get(dataset, 0)  # tokens kept per text (0: SPEC per dataset)
  config.data.vocab_size = 30000  # including <pad> = 0 and <unk> = 1
  config.data.stop_words = True  # remove English stop words (scikit-learn's list)
  config.data.vocab_from = "train"  # "train" | "train_test" (the reference)

  config.model.arch = arch
  config.model.num_blocks = 4  # LSTM/Transformer blocks after the embedding block_00
  config.model.projector = ""  # identity (SPEC 3.6)
  config.model.emb_dim = 300
  config.model.glove = ""  # GloVe .txt/.npz path, width emb_dim; "" = random init
  config.model.freeze_embedding = False  # True: the GloVe table is not trained
  config.model.embedding_pool = "masked"  # "masked" | "all" (reference: padding included)
  config.model.hidden = 300  # BiLSTM hidden size H per direction (output 2H)
  config.model.lstm_padding = "masked"  # "masked" (real tokens only) | "read" (reference)
  config.model.heads = 6  # Transformer heads (reference: DeInfoReg 6, BP 4)
  config.model.ff_dim = 300  # Transformer feed-forward width (d_model = emb_dim)
  config.model.dropout = 0.1  # Transformer dropout
  config.model.positional_encoding = False  # sinusoidal codes before block_01 (off in SPEC)

  config.optim.name = "adam"
  config.optim.base_lr = 1e-3
  config.optim.end_lr = 1e-3
  config.optim.schedule = "constant"
  config.optim.weight_decay = 0.0
  config.train.num_epochs = 50
  return config
