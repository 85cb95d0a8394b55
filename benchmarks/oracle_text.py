"""The text family of ``make_oracle.py``: the original's BiLSTM / Transformer classes on AG News.

Runs in a venv with only ``torch``, ``numpy`` and ``tqdm`` (``benchmarks/make_oracle.py``
imports it after putting ``DEINFOREG_REF_DIR`` on ``sys.path``).  The classes are the
original's (reference commit fe6cc49): ``LSTM_DeInfoReg``, ``LSTM``, ``LSTM_SCPL``,
``LSTM_AL`` (``nlp/model/LSTM.py``) and the four ``Transformer*`` twins
(``nlp/model/Transformer.py``), built through their own constructors with a small
``vocab_size``, ``emb_dim``, ``h_dim`` (and for DeInfoReg ``blockwise_total``); their own
``forward`` (``train_step`` / ``inference``) computes every loss and every eval output, and the
original's ``set_optim`` makes the optimizer.  ``--text_al_hidden`` (default 300, the original's)
sets the AL label-code width, which ``*_AL.__init__`` writes as a constant (``_al_width``).
Changed beyond those constructor arguments:

* every ``nn.Dropout`` of the Transformer encoder gets ``p = 0`` (its masks are random and
  cannot be replayed; ``meta.dropout`` says so and the replay sets ``model.dropout = 0``);
* ``torch.Tensor.cuda`` returns the tensor itself: ``Transformer_block.get_mask`` moves the
  padding mask to CUDA unconditionally, and this machine has none; in the float64 twin run
  ``torch.Tensor.float`` casts to float64 (``*_AL.train_step`` casts its one-hot labels with
  ``.float()``);
* modules that the original imports but these classes never call are stubbed
  (``meta.stubbed``): ``nltk`` (``download`` does nothing, the stop-word list is empty,
  ``word_tokenize`` is ``str.split``), and ``torchtext``, ``datasets``, ``pandas`` (imported by
  ``nlp/setting.py`` for the loaders only).

Token ids come from the original's own text pipeline (``utils/nlp_utils.py``):
``data_preprocessing(text, True)`` (with the empty stop-word list: lower case, HTML tags and
punctuation removed), ``create_vocab`` over the cleaned train and test texts tokenised by the
stub, ``Textset(..., max_len)`` and its ``collate`` (each batch right-padded with 0 to its own
longest text).  The oracle stores those ids (``x [T, B, L]``, with ``x_len [T]`` the padded
width of batch ``t``, and ``x_eval [E, L_eval]``), the line indices they came from, and the
vocabulary (``vocab``, id order), so ``benchmarks.replay_text`` can compare our own
preprocessing with the original's on the same texts.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import importlib.machinery
import json
import os
import sys
import types

TEXT_CLASSES = {
  ("lstm", "deinforeg"): "LSTM_DeInfoReg",
  ("lstm", "bp"): "LSTM",
  ("lstm", "scpl"): "LSTM_SCPL",
  ("lstm", "al"): "LSTM_AL",
  ("transformer", "deinforeg"): "Transformer_DeInfoReg",
  ("transformer", "bp"): "Transformer",
  ("transformer", "scpl"): "Transformer_SCPL",
  ("transformer", "al"): "Transformer_AL",
}
TRAIN_FILE = "ag_news_train_subset.jsonl.gz"
EVAL_FILE = "ag_news_test.jsonl.gz"
STUBBED = {
  "nltk": "download() does nothing; corpus.stopwords.words() is []; word_tokenize is str.split",
  "torchtext": "datasets only (AG_NEWS loader, unused)",
  "datasets": "load_dataset only (DBpedia loader, unused)",
  "pandas": "read_csv only (IMDB loader, unused)",
}


def add_arguments(parser) -> None:
  """The text flags of ``make_oracle.py`` (small sizes through the classes' constructors)."""
  group = parser.add_argument_group("text (--arch lstm | transformer; pass --lr 1e-3, Adam's)")
  group.add_argument("--jsonl", default=None, help=f"training texts (default: <data>/{TRAIN_FILE})")
  group.add_argument("--eval_jsonl", default=None, help=f"eval texts (default: <data>/{EVAL_FILE})")
  group.add_argument("--text_vocab", type=int, default=400, help="args.vocab_size")
  group.add_argument("--text_emb_dim", type=int, default=12, help="args.emb_dim")
  group.add_argument("--text_h_dim", type=int, default=12, help="args.h_dim (Transformer: = emb)")
  group.add_argument("--text_heads", type=int, default=4, help="args.heads (Transformer BP only)")
  group.add_argument("--text_max_len", type=int, default=60, help="args.max_len (AG News: 60)")
  group.add_argument(
    "--text_blocks", type=int, default=5, help="args.blockwise_total (DeInfoReg; others: 5)"
  )
  group.add_argument("--text_optimizer", default="ADAM", help="args.optimal for set_optim")
  group.add_argument(
    "--text_al_hidden", type=int, default=300, help="*_AL label-code width (the original: 300)"
  )


def _stub_unused_modules() -> None:
  def module(name, **attrs):
    stub = types.ModuleType(name)
    stub.__spec__ = importlib.machinery.ModuleSpec(name, None)  # torch._dynamo looks for it
    stub.__dict__.update(attrs)
    sys.modules[name] = stub
    return stub

  stopwords = types.SimpleNamespace(words=lambda language: [])
  module("nltk", download=lambda *a, **k: True, word_tokenize=str.split,
         corpus=module("nltk.corpus", stopwords=stopwords))
  module("torchtext", datasets=module("torchtext.datasets"))
  module("datasets", load_dataset=None)
  module("pandas")


@contextlib.contextmanager
def _al_width(arch: str, width: int):
  """While the model is built: ``*_AL.__init__`` writes ``neuron_size = 300`` and passes it to
  ``LSTM_AL_Component`` / ``Transformer_AL_Component`` as ``hidden_size`` (and as the layers'
  ``out_features``); the module's name is bound to a function that calls the original class with
  ``width`` there instead, so the original constructors run unchanged."""
  import importlib  # pylint: disable=import-outside-toplevel

  module = importlib.import_module("nlp.model." + ("LSTM" if arch == "lstm" else "Transformer"))
  name = "LSTM_AL_Component" if arch == "lstm" else "Transformer_AL_Component"
  original = getattr(module, name)

  def component(conv, input_size, shape, hidden_size, out_features, catype=None):
    out = width if out_features == hidden_size else out_features
    setattr(module, name, original)  # its __init__ calls super(<module name>, self)
    try:
      return original(conv, input_size, shape, width, out, catype)
    finally:
      setattr(module, name, component)

  setattr(module, name, component)
  try:
    yield
  finally:
    setattr(module, name, original)


def _read_jsonl(path: str) -> tuple[list[str], list[int]]:
  texts, labels = [], []
  with gzip.open(path, "rt", encoding="utf-8") as f:
    for line in f:
      record = json.loads(line)
      texts.append(record["text"])
      labels.append(int(record["label"]))
  return texts, labels


def _model_args(a, name: str, n_classes: int):
  h = a.text_h_dim
  return types.SimpleNamespace(
    task="nlp", model=name, vocab_size=a.text_vocab, emb_dim=a.text_emb_dim, h_dim=h,
    n_classes=n_classes, heads=a.text_heads, word_vec=None, word_vec_type="nor",
    blockwise_total=a.text_blocks, merge="merge", side_dim=None, model_weights_path=None,
    mlp=f"{h}-{h}-{h}", localloss="DeInfoReg", base_lr=a.lr, wd=a.wd,
  )


def make(a, data_dir: str):
  """``(arrays, summary)``: the oracle's arrays (module doc) and a one-line JSON summary.

  The original's progress prints go to stderr, so stdout keeps ``make_oracle.py``'s one line.
  """
  with contextlib.redirect_stdout(sys.stderr):
    return _make(a, data_dir)


def _make(a, data_dir: str):
  _stub_unused_modules()
  import numpy as np  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel

  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  from nlp import setting  # pylint: disable=import-outside-toplevel
  from utils import nlp_utils  # pylint: disable=import-outside-toplevel

  name = TEXT_CLASSES[(a.arch, a.rule)]
  if a.rule != "deinforeg" and a.text_blocks != 5:
    raise SystemExit(f"{name} has 4 layers after the embedding: --text_blocks must be 5.")
  train_texts, train_labels = _read_jsonl(a.jsonl or os.path.join(data_dir, TRAIN_FILE))
  eval_texts, eval_labels = _read_jsonl(a.eval_jsonl or os.path.join(data_dir, EVAL_FILE))
  clean_train = [nlp_utils.data_preprocessing(t, True) for t in train_texts]
  clean_eval = [nlp_utils.data_preprocessing(t, True) for t in eval_texts]
  vocab = nlp_utils.create_vocab(
    [nlp_utils.tokenize(t) for t in clean_train + clean_eval], a.text_vocab
  )
  n = a.batch * a.steps
  train_index = np.arange(a.offset, a.offset + n).reshape(a.steps, a.batch)
  eval_index = np.arange(a.eval)
  trainset = nlp_utils.Textset(
    [clean_train[i] for i in train_index.ravel()], [train_labels[i] for i in train_index.ravel()],
    vocab, a.text_max_len,
  )
  evalset = nlp_utils.Textset(
    [clean_eval[i] for i in eval_index], [eval_labels[i] for i in eval_index], vocab, a.text_max_len
  )
  batches = [trainset.collate([trainset[t * a.batch + i] for i in range(a.batch)])
             for t in range(a.steps)]
  x_eval, y_eval = evalset.collate([evalset[i] for i in range(len(evalset))])
  n_classes = 4
  args = _model_args(a, name, n_classes)
  torch.manual_seed(a.seed)
  with _al_width(a.arch, a.text_al_hidden):
    model = setting.set_model(name, args)
  dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
  for m in dropouts:
    m.p = 0.0
  init = {k: v.detach().clone() for k, v in model.state_dict().items()}

  as_float32 = torch.Tensor.float

  def run(dtype):
    # The float64 twin: AL's train_step casts its one-hot labels with .float().
    torch.Tensor.float = as_float32 if dtype == torch.float32 else torch.Tensor.double
    replica = copy.deepcopy(model).to(dtype)
    optimizer = setting.set_optim(replica, a.text_optimizer, args)
    totals, blocks = [], []
    for x, y in batches:
      replica.train()
      with torch.no_grad():
        blocks.append(_block_losses(replica, a.rule, x, y))
      loss = replica(x, y)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      totals.append(loss.item())
    replica.eval()
    with torch.no_grad():
      out = replica(x_eval, y_eval)
    if a.rule == "deinforeg":
      logits = np.stack([v[0].double().numpy() for v in out[1].values()])
    else:
      logits = out.double().numpy()[None]
    final = {k: v.detach().double().numpy() for k, v in replica.state_dict().items()}
    return np.array(totals), np.array(blocks), final, logits

  tot32, blk32, fin32, log32 = run(torch.float32)
  tot64, _, fin64, log64 = run(torch.float64)
  torch.Tensor.float = as_float32
  width = max(int(x.shape[1]) for x, _ in batches)
  x = np.zeros((a.steps, a.batch, width), np.int32)
  for t, (xt, _) in enumerate(batches):
    x[t, :, : xt.shape[1]] = xt.numpy()
  meta = dict(
    arch=a.arch, rule=a.rule, torch_class=name, n_classes=n_classes, batch=a.batch,
    steps=a.steps, lr=a.lr, wd=a.wd, optimal=a.text_optimizer, seed=a.seed, offset=a.offset,
    eval=a.eval, vocab_size=a.text_vocab, emb_dim=a.text_emb_dim, h_dim=a.text_h_dim,
    heads=a.text_heads,
    max_len=a.text_max_len, blockwise_total=a.text_blocks, mlp=args.mlp, merge="merge",
    al_hidden=a.text_al_hidden,
    word_vec_type="nor", dropout=f"0 (was 0.1; {len(dropouts)} nn.Dropout set to p=0)",
    stubbed=STUBBED, torch=torch.__version__,
    reference="ianzih/Decoupled-Supervised-Learning-for-Information-Regularization@fe6cc49",
    x="token ids of the original's Textset/collate: batch t = train lines [offset + tB, "
      "offset + (t+1)B), right-padded with 0 to x_len[t]; x_eval = test lines [0, eval)",
    loss_block_columns=_BLOCK_COLUMNS[a.rule],
  )
  arrays = {
    "meta": np.array(json.dumps(meta)), "x": x,
    "x_len": np.array([int(xt.shape[1]) for xt, _ in batches], np.int32),
    "y": np.stack([yt.numpy() for _, yt in batches]).astype(np.int64),
    "x_eval": x_eval.numpy().astype(np.int32), "y_eval": y_eval.numpy().astype(np.int64),
    "train_index": train_index.astype(np.int32), "eval_index": eval_index.astype(np.int32),
    "vocab": np.array(sorted(vocab, key=vocab.get)),
    "loss_total": tot32.astype(np.float32), "loss_block": blk32.astype(np.float32),
    "eval_logits": log32.astype(np.float32), "f64_loss_total": tot64,
    "f64_eval_logits": log64,
  }
  for k, v in init.items():
    arrays[f"init/{k}"] = v.numpy()
  for k, v in fin32.items():
    arrays[f"final/{k}"] = v.astype(np.float32) if v.dtype != np.int64 else v
  for k, v in fin64.items():
    arrays[f"f64_final/{k}"] = v
  rel = lambda u, w: float(np.max(np.abs(u - w) / np.abs(w)))
  summary = dict(
    torch_class=name, steps=a.steps, loss_first=float(tot32[0]), loss_last=float(tot32[-1]),
    f32_vs_f64_loss_max_rel=rel(tot32, tot64),
    f32_vs_f64_logits_max_abs=float(np.max(np.abs(log32 - log64))),
    x_len=arrays["x_len"].tolist(), vocab=len(vocab),
  )
  return arrays, summary


_BLOCK_COLUMNS = {
  "deinforeg": ["local_total", "ce_times_0.001"],
  "bp": ["ce"],
  "scpl": ["loss"],
  "al": ["bridge", "reconstruction"],
}


def _block_losses(model, rule: str, x, y) -> list[list[float]]:
  """Per-block loss terms of one training batch, by the original's own modules (no update).

  deinforeg: ``[info, 0.001 CE]`` per block (embedding first, its CE 0); bp: ``[[CE]]``;
  scpl: ``[[contrastive]]`` per block then ``[CE]`` of the head; al: ``[bridge, autoencoder]``
  per component (``loss_block``; the replay compares them row by row).
  """
  import torch  # pylint: disable=import-outside-toplevel

  is_lstm = type(model).__name__.startswith("LSTM")
  mask = None if is_lstm else model.get_mask(x)
  if rule == "bp":
    return [[float(model(x, y))]]
  if rule == "al":
    onehot = torch.nn.functional.one_hot(y, model.num_classes).to(model.embedding.g[0].weight)
    s, t, _, lb, la, *_ = model.embedding(x=x, y=onehot)
    rows = [[float(lb), float(la)]]
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
      extra = None if is_lstm else mask
      s, t, _, lb, la, *_ = layer(s, t, y, extra)
      rows.append([float(lb), float(la)])
    return rows
  emb = model.embedding(x)
  if rule == "scpl":
    rows = [[float(model.loss0(emb.mean(1), y))]]
    out = emb
    for k in range(1, 5):
      layer, loss = getattr(model, f"layer{k}"), getattr(model, f"loss{k}")
      if is_lstm:
        out, hidden = layer(out)
        pooled = (hidden[0][0] + hidden[0][1]) / 2
      else:
        out = layer(out, mask)
        pooled = model.reduction(out, mask)
      rows.append([float(loss(pooled, y))])
    return rows + [[float(model.ce(model.fc(pooled), y))]]
  rows = [[float(model.lossemb(emb.mean(1), y)[0]), 0.0]]
  out = emb
  for i in range(model.blockwisetotal - 1):
    third = None if is_lstm else mask
    step = model._training_each_layer(  # pylint: disable=protected-access
      out, y, third, model.layer[i], model.loss[i], model.classifier[i]
    )
    rows.append([float(step[0]), float(step[1])])
    out = step[2]
  return rows
