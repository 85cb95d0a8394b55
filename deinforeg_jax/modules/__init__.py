"""Pure Flax linen building blocks (no training logic)."""

from deinforeg_jax.modules.heads import BlockClassifier, MLP, parse_layer_spec
from deinforeg_jax.modules.layers import Conventions
from deinforeg_jax.modules.vision import (
  BasicBlock,
  Bottleneck,
  CifarStem,
  ConvBNReLU,
  ResNetStage,
  VGGStage,
  flatten,
)

__all__ = [
  "BasicBlock",
  "BlockClassifier",
  "Bottleneck",
  "CifarStem",
  "Conventions",
  "ConvBNReLU",
  "MLP",
  "ResNetStage",
  "VGGStage",
  "flatten",
  "parse_layer_spec",
]
