"""The text family of ``benchmarks.trajectory_parity``: oracles of the original's BiLSTM and
Transformer classes (``meta.arch`` ``lstm`` / ``transformer``, ``benchmarks/oracle_text.py``).

The oracle holds the original's token ids per batch (``x [T, B, L]``, batch ``t`` padded to its
own width ``x_len[t]``, as the original's ``collate``; the replay feeds exactly those widths, which
matter under the reference's ``lstm_padding="read"`` and ``embedding_pool="all"``), its initial
and final ``state_dict``, its loss per step and its eval outputs, in float32 and float64.
``make_config`` is ``launch/configs/reference.py``'s preset with the oracle's sizes.
``torch_map`` says where every one of our parameters comes from in the ``state_dict``:

* ``nn.Embedding.weight`` -> ``block_00/encoder/embedding``;
* ``nn.LSTM(bidirectional=True)`` -> ``input_kernel [2, D, 4H]`` (``weight_ih_l0{,_reverse}``
  transposed), ``recurrent_kernel``, ``bias`` (``bias_ih``) and ``recurrent_bias``
  (``bias_hh``); gates ``i, f, g, o`` in both;
* the Transformer encoder (``encoder.layers.0`` and ``encoder.norm``): attention
  ``linears.0..3`` -> ``query``, ``key``, ``value`` ``[D, heads, D/heads]`` and ``out``
  ``[heads, D/heads, D]``, ``feed_forward.w_2/w_1`` -> ``Dense_0/1``, the pre-norms and the
  final norm -> ``LayerNorm_0..2`` (``a, b`` -> ``scale, bias``).  The encoder also registers
  the modules it deep-copied (``multi_headed_attention``, ``feed_forward``, ``encoder_layer``);
  they never run, and the replay checks that the original left them unchanged;
* heads: ``classifier.k.classifier.1`` (DeInfoReg ``Tanh -> Linear``), ``fc.2`` (BP and SCPL),
  and AL's ``b.0``, ``g.0``, ``inv.0`` -> ``bridge``, ``label_encoder``, ``decoder``.

One departure is the original's and stays: ``Transformer_AL.inference`` passes the padding mask
to layers 1-3 in the place of their ``label`` argument, so at evaluation (only) they attend to
the padding; our AL masks it as in training.  Its eval logits are compared on the eval rows
without padding (``eval_rows`` in the printed row).
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import numpy as np

LSTM_DIRECTIONS = ("", "_reverse")
# The Transformer encoder's own modules, registered beside the deep copies in encoder.layers.0.
_UNUSED_COPIES = re.compile(
  r"(?<!layers\.0)\.(multi_headed_attention|feed_forward|encoder_layer)\."
)


def make_config(meta: dict[str, Any]):
  """``launch/configs/reference.py``'s preset for ``meta.arch`` with the oracle's sizes.

  Besides sizes: the rule, seed, learning rate, the Transformer BP's ``heads`` (the original:
  ``args.heads`` for BP, ``_make_layer``'s 6 for the others) and ``model.dropout = 0`` (the
  maker switches the original's dropout off).
  """
  from launch.configs import reference  # pylint: disable=import-outside-toplevel

  from benchmarks.trajectory_parity import OracleError  # pylint: disable=import-outside-toplevel

  if meta.get("optimal", "ADAM") != "ADAM":
    raise OracleError(f"meta.optimal={meta['optimal']!r}: the text replay runs Adam only.")
  config = reference.get_config(meta["arch"])
  config.rule = meta["rule"]
  config.seed = int(meta.get("seed", 0))
  config.data.vocab_size = int(meta["vocab_size"])
  config.data.batch_size = int(meta["batch"])
  config.model.num_blocks = int(meta["blockwise_total"]) - 1
  config.model.emb_dim = int(meta["emb_dim"])
  config.model.hidden = int(meta["h_dim"])
  config.model.ff_dim = int(meta["h_dim"])
  config.model.al_hidden = int(meta.get("al_hidden", 300))
  if meta["rule"] == "bp":
    config.model.heads = int(meta["heads"])
  config.model.dropout = 0.0
  config.optim.base_lr = config.optim.end_lr = float(meta["lr"])
  config.parallel.num_devices = 1
  return config


def _torch_prefixes(meta) -> list[str]:
  """The ``state_dict`` prefix of the embedding and of each of the following layers."""
  rule, layers = meta["rule"], int(meta["blockwise_total"]) - 1
  if rule == "deinforeg":
    return ["embedding"] + [f"layer.{k}" for k in range(layers)]
  if rule == "al":
    return ["embedding.f"] + [f"layer{k + 1}.f" for k in range(layers)]
  return ["embedding"] + [f"layer{k + 1}" for k in range(layers)]


Take = Callable[[str], np.ndarray]


def _linear(prefix: str) -> dict[str, Callable[[Take], np.ndarray]]:
  return {"kernel": lambda t: t(f"{prefix}.weight").T, "bias": lambda t: t(f"{prefix}.bias")}


def _lstm(prefix: str) -> dict[str, Callable[[Take], np.ndarray]]:
  def both(name, transpose):
    def get(t):
      parts = [t(f"{prefix}.{name}_l0{d}") for d in LSTM_DIRECTIONS]
      return np.stack([p.T if transpose else p for p in parts])

    return get

  return {
    "input_kernel": both("weight_ih", True),
    "recurrent_kernel": both("weight_hh", True),
    "bias": both("bias_ih", False),
    "recurrent_bias": both("bias_hh", False),
  }


def _transformer(prefix: str, heads: int) -> dict[str, Callable[[Take], np.ndarray]]:
  layer = f"{prefix}.encoder.layers.0"
  attention = f"{layer}.self_attn.linears"
  out: dict[str, Callable[[Take], np.ndarray]] = {}
  for i, name in enumerate(("query", "key", "value")):
    def kernel(t, i=i):
      w = t(f"{attention}.{i}.weight")
      return w.T.reshape(w.shape[1], heads, -1)

    out[f"MultiHeadDotProductAttention_0/{name}/kernel"] = kernel
    out[f"MultiHeadDotProductAttention_0/{name}/bias"] = (
      lambda t, i=i: t(f"{attention}.{i}.bias").reshape(heads, -1)
    )
  out["MultiHeadDotProductAttention_0/out/kernel"] = (
    lambda t: t(f"{attention}.3.weight").T.reshape(heads, -1, t(f"{attention}.3.weight").shape[0])
  )
  out["MultiHeadDotProductAttention_0/out/bias"] = lambda t: t(f"{attention}.3.bias")
  # Dense(D)(relu(Dense(ff)(y))): the outer Dense is constructed (and named) first.
  for i, w in enumerate(("w_2", "w_1")):
    for name, get in _linear(f"{layer}.feed_forward.{w}").items():
      out[f"Dense_{i}/{name}"] = get
  norms = [f"{layer}.sublayer.0.norm", f"{layer}.sublayer.1.norm", f"{prefix}.encoder.norm"]
  for i, norm in enumerate(norms):
    out[f"LayerNorm_{i}/scale"] = lambda t, norm=norm: t(f"{norm}.a")
    out[f"LayerNorm_{i}/bias"] = lambda t, norm=norm: t(f"{norm}.b")
  return out


def torch_map(meta) -> dict[str, Callable[[Take], np.ndarray]]:
  """``{our parameter path: getter(take) -> array}`` for the oracle's class (module doc)."""
  rule = meta["rule"]
  heads = int(meta["heads"]) if rule == "bp" else 6  # the original's _make_layer default
  prefixes = _torch_prefixes(meta)
  out = {"block_00/encoder/embedding": lambda t: t(f"{prefixes[0]}.weight")}
  for k, prefix in enumerate(prefixes[1:], start=1):
    encoder = _lstm(prefix) if meta["arch"] == "lstm" else _transformer(prefix, heads)
    for name, get in encoder.items():
      out[f"block_{k:02d}/encoder/{name}"] = get
    if rule == "deinforeg":
      for name, get in _linear(f"classifier.{k - 1}.classifier.1").items():
        out[f"block_{k:02d}/classifier/Dense_0/{name}"] = get
  if rule in ("bp", "scpl"):
    for name, get in _linear("fc.2").items():
      out[f"head/Dense_0/{name}"] = get
  if rule == "al":
    components = ["embedding"] + [f"layer{k}" for k in range(1, len(prefixes))]
    for k, component in enumerate(components):
      for ours, theirs in (("bridge", "b.0"), ("label_encoder", "g.0"), ("decoder", "inv.0")):
        for name, get in _linear(f"{component}.{theirs}").items():
          out[f"block_{k:02d}/{ours}/Dense_0/{name}"] = get
  return out


def load_params(
  oracle, prefix: str, meta, template, dtype=np.float32, mapping=None
) -> tuple[dict, dict]:
  """``(params, {})``: our parameters (nested like ``template``) from the oracle's
  ``<prefix><key>`` arrays, placed by ``mapping`` (default ``torch_map(meta)``).  Every array
  must be used, except the never-run copies inside the Transformer encoder, which must equal
  their ``init/`` values (``unused_copies_moved``).
  """
  import flax  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from benchmarks.trajectory_parity import OracleArrays, OracleError

  arrays = OracleArrays(oracle, prefix, dtype)
  flat = {path: get(arrays.take) for path, get in (mapping or torch_map(meta)).items()}
  unused = [k for k in arrays.unused() if not _UNUSED_COPIES.search(k)]
  if unused:
    raise OracleError(f"oracle arrays with no place in our model: {unused[:5]} ...")
  expected = flax.traverse_util.flatten_dict(template["params"], sep="/")
  if set(flat) != set(expected):
    raise OracleError(
      f"our parameters do not match the oracle's: ours only {sorted(set(expected) - set(flat))[:4]}"
      f", oracle only {sorted(set(flat) - set(expected))[:4]}."
    )
  for path, value in flat.items():
    if tuple(expected[path].shape) != value.shape:
      raise OracleError(f"params/{path}: ours {tuple(expected[path].shape)}, oracle {value.shape}.")
  if unused_copies_moved(oracle, prefix):
    raise OracleError(f"{prefix}: the encoder's never-run module copies changed in training.")
  return flax.traverse_util.unflatten_dict(flat, sep="/"), {}


def unused_copies_moved(oracle, prefix: str = "final/") -> float:
  """Largest change of the encoder's never-run module copies from ``init/`` to ``prefix`` (0)."""
  moved = [
    float(np.max(np.abs(oracle[k] - oracle[prefix + k[len("init/"):]])))
    for k in oracle
    if k.startswith("init/") and _UNUSED_COPIES.search(k)
  ]
  return max(moved, default=0.0)


def preprocessing_agreement(oracle, data_dir: str) -> dict[str, Any]:
  """Does our text pipeline (``deinforeg_jax.data.text``) give the original's token ids?

  On the texts the oracle's vocabulary was built from (the whole train and eval files, as the
  original's ``create_vocab`` over train + test) with the oracle's settings (no stop words:
  the maker's ``nltk`` stub has none; ``vocab_from="train_test"``):

  * ``vocab_same_counts``: id by id, our word and the original's occur equally often;
  * ``vocab_same_words`` / ``vocab_same_order``: our vocabulary against the oracle's ``vocab``
    (ties in frequency: ours alphabetical, the original's ``Counter.most_common`` by first
    occurrence, so equally frequent words get other ids, and at the size cut other words);
  * ``ids_equal_with_their_vocab``: the fraction of the oracle's training rows whose ids our
    ``normalize`` + ``encode`` reproduces with the original's vocabulary (normalisation and
    truncation alone; padding compared on the first ``x_len[t]`` positions);
  * ``ids_equal_with_our_vocab``: the same with our own vocabulary.
  """
  # pylint: disable=import-outside-toplevel
  import collections
  import gzip
  import os

  from deinforeg_jax.data import text as text_data

  meta = json.loads(str(oracle["meta"]))

  def texts(name):
    with gzip.open(os.path.join(data_dir, name), "rt", encoding="utf-8") as f:
      return [json.loads(line)["text"] for line in f]

  train, held_out = texts("ag_news_train_subset.jsonl.gz"), texts("ag_news_test.jsonl.gz")
  words = [text_data.normalize(t, stop_words=False) for t in train + held_out]
  settings = text_data.TextSettings(
    "ag_news", int(meta["vocab_size"]), int(meta["max_len"]), False, "train_test"
  )
  ours = text_data.build_vocabulary(words, settings)
  theirs = text_data.Vocabulary(tuple(str(w) for w in oracle["vocab"]), settings)

  def rows_equal(vocab) -> float:
    equal = []
    for t, index in enumerate(oracle["train_index"]):
      width = int(oracle["x_len"][t])
      ids = text_data.encode([words[i] for i in index], vocab, int(meta["max_len"]))
      same = np.all(ids[:, :width] == oracle["x"][t, :, :width], axis=1)
      equal += list(same & ~np.any(ids[:, width:], axis=1))
    return float(np.mean(equal))

  counts = collections.Counter(w for row in words for w in row)
  return {
    "vocab_same_counts": [counts[w] for w in ours.words[2:]]
    == [counts[w] for w in theirs.words[2:]],
    "vocab_same_words": set(ours.words) == set(theirs.words),
    "vocab_same_order": ours.words == theirs.words,
    "ids_equal_with_their_vocab": rows_equal(theirs),
    "ids_equal_with_our_vocab": rows_equal(ours),
  }


class _Batches:
  """``x[t]``: batch ``t``'s token ids ``[B, x_len[t]]``, the width the original padded it to."""

  def __init__(self, oracle):
    self.x, self.widths = oracle["x"], oracle["x_len"]

  def __getitem__(self, t: int) -> np.ndarray:
    return self.x[t, :, : int(self.widths[t])]


def _loss_block(metrics, config, columns) -> np.ndarray:
  """As ``trajectory_parity.rule_loss_block``, with DeInfoReg's embedding block as row 0."""
  from benchmarks import trajectory_parity as tp  # pylint: disable=import-outside-toplevel

  rows = tp.rule_loss_block(metrics, config, columns)
  if config.rule != "deinforeg":
    return rows
  embedding = {"local_total": metrics["embedding_loss"], "ce_times_0.001": 0.0}
  return np.concatenate([np.array([[embedding[c] for c in columns]]), rows])


def prepare(oracle, meta, options):
  """The text ``Replay`` of ``oracle`` for ``benchmarks.trajectory_parity``."""
  # pylint: disable=import-outside-toplevel
  from benchmarks.trajectory_parity import Replay, apply_overrides
  from deinforeg_jax import models

  if "side" in meta:  # make_oracle --side: the original's *_DeInfoReg_side
    from benchmarks import replay_side

    return replay_side.prepare(oracle, meta, options)
  config = apply_overrides(make_config(meta), options.get("overrides", {}))
  model = models.create_model(config, int(meta["n_classes"]))
  settings = {k: meta[k] for k in ("torch_class", "vocab_size", "emb_dim", "h_dim", "max_len",
                                   "blockwise_total", "al_hidden") if k in meta}

  x_eval = oracle["x_eval"]
  if (meta["arch"], meta["rule"]) == ("transformer", "al"):
    # Transformer_AL.inference calls layer1..3 as (x, None, mask): the mask lands in `label`, so
    # those layers attend to the padding at evaluation (not in training, not layer 4). Ours
    # masks throughout; the eval logits are compared on the rows without padding.
    keep = np.all(x_eval != 0, axis=1)
    for key in ("eval_logits", "f64_eval_logits"):
      oracle[key] = oracle[key][:, keep]
    x_eval = x_eval[keep]
    settings["eval_rows"] = f"{int(keep.sum())} of {keep.size}: those without padding"

  def eval_logits(outputs):
    logits = [np.asarray(l, np.float64) for l in outputs["logits"]]
    return np.stack(logits if meta["rule"] == "deinforeg" else logits[-1:])

  return Replay(
    config=config, model=model, x=_Batches(oracle), y=oracle["y"].astype(np.int32),
    x_eval=x_eval, settings=settings, loss_block=_loss_block,
    load=lambda prefix, template, dtype: load_params(oracle, prefix, meta, template, dtype),
    eval_logits=eval_logits,
  )
