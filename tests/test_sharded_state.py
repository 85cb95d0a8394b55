"""``config.parallel.shard_state``: large state arrays sharded over the data axis.

Sharding changes where the state lives, not what it is: a run with the state sharded
over 8 fake devices equals the replicated run on 1 device to float32
reduction-order tolerance, and its checkpoint resumes as a replicated run.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec
from helpers import saved_state, tiny_config

from deinforeg_jax import data_parallel, parallel, train
from deinforeg_jax.run import build_run


def _config(num_devices: int, shard: bool, max_steps: int = 3):
  # A 16-wide projector: its sums over 8 devices stay within the float32 tolerance compared below.
  config = tiny_config(num_epochs=1, projector="16-16")
  config.data.batch_size = 64
  config.train.max_steps = max_steps
  config.parallel.num_devices = num_devices
  config.parallel.shard_state = shard
  config.checkpoint.use_async = False
  return config


def test_state_shardings_split_large_arrays_on_a_divisible_axis(eight_devices):
  del eight_devices
  mesh = parallel.make_data_mesh(8)
  shapes = {
    "kernel": jax.ShapeDtypeStruct((3, 3, 64, 256), np.float32),  # 147,456 elements
    "dense": jax.ShapeDtypeStruct((4096, 64), np.float32),  # output axis, not the larger input
    "ragged": jax.ShapeDtypeStruct((4096, 36), np.float32),  # 36 outputs: split the inputs
    "odd": jax.ShapeDtypeStruct((3, 3, 3, 2731), np.float32),  # no axis divisible by 8
    "bias": jax.ShapeDtypeStruct((256,), np.float32),  # small
    "step": jax.ShapeDtypeStruct((), np.int32),
  }
  specs = jax.tree.map(lambda s: s.spec, parallel.state_shardings(shapes, mesh, shard=True))
  assert specs == {
    "kernel": PartitionSpec(None, None, None, "data"),
    "dense": PartitionSpec(None, "data"),
    "ragged": PartitionSpec("data", None),
    "odd": PartitionSpec(),
    "bias": PartitionSpec(),
    "step": PartitionSpec(),
  }
  replicated = parallel.state_shardings(shapes, mesh, shard=False)
  assert all(s.spec == PartitionSpec() for s in jax.tree.leaves(replicated))
  placed = jax.tree.map(
    lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
    shapes,
    parallel.state_shardings(shapes, mesh, shard=True),
  )
  split = (147456 + 4096 * 64 + 4096 * 36) // 8
  assert parallel.bytes_per_device(placed) == 4 * (split + 3 * 3 * 3 * 2731 + 256 + 1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, eight_devices):
  """The same 3 steps: replicated on 1 device, and sharded over 8."""
  del eight_devices
  root = tmp_path_factory.mktemp("sharded")
  old = parallel.SHARD_MIN_ELEMENTS
  parallel.SHARD_MIN_ELEMENTS = 256  # shard the tiny test model's arrays too
  try:
    out = {}
    for name, devices, shard in (("one", 1, False), ("sharded", 8, True)):
      workdir = str(root / name)
      results = train.train_and_evaluate(_config(devices, shard), workdir)
      out[name] = (workdir, results, saved_state(workdir)[0])
  finally:
    parallel.SHARD_MIN_ELEMENTS = old
  return out


def test_sharded_training_equals_replicated_training(runs):
  _, one_results, one = runs["one"]
  _, sharded_results, sharded = runs["sharded"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sharded, one)
  assert sharded_results["steps"] == 3
  assert sharded_results["per_block_test_accuracy"] == pytest.approx(
    one_results["per_block_test_accuracy"], abs=1 / 360 + 1e-9
  )


def test_the_sharded_state_is_really_sharded_and_smaller_per_device(eight_devices):
  from deinforeg_jax.data import load_dataset  # pylint: disable=import-outside-toplevel

  del eight_devices
  engines = {}
  old = parallel.SHARD_MIN_ELEMENTS
  parallel.SHARD_MIN_ELEMENTS = 256
  try:
    for shard in (True, False):
      config = _config(8, shard)
      engines[shard] = data_parallel.DataParallelEngine(
        build_run(config, load_dataset(config.data).info)
      )
  finally:
    parallel.SHARD_MIN_ELEMENTS = old
  state = engines[True].init(jax.random.key(0))
  specs = {leaf.sharding.spec for leaf in jax.tree.leaves(state)}
  assert PartitionSpec(None, None, None, "data") in specs  # conv kernels split on out-channels
  sharded_mib = float(engines[True].describe().split("state sharded: ")[1].split(" MiB")[0])
  replicated_mib = float(engines[False].describe().split("state replicated: ")[1].split(" MiB")[0])
  assert sharded_mib < 0.5 * replicated_mib


def test_a_sharded_checkpoint_resumes_as_a_replicated_run(runs, tmp_path):
  import shutil  # pylint: disable=import-outside-toplevel

  workdir = str(tmp_path / "resume")
  shutil.copytree(runs["sharded"][0], workdir)
  results = train.train_and_evaluate(_config(1, False, max_steps=4), workdir)
  assert results["steps"] == 4
  resumed, step = saved_state(workdir)
  assert step == 4
  assert jax.tree.structure(resumed) == jax.tree.structure(runs["sharded"][2])
