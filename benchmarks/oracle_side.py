"""``make_oracle.py --side=A``: the original's ``*_DeInfoReg_side`` (LSTM and Transformer).

Each token row ``[max_len]`` is cut at ``A`` (the original's ``--side_dim A B``, ``B = max_len -
A``): the old features ``x[:, :A]`` and the new ones ``x[:, A:]``.  The original's recipe is two
runs; the maker builds both from the original's own classes (``nlp/setting.set_model``):

1. ``*_DeInfoReg`` with ``side_dim = [A, B]`` (seeded by ``--seed``), the old stack; its
   ``state_dict`` is saved to a temporary file (untrained: only the step-2 trajectory is
   recorded);
2. ``*_DeInfoReg_side`` with ``model_weights_path`` = that file: its constructor loads the old
   stack and sets ``requires_grad = False`` on every old parameter (the embedding too), then adds
   the new block (``newlayer``, ``newloss``, ``newclassifier``).  The original's ``set_optim``
   (Adam) and ``forward`` train it on the oracle's batches: only the new block's
   ``L_InfoReg + 0.001 CE`` is returned and back-propagated.

Beside ``oracle_text``'s stubs and dropout switch (``make`` uses them), one input change:
``sidedata`` asserts that every batch is exactly ``A + B`` tokens wide, so each batch of the
original's ``collate`` is right-padded with 0 to ``max_len`` (``meta.x``).  ``loss_block`` rows:
the embedding and the old layers (``oracle_text._block_losses`` on the old tokens, no update),
then the new block: ``[newloss's L_InfoReg, loss_total - L_InfoReg]`` (a forward hook on
``newloss`` reads its value in the training step itself).  ``eval_logits``: the old exits, then
the new block's.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import tempfile

import oracle_text

SIDE_CLASSES = {"lstm": "LSTM_DeInfoReg_side", "transformer": "Transformer_DeInfoReg_side"}


def add_arguments(parser) -> None:
  """``--side``: the old-feature token count ``A`` (0: not a side oracle)."""
  parser.add_argument(
    "--side", type=int, default=0,
    help="text, rule deinforeg: record *_DeInfoReg_side with side_dim [SIDE, text_max_len - SIDE]",
  )


def make(a, data_dir: str):
  """``(arrays, summary)`` of the side class (module doc); the original's prints go to stderr."""
  if a.rule != "deinforeg" or a.arch not in SIDE_CLASSES:
    raise SystemExit("--side: the original's side classes are LSTM_DeInfoReg_side and "
                     "Transformer_DeInfoReg_side (--arch lstm | transformer, --rule deinforeg)")
  if not 0 < a.side < a.text_max_len:
    raise SystemExit(f"--side={a.side} must lie in (0, --text_max_len={a.text_max_len})")
  if a.text_emb_dim != a.text_h_dim:
    raise SystemExit("--side: the new block reads the embedding beside the old top block: "
                     "--text_emb_dim must equal --text_h_dim")
  with contextlib.redirect_stdout(sys.stderr):
    return _make(a, data_dir)


def _make(a, data_dir: str):
  # pylint: disable=import-outside-toplevel,protected-access
  oracle_text._stub_unused_modules()
  import numpy as np
  import torch
  from torch import nn

  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  from nlp import setting
  from utils import nlp_utils

  train_texts, train_labels = oracle_text._read_jsonl(
    a.jsonl or os.path.join(data_dir, oracle_text.TRAIN_FILE))
  eval_texts, eval_labels = oracle_text._read_jsonl(
    a.eval_jsonl or os.path.join(data_dir, oracle_text.EVAL_FILE))
  clean_train = [nlp_utils.data_preprocessing(t, True) for t in train_texts]
  clean_eval = [nlp_utils.data_preprocessing(t, True) for t in eval_texts]
  vocab = nlp_utils.create_vocab(
    [nlp_utils.tokenize(t) for t in clean_train + clean_eval], a.text_vocab
  )
  train_index = np.arange(a.offset, a.offset + a.batch * a.steps).reshape(a.steps, a.batch)
  eval_index = np.arange(a.eval)
  trainset = nlp_utils.Textset([clean_train[i] for i in train_index.ravel()],
                               [train_labels[i] for i in train_index.ravel()], vocab,
                               a.text_max_len)
  evalset = nlp_utils.Textset([clean_eval[i] for i in eval_index],
                              [eval_labels[i] for i in eval_index], vocab, a.text_max_len)

  def full_width(x):  # sidedata's assert: every batch exactly max_len wide
    return nn.functional.pad(x, (0, a.text_max_len - x.shape[1]))

  batches = []
  for t in range(a.steps):
    x, y = trainset.collate([trainset[t * a.batch + i] for i in range(a.batch)])
    batches.append((full_width(x), y))
  x_eval, y_eval = evalset.collate([evalset[i] for i in range(len(evalset))])
  x_eval = full_width(x_eval)
  n_classes, side_dim = 4, [a.side, a.text_max_len - a.side]

  old_args = oracle_text._model_args(a, "LSTM_DeInfoReg" if a.arch == "lstm"
                                     else "Transformer_DeInfoReg", n_classes)
  old_args.side_dim = side_dim
  torch.manual_seed(a.seed)
  old = setting.set_model(old_args.model, old_args)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "old.pth")
    torch.save({"model": old.state_dict()}, path)
    args = oracle_text._model_args(a, SIDE_CLASSES[a.arch], n_classes)
    args.side_dim, args.model_weights_path = side_dim, path
    model = setting.set_model(args.model, args)
  dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
  for m in dropouts:
    m.p = 0.0
  frozen = sorted(k for k, p in model.named_parameters() if not p.requires_grad)
  init = {k: v.detach().clone() for k, v in model.state_dict().items()}

  def run(dtype):
    replica = copy.deepcopy(model).to(dtype)
    optimizer = setting.set_optim(replica, a.text_optimizer, args)
    info = []
    replica.newloss.register_forward_hook(
      lambda _m, _i, out: info.append(float(torch.as_tensor(out[0]).detach()))
    )
    totals, blocks = [], []
    for x, y in batches:
      replica.train()
      with torch.no_grad():
        replica.hiddenlist = [None] * (replica.blockwisetotal - 1)
        rows = oracle_text._block_losses(replica, "deinforeg", x[:, : a.side], y)
      loss = replica(x, y)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      totals.append(loss.item())
      blocks.append(rows + [[info[-1], totals[-1] - info[-1]]])
    replica.eval()
    with torch.no_grad():
      out = replica(x_eval, y_eval)
    logits = np.stack([v[0].double().numpy() for v in out[1].values()])
    final = {k: v.detach().double().numpy() for k, v in replica.state_dict().items()}
    return np.array(totals), np.array(blocks), final, logits

  tot32, blk32, fin32, log32 = run(torch.float32)
  tot64, _, fin64, log64 = run(torch.float64)
  meta = dict(
    arch=a.arch, rule=a.rule, side=a.side, side_dim=side_dim, torch_class=SIDE_CLASSES[a.arch],
    n_classes=n_classes, batch=a.batch, steps=a.steps, lr=a.lr, wd=a.wd,
    optimal=a.text_optimizer, seed=a.seed, offset=a.offset, eval=a.eval,
    vocab_size=a.text_vocab, emb_dim=a.text_emb_dim, h_dim=a.text_h_dim, heads=a.text_heads,
    max_len=a.text_max_len, blockwise_total=a.text_blocks, mlp=args.mlp, merge="merge",
    word_vec_type="nor", dropout=f"0 (was 0.1; {len(dropouts)} nn.Dropout set to p=0)",
    frozen=f"{len(frozen)} parameters with requires_grad=False (every old one)",
    old_weights="the old *_DeInfoReg at its seeded initialisation (loaded by the side class)",
    stubbed=oracle_text.STUBBED, torch=torch.__version__,
    reference="ianzih/Decoupled-Supervised-Learning-for-Information-Regularization@fe6cc49",
    x="token ids of the original's Textset/collate, each batch right-padded with 0 to max_len "
      "(sidedata's assert): batch t = train lines [offset + tB, offset + (t+1)B); x_eval = test "
      "lines [0, eval)",
    loss_block_columns=["local_total", "ce_times_0.001"],
  )
  arrays = {
    "meta": np.array(json.dumps(meta)),
    "x": np.stack([x.numpy() for x, _ in batches]).astype(np.int32),
    "x_len": np.full(a.steps, a.text_max_len, np.int32),
    "y": np.stack([y.numpy() for _, y in batches]).astype(np.int64),
    "x_eval": x_eval.numpy().astype(np.int32), "y_eval": y_eval.numpy().astype(np.int64),
    "train_index": train_index.astype(np.int32), "eval_index": eval_index.astype(np.int32),
    "vocab": np.array(sorted(vocab, key=vocab.get)),
    "loss_total": tot32.astype(np.float32), "loss_block": blk32.astype(np.float32),
    "eval_logits": log32.astype(np.float32), "f64_loss_total": tot64, "f64_eval_logits": log64,
  }
  for k, v in init.items():
    arrays[f"init/{k}"] = v.numpy()
  for k, v in fin32.items():
    arrays[f"final/{k}"] = v.astype(np.float32) if v.dtype != np.int64 else v
  for k, v in fin64.items():
    arrays[f"f64_final/{k}"] = v
  summary = dict(
    torch_class=SIDE_CLASSES[a.arch], side_dim=side_dim, steps=a.steps,
    loss_first=float(tot32[0]), loss_last=float(tot32[-1]),
    f32_vs_f64_loss_max_rel=float(np.max(np.abs(tot32 - tot64) / np.abs(tot64))),
    f32_vs_f64_logits_max_abs=float(np.max(np.abs(log32 - log64))), frozen=len(frozen),
  )
  return arrays, summary
