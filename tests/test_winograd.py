"""Winograd F(2x2, 3x3) convolutions (``modules/winograd.py``, ``config.model.conv_impl``)
against XLA's direct convolution: forward, gradients, fallbacks, whole models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import DIGITS_SHAPE, NUM_CLASSES, init_variables, random_batch, tiny_config
from jax import lax

from deinforeg_jax import checkpoint, models
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.modules import layers, winograd
from launch.configs import default

NHWC = ("NHWC", "HWIO", "NHWC")


def direct(x, kernel):
  return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def _inputs(shape, out_channels, seed=0):
  kx, kk = jax.random.split(jax.random.key(seed))
  x = jax.random.normal(kx, shape)
  kernel = jax.random.normal(kk, (3, 3, shape[-1], out_channels)) / np.sqrt(9 * shape[-1])
  return x, kernel


@pytest.mark.parametrize(
  "shape,out_channels",
  [((2, 8, 8, 16), 24), ((3, 5, 7, 8), 8), ((1, 1, 1, 4), 4), ((2, 4, 6, 32), 32)],
  ids=["even", "odd-height-and-width", "one-pixel", "wide"],
)
def test_forward_and_gradients_equal_the_direct_convolution(shape, out_channels):
  x, kernel = _inputs(shape, out_channels)
  np.testing.assert_allclose(
    jax.jit(winograd.winograd_conv3x3)(x, kernel), direct(x, kernel), atol=3e-6
  )

  def loss(conv):
    return lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel)))

  got = jax.jit(jax.grad(loss(winograd.winograd_conv3x3), (0, 1)))(x, kernel)
  want = jax.jit(jax.grad(loss(direct), (0, 1)))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=2e-5 * float(jnp.max(jnp.abs(w))) + 1e-6)


@pytest.mark.parametrize(
  "strides,padding,kernel_size,channels,size",
  [
    ((2, 2), ((1, 1), (1, 1)), 3, 128, 8),
    ((1, 1), "VALID", 3, 128, 8),
    ((1, 1), ((0, 0), (0, 0)), 1, 128, 8),
    ((1, 1), ((1, 1), (1, 1)), 3, 8, 8),
    ((1, 1), ((1, 1), (1, 1)), 3, 128, 2),
  ],
  ids=["stride-2", "valid-padding", "1x1", "few-channels", "few-pixels"],
)
def test_other_convolutions_fall_back_to_xla_exactly(strides, padding, kernel_size, channels, size):
  x, _ = _inputs((2, size, size, channels), 16)
  kernel = jax.random.normal(jax.random.key(3), (kernel_size, kernel_size, channels, 16))
  dn = lax.conv_dimension_numbers(x.shape, kernel.shape, NHWC)
  got = winograd.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=dn)
  want = lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=dn)
  np.testing.assert_array_equal(got, want)


def test_a_wide_enough_layer_takes_the_winograd_path():
  x, kernel = _inputs((1, winograd.MIN_SIZE, winograd.MIN_SIZE, winograd.MIN_CHANNELS), 8)
  dn = lax.conv_dimension_numbers(x.shape, kernel.shape, NHWC)
  conv = lambda x, k: winograd.conv_general_dilated(  # noqa: E731
    x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn
  )
  jaxpr = str(jax.make_jaxpr(conv)(x, kernel))
  assert "conv_general_dilated" not in jaxpr and "dot_general" in jaxpr


@pytest.mark.parametrize("arch", ["vgg", "resnet18"])
def test_models_agree_across_conv_impls(arch, monkeypatch):
  """Every stride-1 3x3 layer of a tiny model by Winograd (``MIN_CHANNELS``, ``MIN_SIZE`` 1):
  the same parameters, outputs and gradients as XLA's convolutions, to fp32 rounding."""
  monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
  monkeypatch.setattr(winograd, "MIN_SIZE", 1)
  batch = random_batch(8, seed=0)
  outputs = {}
  for impl in ("xla", "winograd"):
    model = models.create_model(tiny_config(arch, conv_impl=impl), NUM_CLASSES)
    variables = init_variables(model, DIGITS_SHAPE)

    def loss(params):
      out = model.apply(
        {**variables, "params": params}, batch["image"], train=True, mutable=["batch_stats"]
      )
      return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(out[0]))

    traced = jax.jit(jax.value_and_grad(loss)).trace(variables["params"])
    value, grads = traced.lower().compile()(variables["params"])
    outputs[impl] = (variables["params"], value, grads)
    jaxpr = str(traced.jaxpr)  # the forward pass and its gradient
    assert ("conv_general_dilated" in jaxpr) == (impl == "xla" or arch == "resnet18")
  (p_xla, v_xla, g_xla), (p_w, v_w, g_w) = outputs["xla"], outputs["winograd"]
  jax.tree.map(np.testing.assert_array_equal, p_xla, p_w)  # the same parameters
  np.testing.assert_allclose(v_w, v_xla, rtol=1e-5)
  # fp32 rounding relative to the gradients' scale (some leaves, e.g. a bias before a
  # BatchNorm, are zero up to rounding).
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_xla))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale), g_w, g_xla)


def test_explicit_conv_impls_are_kept_on_every_backend():
  for platform in ("cpu", "gpu", "tpu"):  # "auto": tests/test_xla_cpu.py
    assert layers.resolve_conv_impl("xla", platform) == "xla"
    assert layers.resolve_conv_impl("winograd", platform) == "winograd"


def test_conv_impl_is_validated_and_may_change_on_resume():
  config = default.get_config()
  config.model.conv_impl = "fft"
  with pytest.raises(ValueError, match="config.model.conv_impl"):
    validate_config(config)
  saved = default.get_config().to_dict()
  now = default.get_config().to_dict()
  saved["model"]["conv_impl"], now["model"]["conv_impl"] = "xla", "winograd"
  assert checkpoint.changed_fields(saved, now) == {}
