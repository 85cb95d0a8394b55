"""imdb_reviews x transformer with the paper's text settings; the rule is chosen by ``--config.rule``.

  python -m launch.train --config=launch/configs/imdb_transformer.py --workdir=W \
      --config.data.data_dir=DIR [--config.model.glove=glove.6B.300d.txt] [--config.rule=bp]
"""

from launch.configs.spec_text import spec_text_config


def get_config():
  return spec_text_config("imdb_reviews", "transformer")
