"""Replay of a side oracle (``make_oracle.py --side=A``, ``benchmarks/oracle_side.py``): the
original's ``LSTM_DeInfoReg_side`` / ``Transformer_DeInfoReg_side`` against our ``config.grow``
new-feature block.

Our config is ``replay_text.make_config``'s (the ``reference`` preset with the oracle's sizes)
with ``grow.side_split = "time:A"`` and ``grow.side_layers = meta.arch``, built by
``models.create_model`` (a ``stack.SplitInputStack``); every old block (the embedding included)
is frozen as a grown run freezes it (``growth.freeze``; the train step's ``frozen``).  The
original's old stack maps as in ``replay_text.torch_map``, its new block (``newlayer``,
``newclassifier``) to ``block_N`` after them.  The scalar compared per step is the new block's
``L_InfoReg + 0.001 CE`` (the original returns that one only; ours also logs the frozen
blocks' losses).
"""

from __future__ import annotations

import numpy as np

from benchmarks import replay_text

# pylint: disable=protected-access


def torch_map(meta) -> dict:
  """``replay_text.torch_map`` of the old stack plus the new block as ``block_N``."""
  mapping = replay_text.torch_map(meta)
  name = f"block_{int(meta['blockwise_total']):02d}"
  encoder = (
    replay_text._lstm("newlayer")
    if meta["arch"] == "lstm"
    else replay_text._transformer("newlayer", 6)
  )
  for path, get in encoder.items():
    mapping[f"{name}/encoder/{path}"] = get
  for path, get in replay_text._linear("newclassifier.classifier.1").items():
    mapping[f"{name}/classifier/Dense_0/{path}"] = get
  return mapping


def prepare(oracle, meta, options):
  """The ``Replay`` of a side oracle for ``benchmarks.trajectory_parity``."""
  # pylint: disable=import-outside-toplevel
  from benchmarks.trajectory_parity import Replay, apply_overrides
  from deinforeg_jax import growth, models

  config = replay_text.make_config(meta)
  config.grow.side_split = f"time:{int(meta['side'])}"
  config.grow.side_layers = meta["arch"]
  config = apply_overrides(config, options.get("overrides", {}))
  model = models.create_model(config, int(meta["n_classes"]))
  phase = growth.freeze(model, len(model.blocks), range(len(model.blocks)))
  columns = meta["loss_block_columns"]
  mapping = torch_map(meta)
  settings = {k: meta[k] for k in ("torch_class", "side_dim", "vocab_size", "emb_dim", "h_dim",
                                   "max_len", "blockwise_total")}

  def new_block_loss(metrics, config) -> float:
    return float(np.sum(replay_text._loss_block(metrics, config, columns)[-1]))

  return Replay(
    config=config, model=phase.model, x=replay_text._Batches(oracle),
    y=oracle["y"].astype(np.int32), x_eval=oracle["x_eval"], settings=settings,
    loss_block=replay_text._loss_block,
    load=lambda prefix, template, dtype: replay_text.load_params(
      oracle, prefix, meta, template, dtype, mapping
    ),
    eval_logits=lambda outputs: np.stack([np.asarray(l, np.float64) for l in outputs["logits"]]),
    frozen=phase.frozen, total_loss=new_block_loss,
  )
