"""The ORIGINAL PyTorch DeInfoReg code on our digits default, at a short budget (issue 34).

Does the method learn in 3-4 epochs on digits, or is a short run's failure ours?  The original's
own classes train the model of ``launch/configs/default.py`` on our digits split:

  python -m benchmarks.short_budget_original --export_digits=digits.npz   # project venv
  DEINFOREG_REF_DIR=REF TORCH_VENV/bin/python -m benchmarks.short_budget_original \\
      --npz=digits.npz --epochs=3 --seed=0                                  # torch, numpy only

Imported from a checkout of the original repository (``--ref_dir`` or ``DEINFOREG_REF_DIR``;
measured with commit fe6cc49, through ``benchmarks.torch_parity_original._import_original``):
``VGG_DeInfoReg`` and its ``train_step`` / ``inference``, ``VGG_block._make_layer``
(``conv_layer_bn``: Conv3x3 without bias, BatchNorm, ReLU), ``Set_Local_Loss`` (the DeInfoReg loss
with its ``Projector``), ``Layer_Classifier``, ``LARS`` with the ``exclude_bias_and_norm``
filters, ``Adjust_Learning_Rate`` and ``accuracy`` / ``AverageMeter``.  Nothing of the method is
written here.

This script's own, as ``benchmarks/torch_parity_original.py`` and the original's
``train_vision.py``:
  * the model's shape: our digits default's layers (``--vgg_blocks``, blocks ``;``-separated,
    ``M`` a 2x2 max-pool) on 8x8x1 inputs, instead of the original's fixed CIFAR VGG; each
    block's loss and classifier are built from the original's parts, in its order, as the
    original's ``VGG_DeInfoReg.__init__`` does (the input of a block's projector is the
    block's output, flattened);
  * the data: our digits split (``deinforeg_jax.data.load_digits``, written to an .npz by
    ``--export_digits`` under the project's venv), normalised by the train split's pixel mean
    and std, as our loader does; no augmentation;
  * the loop: ``DataLoader(shuffle=True)``, the last partial batch kept as the original's
    (1,437 images: 22 batches of 64 and one of 29) unless ``--drop_last`` (22, as ours); the
    learning rate set once per epoch by ``Adjust_Learning_Rate`` (cosine from 0.2 to 0.002 over
    the run's steps, evaluated at each epoch's first step); ``torch.manual_seed(seed)`` before
    the model is built;
  * the test: ``model.eval()``, all 360 test images in one batch, each block classifier's top-1
    accuracy.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from benchmarks.torch_parity_original import _import_original

DEFAULT_VGG_BLOCKS = "32,32,M;64,M;128,M;128"  # launch/configs/default.py


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.short_budget_original",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument("--export_digits", help="write our digits split to this .npz and exit")
  parser.add_argument("--npz", help="the digits split written by --export_digits")
  parser.add_argument(
    "--ref_dir",
    default=os.environ.get("DEINFOREG_REF_DIR"),
    help="checkout of the original repository (default: $DEINFOREG_REF_DIR)",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--base_lr", type=float, default=0.2)
  parser.add_argument("--end_lr", type=float, default=0.002)
  parser.add_argument("--wd", type=float, default=1e-4)
  parser.add_argument("--eta", type=float, default=1e-3, help="LARS trust coefficient")
  parser.add_argument("--vgg_blocks", default=DEFAULT_VGG_BLOCKS)
  parser.add_argument("--mlp", default="256-256", help="projector widths (config.model.projector)")
  parser.add_argument(
    "--drop_last", action="store_true", help="drop the last partial batch (the original keeps it)"
  )
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  return parser


def export_digits(path: str) -> None:
  """Our digits split (split seed 0) as x_train/y_train/x_test/y_test: [N, 8, 8, 1] in [0, 1]."""
  from deinforeg_jax.data import load_digits  # pylint: disable=import-outside-toplevel

  train, test, _ = load_digits(seed=0)
  np.savez(path, x_train=train.images, y_train=train.labels, x_test=test.images, y_test=test.labels)


def _layer_cfg(vgg_blocks: str) -> list[list]:
  return [[v if v == "M" else int(v) for v in block.split(",")] for block in vgg_blocks.split(";")]


def _digits_vgg(torch, ref, VGG_DeInfoReg, layer_cfg: list[list], height: int, channels: int):
  """The original ``VGG_DeInfoReg`` with ``layer_cfg``'s blocks on ``[C, H, H]`` inputs."""
  VGG_block = VGG_DeInfoReg.__bases__[0]

  class DigitsVGGDeInfoReg(VGG_DeInfoReg):
    def __init__(self, args):  # pylint: disable=super-init-not-called
      VGG_block.__init__(self, args)
      self.shape, self.in_channels = height, channels
      self.num_classes, self.merge = args.n_classes, args.merge
      self.blockwisetotal = len(layer_cfg)
      self.layer = torch.nn.ModuleList()
      self.loss = torch.nn.ModuleList()
      self.classifier = torch.nn.ModuleList()
      for block in layer_cfg:
        self.layer.append(self._make_layer(block))
        for _ in range(block.count("M")):
          self._shape_div_2()
        self.loss.append(
          ref.Set_Local_Loss(input_channel=self.in_channels, shape=self.shape, args=args)
        )
        self.classifier.append(
          ref.Layer_Classifier(input_channel=self.in_channels * self.shape**2, args=args)
        )
      self.ce = torch.nn.CrossEntropyLoss()

  return DigitsVGGDeInfoReg


def run(argv: list[str] | None = None) -> dict | None:
  args = _parser().parse_args(argv)
  if args.export_digits:
    export_digits(args.export_digits)
    return None
  if not args.npz:
    raise SystemExit("--npz=PATH (written by --export_digits) or --export_digits=PATH")
  torch, ref, VGG_DeInfoReg = _import_original(args.ref_dir)
  torch.set_num_threads(args.threads)
  with np.load(args.npz) as npz:
    data = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  mean, std = data["x_train"].mean(), data["x_train"].std()

  def tensors(images, labels):  # [N, H, W, C] -> normalised NCHW float32, int64 labels
    # A copy, not np.ascontiguousarray: with C = 1 that keeps the transposed strides, which torch
    # reads as channels-last, and the original's Flatten (a view) then fails.
    x = ((images - mean) / std).astype(np.float32).transpose(0, 3, 1, 2).copy()
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))

  x_train, y_train = tensors(data["x_train"], data["y_train"])
  x_test, y_test = tensors(data["x_test"], data["y_test"])
  layer_cfg = _layer_cfg(args.vgg_blocks)
  model_args = argparse.Namespace(
    task="vision",
    n_classes=10,
    mlp=args.mlp,
    merge="merge",
    blockwise_total=len(layer_cfg),
    localloss="DeInfoReg",
  )
  torch.manual_seed(args.seed)
  model_class = _digits_vgg(
    torch, ref, VGG_DeInfoReg, layer_cfg, x_train.shape[2], x_train.shape[1]
  )
  model = model_class(model_args)
  loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(x_train, y_train),
    batch_size=args.batch_size,
    shuffle=True,
    drop_last=args.drop_last,
  )
  optimizer = ref.LARS(
    model.parameters(),
    lr=args.base_lr,
    weight_decay=args.wd,
    eta=args.eta,
    weight_decay_filter=ref.LARS.exclude_bias_and_norm,
    lars_adaptation_filter=ref.LARS.exclude_bias_and_norm,
  )
  max_steps = args.epochs * len(loader)
  global_steps, lrs, losses = 0, [], []
  for _ in range(args.epochs):
    lrs.append(
      ref.Adjust_Learning_Rate(optimizer, args.base_lr, args.end_lr, global_steps, max_steps)
    )
    model.train()
    for x, y in loader:
      global_steps += 1
      loss = model(x, y)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      losses.append(loss.item())
  model.eval()
  with torch.no_grad():
    _, outputs = model(x_test, y_test)
  test_acc = [ref.accuracy(outputs[i + 1][0], y_test).item() / 100.0 for i in range(len(layer_cfg))]
  row = {
    "benchmark": "short_budget_original",
    "seed": args.seed,
    "epochs": args.epochs,
    "steps": global_steps,
    "drop_last": args.drop_last,
    "eta": args.eta,
    "per_block_test_accuracy": [round(a, 4) for a in test_acc],
    "lr": [round(lr, 4) for lr in lrs],
    "loss_first": round(losses[0], 4),
    "loss_last": round(losses[-1], 4),
    "torch": torch.__version__,
  }
  print(json.dumps(row), flush=True)
  return row


if __name__ == "__main__":
  run()
