"""Vision encoders as pure Flax linen modules.

The VGG and CIFAR ResNets of the reference code (``vision/model/VGG.py``,
``vision/model/ResNet.py`` of
github.com/ianzih/Decoupled-Supervised-Learning-for-Information-Regularization);
ResNet units as in He et al., arXiv 1512.03385.

Convolutions are 3x3 (1x1 in shortcuts and bottleneck units), stride 1 unless
stated, 'SAME' padding, no bias, followed by BatchNorm (PyTorch defaults:
momentum 0.1, i.e. Flax ``0.9``, epsilon 1e-5).  Inputs are NHWC.  A ``width``
multiplier scales every channel count so that tests and small configs use the
same code as the paper's models.  Initialisers and the BatchNorm running
variance follow each module's ``conventions`` (``layers.Conventions``).
"""

from __future__ import annotations

from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from deinforeg_jax.modules.layers import FLAX, Conventions

# The reference VGG's four blocks (``layer_cfg`` of ``VGG_DeInfoReg``): ints are
# conv-BN-ReLU widths, "M" is 2x2 max-pool.
VGG_PAPER_BLOCKS: tuple[tuple[Union[int, str], ...], ...] = (
  (128, 128, 128, 256, "M"),
  (256, 512, "M"),
  (512, 512, "M"),
  (512, "M"),
)
# ResNet stage depths (BasicBlock for 18/34, Bottleneck for 50).
RESNET_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}
RESNET_WIDTHS = (64, 128, 256, 512)


def scale_width(channels: int, width: float) -> int:
  """``max(1, round(channels * width))``."""
  return max(1, int(round(channels * width)))


class ConvBNReLU(nn.Module):
  """3x3 conv (no bias) -> BatchNorm -> ReLU.  ``[B,H,W,Cin]`` -> ``[B,H/s,W/s,features]``."""

  features: int
  strides: int = 1
  conventions: Conventions = FLAX

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = self.conventions
    x = c.conv(x, self.features, (3, 3), strides=self.strides, padding=1, use_bias=False)
    return nn.relu(c.batch_norm(train)(x))


class ConvReLU(nn.Module):
  """3x3 conv (with bias) -> ReLU, no normalisation: a layer of a *plain* network."""

  features: int
  conventions: Conventions = FLAX

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    return nn.relu(self.conventions.conv(x, self.features, (3, 3), padding=1))


class VGGStage(nn.Module):
  """A run of conv-BN-ReLU layers and max-pools, e.g. ``(128, 128, 256, "M")``.

  ``batch_norm=False`` uses plain conv-ReLU layers (``ConvReLU``), as in deep
  plain networks where end-to-end gradients vanish.
  """

  layers: Sequence[Union[int, str]]
  width: float = 1.0
  batch_norm: bool = True
  conventions: Conventions = FLAX

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    layer_cls = ConvBNReLU if self.batch_norm else ConvReLU
    for layer in self.layers:
      if layer == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = layer_cls(scale_width(int(layer), self.width), conventions=self.conventions)(x, train)
    return x


class CifarStem(nn.Module):
  """ResNet CIFAR stem: conv3x3 (stride 1) -> BN -> ReLU, no max-pool."""

  features: int = 64
  conventions: Conventions = FLAX

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return ConvBNReLU(self.features, conventions=self.conventions)(x, train)


class BasicBlock(nn.Module):
  """conv-BN-ReLU, conv-BN, plus identity or 1x1-conv-BN shortcut, then ReLU."""

  features: int
  strides: int = 1
  conventions: Conventions = FLAX

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = self.conventions
    y = ConvBNReLU(self.features, self.strides, c)(x, train)
    y = c.conv(y, self.features, (3, 3), padding=1, use_bias=False)
    y = c.batch_norm(train)(y)
    return nn.relu(y + _shortcut(x, self.features, self.strides, train, c))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand (x4), each with BN, plus shortcut, ReLU."""

  features: int
  strides: int = 1
  conventions: Conventions = FLAX
  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = self.conventions
    y = c.conv(x, self.features, (1, 1), use_bias=False)
    y = nn.relu(c.batch_norm(train)(y))
    y = ConvBNReLU(self.features, self.strides, c)(y, train)
    out_features = self.features * self.expansion
    y = c.conv(y, out_features, (1, 1), use_bias=False)
    y = c.batch_norm(train)(y)
    return nn.relu(y + _shortcut(x, out_features, self.strides, train, c))


def _shortcut(
  x: jax.Array, features: int, strides: int, train: bool, conventions: Conventions
) -> jax.Array:
  """Identity, or 1x1 conv + BN when the stride or the width changes (inside a compact scope)."""
  if strides == 1 and x.shape[-1] == features:
    return x
  x = conventions.conv(
    x, features, (1, 1), strides=strides, use_bias=False, name="shortcut_conv"
  )
  return conventions.batch_norm(train, name="shortcut_bn")(x)


class ResNetStage(nn.Module):
  """One ResNet stage: ``num_units`` residual units, the first with ``strides``.

  With ``stem=True`` the CIFAR stem runs first (ResNet block 1 trains the stem).
  """

  features: int
  num_units: int
  strides: int = 1
  unit: str = "basic"
  stem: bool = False
  width: float = 1.0
  conventions: Conventions = FLAX

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.stem:
      x = CifarStem(scale_width(64, self.width), self.conventions)(x, train)
    unit_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[self.unit]
    features = scale_width(self.features, self.width)
    for i in range(self.num_units):
      x = unit_cls(features, self.strides if i == 0 else 1, self.conventions)(x, train)
    return x


def flatten(h: jax.Array) -> jax.Array:
  """``[B, ...]`` -> ``[B, prod(...)]``: the vision block's pooled vector (no pooling)."""
  return jnp.reshape(h, (h.shape[0], -1))
