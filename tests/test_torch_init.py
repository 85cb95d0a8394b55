"""``config.model.init`` and ``config.model.bn_running_var`` (``modules/layers.py``).

``init="torch"``: every Dense/Conv kernel and bias ``~ U(-b, b)``, ``b = 1/sqrt(fan_in)``
(so ``std = b/sqrt(3)``), as PyTorch's ``nn.Linear``/``nn.Conv2d``.  The default
``"flax"`` keeps Flax's LeCun-normal kernels (``std = 1/sqrt(fan_in)``, not bounded
by ``b``) and zero biases.  ``bn_running_var="unbiased"``: the running variance takes
the batch variance times ``n/(n-1)``; normalisation is unchanged.
"""

from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deinforeg_jax import checkpoint, configuration, models
from deinforeg_jax.modules.layers import Conventions
from launch.configs import default

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 3)


def _vision_config(rule: str = "deinforeg", arch: str = "vgg", **model):
  config = default.get_config()
  config.rule = rule
  config.model.arch = arch
  config.model.vgg_blocks = "16,M;32,M;32"
  config.model.num_blocks = 3
  config.model.projector = "256-256"  # Dense(512 -> 256): a layer large enough for statistics
  config.model.bp_head_hidden = 64
  config.model.scpl_projector = "32-32"
  config.model.al_hidden = 16
  config.model.al_bridge = "32"
  if arch != "vgg":
    config.model.width = 0.25  # a 3x3 conv of 32 -> 32 channels: 9,216 weights
    config.model.num_blocks = 2
  config.model.update(model)
  return config


def _params(config, shape=IMAGE_SHAPE, dtype=jnp.float32):
  model = models.create_model(config, NUM_CLASSES)
  variables = model.init(jax.random.key(0), jnp.zeros((2, *shape), dtype), train=False)
  return flax.traverse_util.flatten_dict(jax.device_get(variables["params"]), sep="/")


def _dense_and_conv(params):
  """``[(path, kernel, bias or None, fan_in)]`` of every Dense/Conv layer (module with a kernel)."""
  layers = []
  for path, kernel in params.items():
    if path.endswith("/kernel"):
      module = path.removesuffix("/kernel")
      layers.append((module, kernel, params.get(module + "/bias"), math.prod(kernel.shape[:-1])))
  return layers


VISION_CASES = [
  ("deinforeg", "vgg"),
  ("bp", "vgg"),
  ("scpl", "vgg"),
  ("al", "vgg"),
  ("deinforeg", "resnet18"),
  ("bp", "resnet50"),
]


@pytest.mark.parametrize("rule,arch", VISION_CASES)
def test_torch_init_is_uniform_within_one_over_sqrt_fan_in(rule, arch):
  layers = _dense_and_conv(_params(_vision_config(rule, arch, init="torch")))
  assert len(layers) >= 4 and max(kernel.size for _, kernel, *_ in layers) >= 8192
  for module, kernel, bias, fan_in in layers:
    bound = 1.0 / math.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound, module
    if bias is not None:
      assert np.abs(bias).max() <= bound, module
      assert np.any(bias != 0), module
    if kernel.size >= 8192:  # a large layer: U(-b, b) fills its range, std b/sqrt(3)
      assert np.abs(kernel).max() > 0.99 * bound, module
      np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.03, err_msg=module)
      assert abs(kernel.mean()) < 0.02 * bound, module


def test_torch_init_covers_encoders_projectors_and_classifiers():
  layers = {m for m, *_ in _dense_and_conv(_params(_vision_config(init="torch")))}
  for part in ("encoder", "projector", "classifier"):
    assert any(f"block_02/{part}/" in m for m in layers), part
  params = _params(_vision_config(init="torch"))
  bias = params["block_00/projector/Dense_0/bias"]  # 256 biases; fan_in 4 * 4 * 16 = 256
  assert params["block_00/projector/Dense_0/kernel"].shape == (256, 256)
  np.testing.assert_allclose(bias.std(), 1 / math.sqrt(256) / math.sqrt(3), rtol=0.15)


@pytest.mark.parametrize("rule,arch", VISION_CASES)
def test_default_init_is_flax_lecun_normal_with_zero_biases(rule, arch):
  config = _vision_config(rule, arch)
  assert (config.model.init, config.model.bn_running_var) == ("flax", "unbiased")
  params = _params(config)
  explicit = _params(_vision_config(rule, arch, init="flax", bn_running_var="unbiased"))
  assert params.keys() == explicit.keys()
  for path, value in params.items():
    np.testing.assert_array_equal(value, explicit[path], err_msg=path)
  torch = _params(_vision_config(rule, arch, init="torch"))
  assert {p: v.shape for p, v in torch.items()} == {p: v.shape for p, v in params.items()}
  large = 0
  for module, kernel, bias, fan_in in _dense_and_conv(params):
    if bias is not None:
      assert not np.any(bias), module
    if kernel.size >= 8192:  # LeCun normal: std 1/sqrt(fan_in), values beyond the torch bound
      large += 1
      np.testing.assert_allclose(kernel.std(), 1 / math.sqrt(fan_in), rtol=0.05, err_msg=module)
      assert np.abs(kernel).max() > 1.5 / math.sqrt(fan_in), module
  assert large >= 1


def _text_config(arch: str, rule: str = "deinforeg", init: str = "flax"):
  config = default.get_config()
  config.rule = rule
  config.data.kind = "text"
  config.data.vocab_size = 50
  config.model.arch = arch
  config.model.projector = ""
  config.model.emb_dim = config.model.hidden = config.model.ff_dim = 16
  config.model.heads = 2
  config.model.num_blocks = 2
  config.model.init = init
  return config


@pytest.mark.parametrize("rule", ["deinforeg", "bp"])
def test_torch_init_text_transformer_biases_and_heads(rule):
  """Transformer weights stay Xavier-uniform; its biases and the Tanh-Dense heads follow torch."""
  flax_params = _params(_text_config("transformer", rule), (6,), jnp.int32)
  torch_params = _params(_text_config("transformer", rule, "torch"), (6,), jnp.int32)
  bound = 1 / math.sqrt(16)  # every fan_in is d_model = ff_dim = 16
  biases = [p for p in torch_params if p.endswith("bias") and "LayerNorm" not in p]
  assert len(biases) >= 6
  for path in biases:
    assert np.any(torch_params[path]) and np.abs(torch_params[path]).max() <= bound, path
    assert not np.any(flax_params[path]), path
  for path, value in torch_params.items():
    if path.endswith("kernel") and "/encoder/" in path:  # Xavier either way, same key
      np.testing.assert_array_equal(value, flax_params[path], err_msg=path)
  heads = [p for p in torch_params if p.endswith("kernel") and "/encoder/" not in p]
  assert heads
  for path in heads:
    assert np.abs(torch_params[path]).max() <= bound, path


def test_batch_norm_unbiased_running_variance():
  """After one training-mode call: var = 0.9 * 1 + 0.1 * unbiased batch variance."""
  x = jax.random.normal(jax.random.key(0), (6, 3, 3, 4)) * jnp.arange(1.0, 5.0)
  n = 6 * 3 * 3
  outputs = {}
  for convention in ("biased", "unbiased"):
    bn = Conventions(bn_running_var=convention).batch_norm(train=True)
    variables = bn.init(jax.random.key(1), x)
    assert jax.tree_util.tree_map(jnp.shape, variables) == {
      "params": {"scale": (4,), "bias": (4,)},
      "batch_stats": {"mean": (4,), "var": (4,)},
    }
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    outputs[convention] = (np.asarray(y), jax.device_get(updates["batch_stats"]))
  batch = np.asarray(x, np.float64).reshape(n, 4)
  for convention, ddof in (("biased", 0), ("unbiased", 1)):
    stats = outputs[convention][1]
    np.testing.assert_allclose(stats["mean"], 0.1 * batch.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], 0.9 * 1 + 0.1 * batch.var(0, ddof=ddof), rtol=1e-5)
  np.testing.assert_array_equal(outputs["biased"][0], outputs["unbiased"][0])
  frozen = Conventions(bn_running_var="unbiased").batch_norm(train=False)
  y_eval = frozen.apply({"params": variables["params"], "batch_stats": outputs["unbiased"][1]}, x)
  scale = np.sqrt(outputs["unbiased"][1]["var"] + 1e-5)
  np.testing.assert_allclose(
    y_eval, (np.asarray(x) - outputs["unbiased"][1]["mean"]) / scale, rtol=1e-4, atol=1e-5
  )


def test_default_batch_norm_keeps_the_originals_unbiased_running_variance():
  """Departure found by the trajectory replay (benchmarks.trajectory_parity): the original's
  BatchNorm layers (PyTorch) update the running variance with the unbiased batch variance; ours
  used Flax's biased one by default, so after 30 steps the eval-mode logits differed from the
  original's by 0.029.  The default config, built as launch.train builds it, now updates as the
  original: var <- 0.9 var + 0.1 s2 n / (n - 1)."""
  config = default.get_config()
  conventions = models.conventions(config.model)
  assert conventions.bn_running_var == "unbiased"
  x = jax.random.normal(jax.random.key(4), (5, 2, 2, 3)) + 1.0
  bn = conventions.batch_norm(train=True)
  variables = bn.init(jax.random.key(5), x)
  _, updates = bn.apply(variables, x, mutable=["batch_stats"])
  batch = np.asarray(x, np.float64).reshape(20, 3)
  np.testing.assert_allclose(
    updates["batch_stats"]["var"], 0.9 + 0.1 * batch.var(0, ddof=1), rtol=1e-5
  )
  assert checkpoint.fields_added_later({})["model.bn_running_var"] == "biased"  # older checkpoints


def test_unbiased_running_variance_in_a_model():
  """Same parameters and outputs; only the running variances differ, by n/(n-1)."""
  x = jax.random.normal(jax.random.key(2), (4, *IMAGE_SHAPE))
  results = {}
  for convention in ("biased", "unbiased"):
    model = models.create_model(_vision_config(bn_running_var=convention), NUM_CLASSES)
    variables = model.init(jax.random.key(0), x, train=False)
    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    stats = flax.traverse_util.flatten_dict(jax.device_get(updates["batch_stats"]), sep="/")
    results[convention] = (variables["params"], out, stats)
  (p_b, out_b, s_b), (p_u, out_u, s_u) = results["biased"], results["unbiased"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, p_b, p_u)
  jax.tree_util.tree_map(np.testing.assert_array_equal, out_b, out_u)
  assert s_b.keys() == s_u.keys()
  for path in s_b:
    if path.endswith("/mean"):
      np.testing.assert_array_equal(s_b[path], s_u[path])
  first = "block_00/encoder/ConvBNReLU_0/BatchNorm_0/var"  # input [4, 8, 8, 16]: n = 256
  np.testing.assert_allclose(s_u[first] - 0.9, (s_b[first] - 0.9) * 256 / 255, rtol=1e-4)
  head = "block_00/projector/BatchNorm_0/var"  # a Dense output [4, 256]: n = 4
  np.testing.assert_allclose(s_u[head] - 0.9, (s_b[head] - 0.9) * 4 / 3, rtol=1e-4)


@pytest.mark.parametrize(
  "field,value", [("init", "pytorch"), ("init", "Torch"), ("bn_running_var", "bessel")]
)
def test_bad_convention_names_the_field(field, value):
  config = _vision_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=rf"config\.model\.{field}='{value}' must be one of"):
    configuration.validate_config(config)
  with pytest.raises(ValueError, match=rf"config\.model\.{field}="):
    models.create_model(config, NUM_CLASSES)


@pytest.mark.parametrize("init", ["flax", "torch"])
def test_conventions_pass_validation(init):
  config = _vision_config(init=init, bn_running_var="unbiased")
  configuration.validate_config(config)
  configuration.validate_config(_text_config("lstm", init=init))


def test_conventions_value_is_hashable_and_defaults_to_flax_init_and_unbiased_batch_norm():
  assert Conventions() == Conventions("flax", "unbiased")
  assert len({Conventions(), Conventions("torch"), Conventions("torch")}) == 2
