"""The ORIGINAL PyTorch code's text train step, timed: the other side of ``benchmarks.step_time``.

  DEINFOREG_REF_DIR=REF TORCH_VENV/bin/python -m benchmarks.step_time_original \\
      --models=lstm,transformer --seq_lens=350,128 --steps=3 --warmup=1

The models are the original's own classes (reference commit fe6cc49): ``LSTM_DeInfoReg`` and
``LSTM`` (BP) from ``nlp/model/LSTM.py``, ``Transformer_DeInfoReg`` and ``Transformer`` from
``nlp/model/Transformer.py``, built by its ``setting.set_model`` with its ``train_nlp.py``
defaults (embedding + 4 blocks: ``blockwise_total=5``; ``emb_dim = h_dim = --emb_dim``, 300) and
``--vocab_size`` rows; Adam (lr 1e-3) from its ``set_optim``.
One step is what ``train_nlp.py:train`` does per batch: ``loss = model(x, y)``, ``zero_grad``,
``backward``, ``step``.  Inputs are ``[batch, length]`` token ids uniform in ``[1, vocab)`` (no
padding) and 2 classes, as ``step_time``'s text rows; dropout stays as the original has it.
The imports the classes never use are stubbed as ``benchmarks.oracle_text`` does, and
``Tensor.cuda`` returns the tensor (the Transformer moves its mask to CUDA unconditionally).
Prints one JSON line per (model, length, rule): the median step time and the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types

from benchmarks.oracle_text import TEXT_CLASSES, _stub_unused_modules


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.step_time_original",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--ref_dir", default=os.environ.get("DEINFOREG_REF_DIR"))
  parser.add_argument("--models", default="lstm,transformer", help="comma list: lstm, transformer")
  parser.add_argument("--rules", default="deinforeg,bp", help="comma list: deinforeg, bp")
  parser.add_argument("--seq_lens", default="350,128", help="comma list of lengths")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--vocab_size", type=int, default=30000)
  parser.add_argument("--emb_dim", type=int, default=300, help="emb_dim and h_dim")
  parser.add_argument("--heads", type=int, default=6, help="Transformer heads (ours: 6)")
  parser.add_argument("--steps", type=int, default=3, help="timed steps")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
  parser.add_argument("--seed", type=int, default=0)
  return parser


def _model_args(args, name: str, num_classes: int):
  """The namespace the original's ``set_model`` reads (``train_nlp.py``'s flags)."""
  h = args.emb_dim
  return types.SimpleNamespace(
    task="nlp", model=name, vocab_size=args.vocab_size, emb_dim=h, h_dim=h,
    n_classes=num_classes, heads=args.heads, word_vec=None, word_vec_type="nor",
    blockwise_total=5, merge="merge", side_dim=None, model_weights_path=None,
    mlp=f"{h}-{h}-{h}", localloss="DeInfoReg", base_lr=1e-3, wd=0.0,
  )


def main(argv=None) -> None:
  args = _parser().parse_args(argv)
  if not args.ref_dir or not os.path.isdir(os.path.join(args.ref_dir, "nlp", "model")):
    raise SystemExit("needs the original's checkout: --ref_dir=DIR or DEINFOREG_REF_DIR=DIR")
  _stub_unused_modules()
  import torch  # pylint: disable=import-outside-toplevel

  torch.Tensor.cuda = lambda self, *a, **k: self
  sys.path.insert(0, os.path.abspath(args.ref_dir))
  from nlp import setting  # pylint: disable=import-outside-toplevel,import-error

  if args.threads:
    torch.set_num_threads(args.threads)
  for model_name in args.models.split(","):
    for seq_len in (int(n) for n in args.seq_lens.split(",")):
      for rule in args.rules.split(","):
        name = TEXT_CLASSES[(model_name, rule)]
        torch.manual_seed(args.seed)
        model = setting.set_model(name, _model_args(args, name, 2))
        optimizer = setting.set_optim(model, "ADAM", _model_args(args, name, 2))
        x = torch.randint(1, args.vocab_size, (args.batch_size, seq_len))
        y = torch.randint(0, 2, (args.batch_size,))
        model.train()
        times = []
        for i in range(args.warmup + args.steps):
          start = time.perf_counter()
          loss = model(x, y)
          optimizer.zero_grad()
          loss.backward()
          optimizer.step()
          if i >= args.warmup:
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(json.dumps({
          "benchmark": "step_time_original", "model": model_name, "rule": rule,
          "torch_class": name, "seq_len": seq_len, "batch_size": args.batch_size,
          "vocab_size": args.vocab_size, "emb_dim": args.emb_dim, "heads": args.heads,
          "median_step_s": median, "min_step_s": min(times), "max_step_s": max(times),
          "steps": len(times), "loss": loss.item(), "threads": torch.get_num_threads(),
          "torch": torch.__version__, "host_load_1m": os.getloadavg()[0],
        }), flush=True)


if __name__ == "__main__":
  main()
