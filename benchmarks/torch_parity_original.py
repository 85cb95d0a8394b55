"""The ORIGINAL PyTorch DeInfoReg code at the parity protocol, one seed per run: its seed spread.

  pip install torch numpy     # not a dependency of this package; any CPU build; no torchvision
  git clone \\
    https://github.com/ianzih/Decoupled-Supervised-Learning-for-Information-Regularization REF
  DEINFOREG_REF_DIR=REF python -m benchmarks.torch_parity_original \\
      --npz=../shared/data/cifar10_20k.npz --seed=0

The parity table (docs/results.md) holds one run of the original code per rule.  For BP a PyTorch
transcription (``benchmarks/torch_parity_bp.py``) measured a seed spread of +-0.024; for
DeInfoReg this script measures it with the original code itself: nothing of the method is written
here.  The model, its ``train_step`` / ``inference`` (``VGG_DeInfoReg``, ``Set_Local_Loss``,
``Layer_Classifier``, ``conv_layer_bn``), the optimizer (``LARS`` with ``exclude_bias_and_norm``
filters, as the original's ``vision/setting.py:set_optim`` builds it), the learning-rate schedule
(``Adjust_Learning_Rate``) and the accuracy meter (``accuracy``, ``AverageMeter``) are imported
from a checkout of the original repository (``--ref_dir`` or ``DEINFOREG_REF_DIR``; measured with
commit fe6cc49).

What is this script's own, following the original's ``train_vision.py`` (``main``, ``train``,
``test``) and ``vision/setting.py:set_loader``:
  * the data: ``cifar10_20k`` from an .npz (``x_train``/``x_test`` uint8 ``[N, 32, 32, 3]``) instead
    of torchvision's CIFAR-10 (the original imports torchvision only for that and its transforms).
    The transforms are the original's crop + flip pipeline transcribed with torchvision's own draws
    (per image, on the global torch RNG: ``RandomCrop(32, padding=4)`` zero-pads the raw image and
    draws the top offset then the left one with ``torch.randint(0, 9)``, then
    ``RandomHorizontalFlip`` flips when ``torch.rand(1) < 0.5``), then ``ToTensor`` and
    ``Normalize`` with the original's CIFAR-10 mean/std.  The protocol is crop + flip only: the
    original's ``--aug_type basic`` would add colour jitter and grayscale (SPEC.md, defect 6).
  * the loader: ``DataLoader(shuffle=True, batch_size=128)`` with the last partial batch kept, as
    the original's (20,000 images: 156 batches of 128 and one of 32, 157 steps); ``--drop_last``
    drops it (156 steps, as our loader).  ``num_workers=0`` instead of 4 (2 cores here).
  * seeding: ``torch.manual_seed(seed)`` before the model is built (the original sets no seed).
  * the per-step train accuracy the original computes after each step (an eval-mode, no-grad
    forward of the same batch, which changes no parameter, buffer or RNG state) is skipped unless
    ``--train_acc``: it only costs time.
Test: ``model.eval()``, batches of 1,024 in order, each block classifier's top-1 accuracy
averaged over the test set (the original's ``test``).  Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

import numpy as np

MEAN = (0.4914, 0.4822, 0.4465)  # vision/setting.py, cifar10
STD = (0.2023, 0.1994, 0.2010)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.torch_parity_original",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--npz", required=True, help="cifar10_20k.npz (x_train, y_train, x_test, y_test)"
  )
  parser.add_argument(
    "--ref_dir",
    default=os.environ.get("DEINFOREG_REF_DIR"),
    help="checkout of the original repository (default: $DEINFOREG_REF_DIR)",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--train_bsz", type=int, default=128)
  parser.add_argument("--test_bsz", type=int, default=1024)
  parser.add_argument("--base_lr", type=float, default=0.2)
  parser.add_argument("--end_lr", type=float, default=0.002)
  parser.add_argument("--wd", type=float, default=1e-4)
  parser.add_argument("--mlp", default="2048-2048-2048")
  parser.add_argument("--merge", default="merge", choices=("merge", "unmerge"))
  parser.add_argument("--blockwise_total", type=int, default=4)
  parser.add_argument(
    "--drop_last", action="store_true", help="drop the last partial batch (the original keeps it)"
  )
  parser.add_argument(
    "--train_acc", action="store_true", help="also the original's per-step train accuracy"
  )
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  parser.add_argument(
    "--max_steps", type=int, default=0, help="stop training after this many steps (0: all)"
  )
  parser.add_argument(
    "--test_limit", type=int, default=0, help="test on the first N images only (0: all)"
  )
  return parser


def _import_original(ref_dir: str | None):
  if not ref_dir or not os.path.isdir(os.path.join(ref_dir, "vision", "model")):
    raise SystemExit(
      "benchmarks.torch_parity_original needs a checkout of the original repository: "
      "--ref_dir=DIR or DEINFOREG_REF_DIR=DIR (the directory holding vision/ and utils/)"
    )
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as missing:
    raise SystemExit(
      "benchmarks.torch_parity_original needs PyTorch, which this package does not install: "
      "pip install torch"
    ) from missing
  sys.path.insert(0, os.path.abspath(ref_dir))
  # pylint: disable=import-outside-toplevel,import-error
  from utils import utils as ref_utils
  from vision.model.VGG import VGG_DeInfoReg

  return torch, ref_utils, VGG_DeInfoReg


def _dataset(torch, images: np.ndarray, labels: np.ndarray, train: bool):
  """A map-style dataset of uint8 ``[N, 32, 32, 3]`` images with the original's transforms."""
  mean = torch.tensor(MEAN).view(3, 1, 1)
  std = torch.tensor(STD).view(3, 1, 1)

  class NpzCifar(torch.utils.data.Dataset):
    def __len__(self):
      return len(images)

    def __getitem__(self, index):
      image = torch.from_numpy(images[index])  # [32, 32, 3] uint8
      if train:
        # RandomCrop(32, padding=4): zero fill of the raw image, then i then j, each randint(0, 9)
        padded = torch.nn.functional.pad(image.permute(2, 0, 1), (4, 4, 4, 4)).permute(1, 2, 0)
        top = int(torch.randint(0, 9, size=(1,)).item())
        left = int(torch.randint(0, 9, size=(1,)).item())
        image = padded[top : top + 32, left : left + 32]
        # RandomHorizontalFlip(p=0.5)
        if torch.rand(1) < 0.5:
          image = image.flip(1)
      x = image.permute(2, 0, 1).contiguous().float().div(255.0)  # ToTensor
      return (x - mean) / std, int(labels[index])  # Normalize

  return NpzCifar()


def run(argv: list[str] | None = None) -> dict:
  args = _parser().parse_args(argv)
  torch, ref, VGG_DeInfoReg = _import_original(args.ref_dir)
  torch.set_num_threads(args.threads)
  with np.load(args.npz) as npz:
    data = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  if args.test_limit:
    data["x_test"] = data["x_test"][: args.test_limit]
    data["y_test"] = data["y_test"][: args.test_limit]
  n_classes = int(max(data["y_train"].max(), data["y_test"].max())) + 1
  model_args = types.SimpleNamespace(
    task="vision", n_classes=n_classes, mlp=args.mlp, merge=args.merge,
    blockwise_total=args.blockwise_total, localloss="DeInfoReg",
  )

  torch.manual_seed(args.seed)
  train_loader = torch.utils.data.DataLoader(
    _dataset(torch, data["x_train"], data["y_train"].astype(np.int64), train=True),
    batch_size=args.train_bsz, shuffle=True, drop_last=args.drop_last, num_workers=0,
  )
  test_loader = torch.utils.data.DataLoader(
    _dataset(torch, data["x_test"], data["y_test"].astype(np.int64), train=False),
    batch_size=args.test_bsz, shuffle=False, num_workers=0,
  )
  model = VGG_DeInfoReg(model_args)  # set_model("VGG_DeInfoReg", args)
  optimizer = ref.LARS(  # set_optim(model, "LARS", args)
    model.parameters(), lr=args.base_lr, weight_decay=args.wd,
    weight_decay_filter=ref.LARS.exclude_bias_and_norm,
    lars_adaptation_filter=ref.LARS.exclude_bias_and_norm,
  )
  max_steps = args.epochs * len(train_loader)
  global_steps, train_s, losses, lrs = 0, 0.0, [], []
  test_acc = []
  for epoch in range(1, args.epochs + 1):
    lr = ref.Adjust_Learning_Rate(optimizer, args.base_lr, args.end_lr, global_steps, max_steps)
    lrs.append(lr)
    train_meters = [ref.AverageMeter() for _ in range(args.blockwise_total)]
    start = time.perf_counter()
    for step, (x, y) in enumerate(train_loader):  # train()
      if args.max_steps and global_steps >= args.max_steps:
        break
      model.train()
      global_steps += 1
      loss = model(x, y)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      losses.append(loss.item())
      if not np.isfinite(losses[-1]):
        raise FloatingPointError(f"seed {args.seed}: non-finite loss at step {global_steps}")
      if args.train_acc:
        model.eval()
        with torch.no_grad():
          _, outs = model(x, y)
          for meter, val in zip(train_meters, [v for vals in outs.values() for v in vals]):
            meter.update(ref.accuracy(val, y).item(), y.shape[0])
      if step % 10 == 0:
        print(f"seed {args.seed} epoch {epoch} step {step + 1}/{len(train_loader)} lr {lr:.4f} "
              f"loss {losses[-1]:.4f} {time.perf_counter() - start:.0f}s",
              file=sys.stderr, flush=True)
    train_s += time.perf_counter() - start
    model.eval()  # test()
    meters = [ref.AverageMeter() for _ in range(args.blockwise_total)]
    with torch.no_grad():
      for x, y in test_loader:
        _, outs = model(x, y)
        for meter, val in zip(meters, [v for vals in outs.values() for v in vals]):
          meter.update(ref.accuracy(val, y).item(), y.shape[0])
    test_acc = [m.avg / 100.0 for m in meters]
    print(f"seed {args.seed} epoch {epoch} test per block {[round(a, 4) for a in test_acc]}",
          file=sys.stderr, flush=True)
  row = {
    "benchmark": "torch_parity_original",
    "seed": args.seed,
    "per_block_test_accuracy": [round(a, 4) for a in test_acc],
    "best_test_accuracy": round(max(test_acc), 4),
    "best_block": int(np.argmax(test_acc)),
    "steps": global_steps,
    "epochs": args.epochs,
    "lr": lrs,
    "loss_first": losses[0],
    "loss_last": losses[-1],
    "train_s": round(train_s, 1),
    "test_images": len(data["x_test"]),
    "drop_last": args.drop_last,
    "torch": torch.__version__,
    "threads": args.threads,
  }
  print(json.dumps(row), flush=True)
  return row


if __name__ == "__main__":
  run()
