"""The paper's text grid: IMDB, AG News and DBpedia-14 x BiLSTM and Transformer x DeInfoReg, BP,
SCPL and AL x symmetric label noise 0/20/40/60 % x seeds 0-2, 50 epochs each (288 cells;
``--dry_run`` prints their cost in device-hours).

From the paper and its code (``launch/configs/spec_text.py``, the project spec, SPEC.md §5): the
datasets and their ``max_len`` (IMDB 350, AG News 60, DBpedia 350), the embedding block plus 4
BiLSTM or Transformer blocks, the four rules, 50 epochs, Adam 1e-3 constant, batch 128 (test
1024), a 30,000-word vocabulary, and its noise (``add_noise``: uniform over all classes,
training labels only).  Ours, because the paper does not state them: the noise rates, three
seeds and one GPU per cell; GloVe is off unless ``--grid.base.model.glove=glove.6B.300d.txt``.
Cells are named ``<dataset>__<rule>_<arch>__noise<rate>__seed<seed>``:

  python -m launch.experiments --grid=launch/configs/experiments/paper_text.py \\
      --root=/shared/paper_text --grid.base.data.data_dir=/shared/tfds \\
      --executor=ray --ray_address=auto --dry_run
"""

from deinforeg_jax.data.tfds_source import TEXT_MAX_LEN
from launch.configs.experiments import paper_grid
from launch.configs.spec_text import spec_text_config

RULES = ("deinforeg", "bp", "scpl", "al")
ARCHS = ("lstm", "transformer")
DATASETS = ("imdb_reviews", "ag_news_subset", "dbpedia")


def get_config():
  grid = paper_grid(spec_text_config, RULES, ARCHS, DATASETS)
  for dataset in DATASETS:
    grid.dataset_overrides[dataset] = {"data": {"max_len": TEXT_MAX_LEN[dataset]}}
  return grid
