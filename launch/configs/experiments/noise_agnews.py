"""Label-noise study on the AG News subset: symmetric noise 0/20/40/60 %, two seeds.

A short CPU budget, so a small BiLSTM stack and Adam for every rule: GloVe 50d
(the 5k-word subset in ``../shared/data``), embedding block + 2 BiLSTM blocks of
hidden size 64, ``max_len`` 60, Adam 1e-3 constant (the reference's NLP setting), batch 128, 2 epochs:

  python -m launch.prepare_data --name=ag_news_5k --data_dir=$HOME/tfds \\
      --jsonl_train=../shared/data/ag_news_train_subset.jsonl.gz \\
      --jsonl_test=../shared/data/ag_news_test.jsonl.gz
  python -m launch.experiments --grid=launch/configs/experiments/noise_agnews.py \\
      --root=runs/noise_agnews --grid.base.data.data_dir=$HOME/tfds
"""

from launch.configs.experiments import make_grid
from launch.configs.spec_text import spec_text_config


def get_config():
  base = spec_text_config("ag_news_5k", "lstm")
  base.data.max_len = 60
  base.data.eval_batch_size = 760  # 7,600 test texts
  base.model.glove = "../shared/data/glove6b_50d_5k.npz"
  base.model.emb_dim = 50
  base.model.hidden = 64
  base.model.num_blocks = 2
  base.train.num_epochs = 2

  return make_grid(base, ("deinforeg", "bp"), ("ag_news_5k",), (0, 20, 40, 60))
