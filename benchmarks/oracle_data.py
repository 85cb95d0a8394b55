"""The inputs of a vision oracle, rebuilt from indices into ``../shared/data/cifar10_20k.npz``.

Numpy only: ``benchmarks/make_oracle.py`` (the original's PyTorch venv) and
``benchmarks.trajectory_parity`` (ours) both call ``cifar_inputs`` on the indices an oracle
stores, so both sides train on the same float32 arrays bit for bit and no image is copied
into an oracle.

An image ``u`` (uint8 ``[32, 32, 3]``) becomes ``(u[o:o+S, o:o+S] / 255 - mean) / std`` with
``o = (32 - S) // 2`` (a centre crop of side ``S``, ``meta.image_size``), CIFAR-10's
mean ``(0.4914, 0.4822, 0.4465)`` and std ``(0.2023, 0.1994, 0.2010)`` (the original's
normalisation), float32, NHWC.  Training batch ``t`` is the train images
``train_index[t]`` (``[T, B]``); the evaluation set is the test images ``eval_index``.
"""

from __future__ import annotations

import os

import numpy as np

CIFAR10_FILE = "cifar10_20k.npz"
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2023, 0.1994, 0.2010], np.float32)


def default_data_dir() -> str:
  """``../shared/data`` beside the repository (where CI keeps the data)."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.normpath(os.path.join(repo, "..", "shared", "data"))


def normalise(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 ``[N, 32, 32, 3]`` -> float32 ``[N, S, S, 3]``: centre crop, /255, CIFAR mean/std."""
  start = (images.shape[1] - size) // 2
  crop = images[:, start:start + size, start:start + size]
  return ((crop.astype(np.float32) / np.float32(255.0)) - CIFAR_MEAN) / CIFAR_STD


def batch_indices(offset: int, steps: int, batch: int) -> np.ndarray:
  """``[T, B]`` train indices: batch ``t`` is images ``[offset + tB, offset + (t+1)B)``."""
  return np.arange(offset, offset + steps * batch, dtype=np.int32).reshape(steps, batch)


def cifar_inputs(data_dir: str, train_index: np.ndarray, eval_index: np.ndarray, size: int):
  """``(x [T, B, S, S, 3], y [T, B], x_eval [E, S, S, 3], y_eval [E])`` (float32, int64)."""
  path = os.path.join(data_dir, CIFAR10_FILE)
  with np.load(path) as data:
    x_train, y_train = data["x_train"], data["y_train"]
    x_test, y_test = data["x_test"], data["y_test"]
  flat = train_index.reshape(-1)
  x = normalise(x_train[flat], size).reshape(*train_index.shape, size, size, 3)
  y = y_train[flat].astype(np.int64).reshape(train_index.shape)
  return x, y, normalise(x_test[eval_index], size), y_test[eval_index].astype(np.int64)
