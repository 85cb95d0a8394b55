"""Tests of the CIFAR ResNets in ``deinforeg_jax.modules.vision``: ResNet-18/34 (basic
units) and ResNet-50 (bottleneck units).

Shapes and parameter counts come from ``jax.eval_shape`` (no initialiser is compiled,
so full-width models cost nothing); unit outputs are checked against a NumPy forward
pass on tiny widths.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deinforeg_jax.modules import vision

BN_EPS = 1e-5
# The CIFAR stem: conv3x3 3->64 (1,728) + BatchNorm scale and bias (128).
CIFAR_STEM_PARAMS = 3 * 3 * 3 * 64 + 2 * 64


def _stages(depth: int, width: float = 1.0) -> list[vision.ResNetStage]:
  """The four stages of a CIFAR ResNet-``depth``, as the model factory builds them."""
  unit = "bottleneck" if depth >= 50 else "basic"
  return [
    vision.ResNetStage(features, units, 1 if k == 0 else 2, unit, k == 0, width)
    for k, (features, units) in enumerate(zip(vision.RESNET_WIDTHS, vision.RESNET_DEPTHS[depth]))
  ]


def _abstract_forward(depth: int, width: float = 1.0, batch: int = 2):
  """Per stage: (output shape, number of parameters), from shapes only."""
  x = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.float32)
  results = []
  for stage in _stages(depth, width):
    init = lambda inputs, stage=stage: stage.init_with_output(
      jax.random.key(0), inputs, train=False
    )
    x, variables = jax.eval_shape(init, x)
    count = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))
    results.append((x.shape, count))
  return results


# Parameters of the four stages (convolution kernels, BatchNorm scale and bias; no
# biases on convolutions), counted by hand unit by unit, with C_in the unit's input
# width and F its ``features``:
#   basic unit       9·C_in·F + 9·F² + 2·2F       (+ C_in·F + 2F for a 1x1 shortcut)
#   bottleneck unit  C_in·F + 9·F² + 4F² + 2·(F + F + 4F)   (+ C_in·4F + 2·4F)
# The first unit of every stage but ResNet-18/34's first has the shortcut (the stride
# or the width changes).  E.g. ResNet-50 stage 1 (C_in 64, F 64, 3 units):
# 75,008 + 2·70,400 = 215,808, plus the CIFAR stem's 1,856.
# Cross-check against torchvision's totals (ImageNet stem conv7x7 3->64 + BN = 9,536;
# fc 512·1000 + 1000 = 513,000 for 18/34, 2048·1000 + 1000 = 2,049,000 for 50):
#   resnet18 11,689,512 − 9,536 − 513,000   = 11,166,976
#   resnet34 21,797,672 − 9,536 − 513,000   = 21,275,136
#   resnet50 25,557,032 − 9,536 − 2,049,000 = 23,498,496
# which are the sums of the stage counts below (stem excluded).
STAGE_PARAMS = {
  18: (147_968, 525_568, 2_099_712, 8_393_728),
  34: (221_952, 1_116_416, 6_822_400, 13_114_368),
  50: (215_808, 1_219_584, 7_098_368, 14_964_736),
}
TORCHVISION_STAGES_TOTAL = {18: 11_166_976, 34: 21_275_136, 50: 23_498_496}
STAGE_OUTPUTS = {
  18: ((32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512)),
  34: ((32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512)),
  50: ((32, 32, 256), (16, 16, 512), (8, 8, 1024), (4, 4, 2048)),
}


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_full_width_stage_shapes_and_parameter_counts(depth):
  results = _abstract_forward(depth)
  assert [shape for shape, _ in results] == [(2,) + s for s in STAGE_OUTPUTS[depth]]
  counts = [count for _, count in results]
  expected = list(STAGE_PARAMS[depth])
  expected[0] += CIFAR_STEM_PARAMS  # block 1 owns (and trains) the stem
  assert counts == expected
  assert sum(STAGE_PARAMS[depth]) == TORCHVISION_STAGES_TOTAL[depth]


def test_resnet34_and_50_have_3_4_6_3_units_per_stage():
  for depth, unit in ((34, "BasicBlock"), (50, "Bottleneck")):
    for stage, units in zip(_stages(depth, width=0.0625), (3, 4, 6, 3)):
      variables = jax.eval_shape(
        lambda x, stage=stage: stage.init(jax.random.key(0), x, train=False),
        jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32),
      )
      names = [n for n in variables["params"] if n.startswith(unit)]
      assert len(names) == units, (depth, stage.features, names)


def test_width_multiplier_scales_every_stage():
  results = _abstract_forward(50, width=0.0625)
  assert [shape[-1] for shape, _ in results] == [16, 32, 64, 128]  # 4 x (4, 8, 16, 32)


def test_bottleneck_unit_has_three_convs_and_expands_by_four():
  unit = vision.Bottleneck(features=2, strides=2)
  out, variables = jax.eval_shape(
    lambda x: unit.init_with_output(jax.random.key(0), x, train=False),
    jax.ShapeDtypeStruct((1, 4, 4, 3), jnp.float32),
  )
  assert out.shape == (1, 2, 2, 8)
  kernels = {
    "/".join(str(k.key) for k in path[:-1]): leaf.shape
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
    if path[-1].key == "kernel"
  }
  assert kernels == {
    "Conv_0": (1, 1, 3, 2),  # 1x1 reduce
    "ConvBNReLU_0/Conv_0": (3, 3, 2, 2),  # 3x3, carries the stride
    "Conv_1": (1, 1, 2, 8),  # 1x1 expand, 4 x features
    "shortcut_conv": (1, 1, 3, 8),  # projection: the stride and the width change
  }
  # Input already 4 x features wide, stride 1: identity shortcut, three convs only.
  same = jax.eval_shape(
    lambda x: vision.Bottleneck(features=2).init(jax.random.key(0), x, train=False),
    jax.ShapeDtypeStruct((1, 4, 4, 8), jnp.float32),
  )
  assert sorted(same["params"]) == [
    "BatchNorm_0", "BatchNorm_1", "ConvBNReLU_0", "Conv_0", "Conv_1"
  ]


# ---- values: the units against a NumPy forward pass (inference-mode BatchNorm) -------


def _np_conv(x, kernel, stride, pad):
  """NHWC convolution, HWIO kernel, symmetric zero padding, in float64."""
  kh, kw = kernel.shape[:2]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (x.shape[1] + 2 * pad - kh) // stride + 1
  wo = (x.shape[2] + 2 * pad - kw) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]))
  for a in range(kh):
    for b in range(kw):
      window = xp[:, a : a + stride * ho : stride, b : b + stride * wo : stride]
      out += np.einsum("bhwc,cd->bhwd", window, kernel[a, b])
  return out


def _np_bn(y):
  """BatchNorm at initial statistics (mean 0, var 1, scale 1, bias 0)."""
  return y / np.sqrt(1.0 + BN_EPS)


def _relu(y):
  return np.maximum(y, 0.0)


def _random_variables(unit, x, seed):
  """Initial-state BatchNorm and random (NumPy) kernels, built from shapes only."""
  shapes = jax.eval_shape(lambda x: unit.init(jax.random.key(0), x, train=False), x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      return rng.normal(scale=0.5, size=leaf.shape).astype(np.float32)
    if name in ("scale", "var"):
      return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _kernel(variables, *path):
  node = variables["params"]
  for key in path:
    node = node[key]
  return np.asarray(node["kernel"], np.float64)


def _bottleneck_branch(x, kernel, strides):
  """1x1 reduce, strided 3x3, 1x1 expand; BatchNorm after each, ReLU after the first two."""
  y = _relu(_np_bn(_np_conv(x, kernel("Conv_0"), 1, 0)))
  y = _relu(_np_bn(_np_conv(y, kernel("ConvBNReLU_0", "Conv_0"), strides, 1)))
  return _np_bn(_np_conv(y, kernel("Conv_1"), 1, 0))


def _basic_branch(x, kernel, strides):
  """Strided 3x3 conv-BN-ReLU, then 3x3 conv-BN."""
  y = _relu(_np_bn(_np_conv(x, kernel("ConvBNReLU_0", "Conv_0"), strides, 1)))
  return _np_bn(_np_conv(y, kernel("Conv_0"), 1, 1))


@pytest.mark.parametrize(
  "unit_cls,branch,out_channels,strides,in_channels",
  [
    (vision.Bottleneck, _bottleneck_branch, 8, 2, 3),  # projection shortcut
    (vision.Bottleneck, _bottleneck_branch, 8, 1, 8),  # identity shortcut
    (vision.BasicBlock, _basic_branch, 2, 2, 3),
    (vision.BasicBlock, _basic_branch, 2, 1, 2),
  ],
)
def test_residual_unit_matches_numpy(unit_cls, branch, out_channels, strides, in_channels):
  """``relu(branch(x) + shortcut(x))``, the shortcut a strided 1x1 conv + BN exactly
  when the stride or the width changes."""
  x = np.random.default_rng(1).normal(size=(2, 4, 4, in_channels)).astype(np.float32)
  unit = unit_cls(features=2, strides=strides)
  variables = _random_variables(unit, x, seed=2)
  got = np.asarray(unit.apply(variables, jnp.asarray(x), train=False))

  kernel = lambda *path: _kernel(variables, *path)
  xd = x.astype(np.float64)
  projection = strides != 1 or in_channels != out_channels
  assert ("shortcut_conv" in variables["params"]) == projection
  shortcut = _np_bn(_np_conv(xd, kernel("shortcut_conv"), strides, 0)) if projection else xd
  expected = _relu(branch(xd, kernel, strides) + shortcut)
  assert got.shape == expected.shape == (2, 4 // strides, 4 // strides, out_channels)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
  "shape,kind",
  [
    ((2, 8, 8, 3), "relu"),
    ((3, 5, 7, 2), "relu"),
    ((2, 6, 4, 5), "integers"),
    ((1, 1, 3, 2), "relu"),
  ],
  ids=["even", "odd-height-and-width", "many-ties", "too-small"],
)
def test_max_pool_2x2_equals_flax_max_pool_bit_for_bit(shape, kind):
  """Values and gradients of ``vision.max_pool_2x2`` (the VGG stages' pool) equal
  ``nn.max_pool``'s exactly, ties included: ReLU zeros, small integers where most windows hold
  several maxima (each window's gradient goes to its first maximum in row-major order)."""
  kx, kg = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, shape)
  x = jax.nn.relu(x) if kind == "relu" else jnp.round(x)
  flax_pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
  out, want = jax.jit(vision.max_pool_2x2)(x), jax.jit(flax_pool)(x)
  assert out.shape == want.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  np.testing.assert_array_equal(out, want)
  g = jax.random.normal(kg, out.shape)
  grad = jax.jit(lambda x, g: jax.vjp(vision.max_pool_2x2, x)[1](g)[0])(x, g)
  want_grad = jax.jit(lambda x, g: jax.vjp(flax_pool, x)[1](g)[0])(x, g)
  np.testing.assert_array_equal(grad, want_grad)
  if kind == "integers":  # the case must really hold ties: windows with several maxima
    windows = np.asarray(x[:, : shape[1] // 2 * 2, : shape[2] // 2 * 2]).reshape(
      shape[0], shape[1] // 2, 2, shape[2] // 2, 2, shape[3]
    )
    ties = (windows == np.asarray(want)[:, :, None, :, None]).sum(axis=(2, 4)) > 1
    assert ties.mean() >= 0.25  # 18 of the 60 windows
