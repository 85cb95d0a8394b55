"""Per-block heads: the projector MLP and the block classifier.

As ``Projector`` and ``Classifier`` in the reference code's ``utils/utils.py``
(github.com/ianzih/Decoupled-Supervised-Learning-for-Information-Regularization).

A projector spec string lists output widths, ``"2048-2048-2048"`` meaning
``Dense(2048)-BN-ReLU, Dense(2048)-BN-ReLU, Dense(2048)``; the input width is
inferred.  The empty string (or ``"identity"``) is the identity projector used
for text.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from deinforeg_jax import precision
from deinforeg_jax.modules.layers import DEFAULT_CONVENTIONS, Conventions
from deinforeg_jax.config_error import ConfigError

CLASSIFIER_MODES = ("merge", "unmerge")


def parse_layer_spec(spec: str, field: str = "model.projector") -> tuple[int, ...]:
  """``"2048-2048-2048"`` -> ``(2048, 2048, 2048)``; ``""``/``"identity"`` -> ``()``.

  Raises:
    ValueError: naming ``field`` when the string is not dash-separated positive ints.
  """
  text = spec.strip()
  if text in ("", "identity"):
    return ()
  parts = text.split("-")
  try:
    widths = tuple(int(p) for p in parts)
  except ValueError:
    widths = ()
  if not widths or any(w <= 0 for w in widths):
    raise ConfigError(
      f"config.{field}={spec!r} does not parse: expected dash-separated positive "
      "integers such as '2048-2048-2048', or '' / 'identity' for no projector."
    )
  return widths


class MLP(nn.Module):
  """``Dense-BN-ReLU`` for every width but the last, then ``Dense``.

  ``[B, Din]`` -> ``[B, widths[-1]]``; the identity when ``widths`` is empty.
  """

  widths: Sequence[int]
  conventions: Conventions = DEFAULT_CONVENTIONS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = self.conventions
    for i, width in enumerate(self.widths):
      last = i == len(self.widths) - 1
      x = c.dense(x, width)
      if not last:
        x = nn.relu(c.batch_norm(train)(x))
    return x


class BlockClassifier(nn.Module):
  """The small classifier of one block.

  'merge' (default): the input is the projector output ``z`` (un-normalised,
  not detached), then ``BN-ReLU-Dense(C)`` (vision, ``style="bn_relu"``) or
  ``Tanh-Dense(C)`` (text, ``style="tanh"``).
  'unmerge': the input is the detached pooled block output, then an MLP with
  ``hidden`` widths ending in ``Dense(C)``; the stack does the detaching.
  The logits are float32 ``[B, C]`` whatever the compute dtype.
  """

  num_classes: int
  mode: str = "merge"
  style: str = "bn_relu"
  hidden: Sequence[int] = ()
  conventions: Conventions = DEFAULT_CONVENTIONS

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = self.conventions
    if self.mode == "unmerge":
      return precision.at_least_float32(MLP((*self.hidden[:-1], self.num_classes), c)(x, train))
    if self.style == "bn_relu":
      x = nn.relu(c.batch_norm(train)(x))
    else:
      x = nn.tanh(x)
    return c.logits(x, self.num_classes)
