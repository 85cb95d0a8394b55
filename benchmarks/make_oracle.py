"""Record a training trajectory of the ORIGINAL PyTorch code as an ``.npz`` oracle.

  DEINFOREG_REF_DIR=/path/to/original python benchmarks/make_oracle.py --arch=resnet18 \
      --rule=scpl --out=oracle.npz [--npz=../shared/data/cifar10_20k.npz | --jsonl=...] \
      [--seed=0 --batch=16 --steps=4 --lr=0.2 --offset=0 --eval=32] [the family's size flags]
      [--adaptive --patience=1 --cosine_threshold=0.8 --adaptive_batch=8] [--side=20]

Runs in a venv with only ``torch``, ``numpy`` and ``tqdm``; the original's classes (reference
commit fe6cc49 of github.com/ianzih/Decoupled-Supervised-Learning-for-Information-Regularization)
are imported from ``DEINFOREG_REF_DIR`` (or ``--ref_dir``), which this script puts on
``sys.path``.  Only widths, depth and vocabulary are made small, through the classes' own
constructors and ``_make_layer``; each family module says how, and which unused imports it
stubs.

Every oracle holds (float32 unless said, PyTorch layouts): ``meta`` (a JSON string: ``arch``,
``rule``, ``seed``, ``batch``, ``steps``, ``lr``, ``wd``, ``offset``, ``eval``, the family's
settings, ``loss_block_columns``, torch version, reference commit), ``init/<state_dict key>``
and ``final/<state_dict key>`` (every parameter and buffer before and after training),
``loss_total [T]`` (the scalar the original back-propagates at step t), ``loss_block [T, R, C]``
(per row - block or head - the recorded loss terms, columns named by meta), ``eval_logits
[X, E, C]`` (each exit of the original's eval-mode output after training), the inputs (vision:
indices into ``../shared/data``; text: token ids) and the same run in float64 from the same
initial state (``f64_loss_total``, ``f64_final/<key>``, ``f64_eval_logits``), whose distance
from the float32 run is the comparison's noise floor.

``--adaptive`` (rule deinforeg; vgg, lstm) adds the original's ``*_DeInfoReg_Adaptive`` exits
after training (``oracle_adaptive``: ``adaptive_exit``, ``adaptive_pred``, ``adaptive_accuracy``).

``--side=A`` (rule deinforeg; lstm, transformer) records the original's ``*_DeInfoReg_side``
instead: the old stack frozen, one new block reading its output and the tokens from ``A`` on
(``oracle_side``).

Family contract: ``FAMILIES`` maps ``--arch`` to a module beside this script
(``oracle_vision``: vgg, resnet18; ``oracle_text``: lstm, transformer).  A family defines
``add_arguments(parser)`` (its own flags, named so that families never collide) and
``make(a, data_dir) -> (arrays, summary)``: ``a`` the parsed flags (the common ones above
included), ``data_dir`` the folder of ``--npz``/``--jsonl``'s default data; ``arrays`` every
array of the oracle (``meta`` included), ``summary`` a JSON-able dict printed on one line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys

import numpy as np

FAMILIES = {"vgg": "oracle_vision", "resnet18": "oracle_vision",
            "lstm": "oracle_text", "transformer": "oracle_text"}
RULES = ("deinforeg", "bp", "scpl", "al")
DATA_DIR = os.path.normpath(
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
)


def family_module(name: str):
  """The family module ``name`` (a value of ``FAMILIES``), imported from this script's folder."""
  here = os.path.dirname(os.path.abspath(__file__))
  if here not in sys.path:
    sys.path.insert(0, here)
  return importlib.import_module(name)


def parser() -> argparse.ArgumentParser:
  """The common flags, then every family's."""
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--arch", required=True, choices=sorted(FAMILIES))
  p.add_argument("--rule", required=True, choices=RULES)
  p.add_argument("--out", required=True, help="the oracle .npz to write")
  p.add_argument("--npz", help="vision: cifar10_20k.npz (the oracle stores indices into it)")
  p.add_argument("--data_dir", default=DATA_DIR, help="default folder of the data files")
  p.add_argument("--seed", type=int, default=0, help="torch.manual_seed before the model")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=4)
  p.add_argument("--lr", type=float, default=0.2, help="constant learning rate")
  p.add_argument("--wd", type=float, default=1e-4)
  p.add_argument("--offset", type=int, default=0, help="first training example used")
  p.add_argument("--eval", type=int, default=32, help="evaluation examples (test split, first)")
  p.add_argument("--ref_dir", default=os.environ.get("DEINFOREG_REF_DIR"))
  family_module("oracle_adaptive").add_arguments(p)
  family_module("oracle_side").add_arguments(p)
  for name in sorted(set(FAMILIES.values())):
    family_module(name).add_arguments(p)
  return p


def main(argv=None) -> None:
  a = parser().parse_args(argv)
  if not a.ref_dir or not os.path.isdir(a.ref_dir):
    raise SystemExit("set DEINFOREG_REF_DIR (or --ref_dir) to the original code's folder")
  if a.adaptive and (a.rule != "deinforeg" or a.arch == "transformer"):
    raise SystemExit("--adaptive: the original's adaptive classes are VGG_DeInfoReg_Adaptive, "
                     "resnet_DeInfoReg_Adaptive and LSTM_DeInfoReg_Adaptive (rule deinforeg)")
  sys.path.insert(0, a.ref_dir)
  recorder = family_module("oracle_side" if a.side else FAMILIES[a.arch])
  arrays, summary = recorder.make(a, a.data_dir)
  if a.adaptive and a.arch == "lstm":
    adaptive = family_module("oracle_adaptive")
    with contextlib.redirect_stdout(sys.stderr):  # the original's prints
      arrays.update(adaptive.record_lstm(a, arrays))
    arrays["meta"] = np.array(json.dumps({**json.loads(str(arrays["meta"])), **adaptive.meta(a)}))
    summary.update(adaptive_exit=arrays["adaptive_exit"].tolist(),
                   adaptive_accuracy=float(arrays["adaptive_accuracy"]))
  np.savez_compressed(a.out, **arrays)
  summary = {"out": os.path.basename(a.out), "bytes": os.path.getsize(a.out), **summary}
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  main()
