"""XLA:CPU's convolution library choice (``deinforeg_jax/xla_cpu.py``): when ``import
deinforeg_jax`` sets the flag, that it takes convolutions off YNNPACK in this process, and that
this changes results only within fp32 rounding."""

from __future__ import annotations

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import DIGITS_SHAPE, NUM_CLASSES, init_variables, random_batch, tiny_config
from jax import lax

from deinforeg_jax import models, xla_cpu
from deinforeg_jax.modules import layers

# XLA's own default for the option in jaxlib 0.10.2 (YNNPACK dots, convolutions, reductions),
# given per program so that one process compiles both ways.
XLA_DEFAULT = {
  xla_cpu.OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
  "LIBRARY_FUSION_TYPE_REDUCE"
}


@pytest.fixture
def fresh_state(monkeypatch):
  """``configure`` runs against a fake environment; the module's record is restored after."""
  monkeypatch.setattr(xla_cpu, "_status", None)
  monkeypatch.setattr(xla_cpu, "_value", None)
  monkeypatch.setattr(xla_cpu, "_backend_started", lambda: False)
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: xla_cpu.MEASURED_JAXLIB[0])


def test_the_flag_is_appended_once_and_a_users_own_setting_wins(fresh_state):
  del fresh_state
  devices = "--xla_force_host_platform_device_count=2"
  environ = {"XLA_FLAGS": devices}
  assert xla_cpu.configure(environ) == "applied"
  assert environ["XLA_FLAGS"] == f"{devices} {xla_cpu.FAST_CONV_FLAG}"
  assert xla_cpu.fast_convolutions()
  assert xla_cpu.configure(environ) == "present"  # e.g. a child process: nothing added twice
  assert environ["XLA_FLAGS"].count(xla_cpu.OPTION) == 1 and xla_cpu.fast_convolutions()

  for value, fast in [("+individual_convolution", False), ("", True), ("individual_dot", True),
                      ("individual_dot,individual_convolution", False)]:
    environ = {"XLA_FLAGS": f"--{xla_cpu.OPTION}={value}"}
    assert xla_cpu.configure(environ) == "user"
    assert environ["XLA_FLAGS"] == f"--{xla_cpu.OPTION}={value}"  # kept as given
    assert xla_cpu.fast_convolutions() == fast, value
    assert layers.resolve_conv_impl("auto", "cpu") == ("xla" if fast else "winograd")


def test_nothing_is_set_after_jax_started_or_for_an_unmeasured_jaxlib(fresh_state, monkeypatch):
  del fresh_state
  environ = {}
  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: "0.0.1")
  assert xla_cpu.configure(environ) == "unsupported" and environ == {}
  assert not xla_cpu.fast_convolutions()
  assert layers.resolve_conv_impl("auto", "cpu") == "winograd"

  monkeypatch.setattr(xla_cpu, "_jaxlib_version", lambda: xla_cpu.MEASURED_JAXLIB[0])
  monkeypatch.setattr(xla_cpu, "_backend_started", lambda: True)
  with pytest.warns(UserWarning, match="imported after a JAX backend started.*XLA_FLAGS="):
    assert xla_cpu.configure(environ) == "late"
  assert environ == {} and not xla_cpu.fast_convolutions()
  monkeypatch.setattr(xla_cpu, "_default_backend", lambda: "tpu")  # CPU work is incidental there
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert xla_cpu.configure(environ) == "late"
  assert layers.resolve_conv_impl("auto", "gpu") == layers.resolve_conv_impl("auto", "tpu") == "xla"


def ynn_convolutions(hlo: str) -> int:
  """How many convolutions of an optimised HLO module run inside YNNPACK fusions (YNNPACK also
  takes reductions, so the fusions alone say nothing)."""
  called = set(re.findall(r"calls=(%[\w.]+)[^\n]*\"kind\":\"__ynn_fusion\"", hlo))
  bodies = re.findall(r"^(%[\w.]+) [^\n]*\{\n(.*?)^\}", hlo, flags=re.M | re.S)
  return sum(body.count(" convolution(") for name, body in bodies if name in called)


def _compiled_both_ways(fn, *args):
  """``fn`` compiled in this process (the package's setting) and with XLA's default option."""
  ours = jax.jit(fn).lower(*args).compile()
  default = jax.jit(fn, compiler_options=XLA_DEFAULT).lower(*args).compile()
  return ours, default


@pytest.mark.pins_implementation
@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (3, 2), (1, 2)])
def test_this_process_compiles_convolutions_without_ynnpack_and_equally(kernel_size, stride):
  """The test process imported the package before JAX started (pinned jaxlib): the flag is in
  effect, ``auto`` is XLA's convolution, and a convolution's value and gradients equal
  YNNPACK's (XLA's default) up to fp32 rounding."""
  assert xla_cpu.fast_convolutions(), xla_cpu.configure.__doc__
  assert layers.resolve_conv_impl("auto", "cpu") == "xla"
  kx, kk = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (8, 16, 16, 64))
  kernel = jax.random.normal(kk, (kernel_size, kernel_size, 64, 64)) / (8.0 * kernel_size)

  def loss(x, kernel):
    y = lax.conv_general_dilated(x, kernel, (stride, stride), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(y))

  grad = jax.value_and_grad(loss, (0, 1))
  ours, default = _compiled_both_ways(grad, x, kernel)
  assert ynn_convolutions(ours.as_text()) == 0 and ours.as_text().count(" convolution(") >= 3
  assert ynn_convolutions(default.as_text()) >= 1
  (value, grads), (want_value, want_grads) = ours(x, kernel), default(x, kernel)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  for got, want in zip(grads, want_grads):
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * float(jnp.max(jnp.abs(want))))


@pytest.mark.pins_implementation
def test_a_model_computes_alike_with_either_convolution_library():
  """The default digits stack (under XLA's default, YNNPACK takes 7 of the 11 convolutions of
  its forward and backward pass): the same outputs and parameter gradients to fp32 rounding."""
  model = models.create_model(tiny_config("vgg", conv_impl="xla", width=1.0), NUM_CLASSES)
  variables = init_variables(model, DIGITS_SHAPE)
  batch = random_batch(16, seed=0)

  def loss(params):
    out = model.apply(
      {**variables, "params": params}, batch["image"], train=True, mutable=["batch_stats"]
    )
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(out[0]))

  ours, default = _compiled_both_ways(jax.value_and_grad(loss), variables["params"])
  assert ynn_convolutions(ours.as_text()) == 0 and ours.as_text().count(" convolution(") >= 10
  assert ynn_convolutions(default.as_text()) >= 1
  (value, grads), (want_value, want_grads) = ours(variables["params"]), default(variables["params"])
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want_grads))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale),
               grads, want_grads)
