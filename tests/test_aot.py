"""``deinforeg_jax.aot`` and ``launch.aot``: TPU ahead-of-time compilation of a tiny run for
``v5e:2x2``, without a TPU.

Needs libtpu, which the README's test command installs (the ``[tpu]`` extra). libtpu has
wheels for Linux x86_64 only: on any other platform the tests that compile for a TPU skip and say
so; on Linux x86_64 a missing libtpu fails them (with the install command), never skips them.
The compiled config is
``helpers.tiny_config()`` (a few thousand parameters); a full-size reference VGG step
takes minutes to compile on a 2-core CPU, so none is compiled here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from deinforeg_jax import aot, pipeline, steps
from deinforeg_jax.pipeline import cost as pipeline_cost
from deinforeg_jax.run import DatasetShape, build_run

from helpers import tiny_config, tiny_text_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH, EVAL_BATCH, CHIPS = 64, 360, 4  # the default digits batches over v5e:2x2

# libtpu is published for Linux x86_64 only (jax[tpu] installs nothing usable elsewhere).
LIBTPU_PLATFORM = sys.platform == "linux" and platform.machine().lower() in ("x86_64", "amd64")
needs_libtpu = pytest.mark.skipif(
  not LIBTPU_PLATFORM,
  reason=f"libtpu has wheels for Linux x86_64 only, not {sys.platform} {platform.machine()}: "
  "TPU programs cannot be compiled ahead of time on this platform",
)


def _tile_padded_bytes(shape, itemsize: int = 4) -> int:
  """Bytes of an array whose last two dimensions are padded to TPU (8, 128) tiles: an upper
  bound on the memory one array takes in HBM."""
  dims = [1] * max(0, 2 - len(shape)) + list(shape)
  dims[-1], dims[-2] = -(-dims[-1] // 128) * 128, -(-dims[-2] // 8) * 8
  return math.prod(dims) * itemsize


def _fit_run(config):
  """The ``run.Run`` that ``aot.check_topology`` compiles for ``config``."""
  return build_run(config, aot.run_shapes(config), platform="tpu", num_old=0)


def _logical_bytes(tree) -> int:
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def compiled():
  """The tiny run compiled once for v5e:2x2, with its abstract state and steps."""
  config = tiny_config()
  report = aot.check_topology(config, "v5e:2x2")
  run = _fit_run(config)
  return config, report, run, run.abstract_state()


@needs_libtpu
def test_libtpu_is_installed():
  """On Linux x86_64 the README's test command installs libtpu: its absence is a failure."""
  assert importlib.util.find_spec("libtpu") is not None, aot.LIBTPU_MISSING


def test_libtpu_skip_is_platform_only():
  """Only a platform without libtpu wheels skips; Linux x86_64 never does."""
  if sys.platform == "linux" and platform.machine() == "x86_64":
    assert LIBTPU_PLATFORM and not needs_libtpu.args[0]


def test_missing_libtpu_message(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(aot.AotError, match=r'pip install -e "\.\[tpu\]"'):
    aot.require_libtpu()


def test_dataset_table_and_overrides():
  config = tiny_config()
  assert aot.run_shapes(config).input_shape == (8, 8, 1)
  config.data.name = "cifar100"
  assert aot.run_shapes(config) == DatasetShape((32, 32, 3), 100, 50000, "image")
  config.data.name = "my_images"
  with pytest.raises(aot.AotError, match="--input_shape"):
    aot.run_shapes(config)
  assert aot.run_shapes(config, 7, (16, 16, 3)).num_classes == 7
  config.data.kind, config.model.arch, config.data.name = "text", "lstm", "ag_news_subset"
  shapes = aot.run_shapes(config)
  assert (shapes.input_shape, shapes.num_classes, shapes.dtype) == ((60,), 4, jnp.int32)


@needs_libtpu
def test_v5e_2x2_data_parallel_report(compiled):
  _, report, _, state = compiled
  assert (report.chips, report.hosts, report.chips_used) == (4, 1, CHIPS)
  assert report.device_kind == "TPU v5 lite" and report.hbm_bytes == 16 * aot.GIB
  assert [s.name for s in report.steps] == ["train", "eval"]
  train_step, eval_step = report.steps
  for step in report.steps:
    assert step.argument_bytes > 0 and step.output_bytes > 0 and step.flops > 0
    assert step.compile_s > 0 and 0 < step.total_bytes < report.hbm_bytes
  # Per chip: the replicated state plus this chip's rows of the batch, at least as their
  # logical size and at most with every array padded to (8, 128) tiles.
  leaves = jax.tree.leaves(state)
  logical = _logical_bytes(state)
  rows = GLOBAL_BATCH // CHIPS
  batch_logical = rows * (8 * 8 * 1 + 1) * 4
  padded = sum(_tile_padded_bytes(x.shape) for x in leaves)
  padded += _tile_padded_bytes((rows, 8, 8, 1)) + _tile_padded_bytes((rows,))
  assert logical + batch_logical <= train_step.argument_bytes <= padded
  # The donated state comes back in the same buffers.
  assert logical <= train_step.alias_bytes <= train_step.argument_bytes
  assert train_step.alias_bytes <= train_step.output_bytes
  assert eval_step.alias_bytes == 0
  assert report.fits is True and report.peak_bytes == max(s.total_bytes for s in report.steps)


@needs_libtpu
def test_sharded_state_splits_the_large_arrays():
  """``config.parallel.shard_state``: each chip holds about a quarter of the large arrays."""
  config = tiny_config(projector="512-512")  # 512 x 512 kernels: split, large enough to count
  config.parallel.shard_state = True
  report = aot.check_topology(config, "v5e:2x2")
  leaves = jax.tree.leaves(_fit_run(config).abstract_state())
  whole = _logical_bytes(leaves)
  large = sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves if math.prod(x.shape) >= 2**16)
  train_step = report.steps[0]
  assert large > 0.85 * whole  # the projectors' 512 x 512 kernels and their LARS momenta
  assert large / CHIPS <= train_step.argument_bytes < 0.5 * whole
  assert "state sharded (parallel.shard_state)" in aot.format_report(report, config)


@needs_libtpu
def test_flops_are_per_chip_and_plausible(compiled):
  """XLA:TPU's FLOPs for one chip's rows agree with XLA's HLO estimate of the same step
  lowered (not compiled) for one device at the per-chip batch, within 2x."""
  config, report, run, state = compiled
  rows = GLOBAL_BATCH // CHIPS
  train_step = jax.jit(
    steps.make_train_step(run.plan.final.model, run.objective, run.tx, 10, config.loss)
  )
  lowered = train_step.lower(
    state, jax.ShapeDtypeStruct((rows, 8, 8, 1), jnp.float32),
    jax.ShapeDtypeStruct((rows,), jnp.int32),
  )
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert 0.5 <= report.steps[0].flops / cost["flops"] <= 2.0


@needs_libtpu
def test_report_text_and_no_fit_message(compiled):
  config, report, _, _ = compiled
  text = aot.format_report(report, config)
  assert "v5e:2x2: TPU v5 lite, 4 chip(s) on 1 host(s), 16.00 GiB HBM per chip" in text
  assert "global batch 64 (16 per chip)" in text and "FITS" in text and "optimal" not in text
  small = dataclasses.replace(report, hbm_bytes=report.peak_bytes)  # no room for the headroom
  assert small.fits is False
  message = aot.no_fit_message(small)
  for field in ("data.batch_size", "model.width", "model.projector", "parallel.num_devices",
                "parallel.num_stages"):
    assert f"config.{field}" in message


@needs_libtpu
def test_pipeline_compiles_each_stage_for_its_own_chip():
  """Pipeline mode compiles ``pipeline.Pipeline``'s stage programs, one stage per chip: the
  stages cover the blocks in order, and their donated states hold at least the whole state."""
  config = tiny_config()
  config.parallel.mode, config.parallel.num_stages = "pipeline", 2
  report = aot.check_topology(config, "v5e:2x2")
  assert (report.mode, report.chips_used) == ("pipeline", 2)
  trains, evals = report.steps[0::2], report.steps[1::2]
  assert [s.name for s in evals] == ["eval stage 0", "eval stage 1"]
  names = [re.fullmatch(r"train stage (\d) \(blocks (\d)-(\d)\)", s.name) for s in trains]
  stages, firsts, lasts = zip(*[tuple(map(int, m.groups())) for m in names])
  assert stages == (0, 1) and firsts[0] == 0 and firsts[1] == lasts[0] + 1 and lasts[1] == 3
  run = _fit_run(config)
  whole = _logical_bytes(run.abstract_state())
  assert whole <= sum(s.alias_bytes for s in trains)
  for step in report.steps:
    assert step.flops > 0 and 0 < step.total_bytes < report.hbm_bytes
  text = aot.format_report(report, config)
  assert "pipeline, 2 stage(s) on the chips of one host" in text
  # The cost model: the stages' train FLOPs, stage 0's float32 output and the labels sent on.
  cost = report.pipeline_cost
  stage_models = [pipeline.stage_model(run.model, a, b + 1) for a, b in zip(firsts, lasts)]
  sent_shape = pipeline.stage_input_shapes(stage_models, (8, 8, 1))[1]
  assert cost.stage_flops == tuple(s.flops for s in trains)
  assert cost.sent_bytes == (GLOBAL_BATCH * (math.prod(sent_shape) + 1) * 4, 0)
  assert (cost.peak_flops_per_s, cost.link_bytes_per_s) == (197e12, 50e9)
  assert report.cost_source == "TPU v5 lite bf16 dense peak (datasheet)"
  config.model.matmul_precision = "highest"  # 6 bf16 passes per float32 dot: no datasheet peak
  none, why = aot._pipeline_cost(config, report.device_kind, report.steps, cost.sent_bytes)
  assert none is None and "config.train.peak_tflops" in why
  assert report.batches_per_epoch == 1437 // GLOBAL_BATCH
  for k in range(2):
    assert f"stage {k}: {trains[k].flops:.3e} FLOPs" in text
  assert f"sends {aot._gib(cost.sent_bytes[0])}" in text
  assert f"predicted speedup over one chip: {cost.speedup:.2f}x in the steady state" in text
  row = json.loads(json.dumps(report.as_dict()))["pipeline_cost"]
  assert row["speedup"] == pytest.approx(cost.speedup) and row["sent_bytes"] == list(cost.sent_bytes)
  assert row["epoch_speedup"] == pytest.approx(cost.epoch_speedup(report.batches_per_epoch))


def test_pipeline_cost_model_arithmetic():
  """Stage times are FLOPs / peak and bytes / link; the slowest stage's larger one sets the rate,
  against the sum of the stages' compute on one chip."""
  cost = pipeline_cost.PipelineCost((3e12, 2e12, 1e12), (1e9, 4e9, 0), 1e12, 1e9)
  assert cost.compute_s == (3.0, 2.0, 1.0) and cost.transfer_s == (1.0, 4.0, 0.0)
  assert cost.bound == ("compute", "transfer", "compute")
  assert (cost.tick_s, cost.slowest_stage, cost.one_chip_s) == (4.0, 1, 6.0)
  assert cost.speedup == 1.5
  # 3 batches: the first takes 3 + 1 + 2 + 4 + 1 = 11 s through the stages, then one per tick.
  assert cost.epoch_speedup(3) == pytest.approx(3 * 6 / (11 + 2 * 4))
  fast_links = dataclasses.replace(cost, link_bytes_per_s=1e15)
  assert fast_links.speedup == pytest.approx(6e12 / 3e12)  # compute-bound: Σ F / max F
  assert fast_links.epoch_speedup(10**9) == pytest.approx(2.0)
  inputs = [jax.ShapeDtypeStruct((8, 4), jnp.float32),
            jax.ShapeDtypeStruct((8, 16), jnp.bfloat16), jax.ShapeDtypeStruct((8, 3), jnp.float32)]
  assert pipeline_cost.sent_bytes(inputs) == (8 * 16 * 2 + 8 * 4, 0)


@needs_libtpu
def test_bfloat16_keeps_the_state_and_shrinks_the_temporaries():
  """``config.model.dtype="bfloat16"`` on a tiny BiLSTM stack: the float32 state is passed and
  donated as before (the same argument and aliased bytes), the train step's temporaries shrink.
  64 tokens: at fewer, buffers whose size does not grow with the sequence set the peak, equal in
  both dtypes (the rematerialised scan keeps only its float32 carry per step)."""
  train = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_text_config()
    config.data.max_len = 64
    config.model.dtype = dtype
    train[dtype] = aot.check_topology(config, "v5e:2x2", num_classes=2).steps[0]
  fp32, bf16 = train["float32"], train["bfloat16"]
  assert (bf16.argument_bytes, bf16.alias_bytes) == (fp32.argument_bytes, fp32.alias_bytes)
  assert bf16.temp_bytes < fp32.temp_bytes


@needs_libtpu
def test_refusals_name_the_field(capsys):
  config = tiny_config()
  config.data.batch_size = 66
  with pytest.raises(aot.AotError, match="config.data.batch_size=66 is not divisible"):
    aot.check_topology(config, "v5e:2x2")
  config.data.batch_size = 1440  # digits: 1437 training examples
  with pytest.raises(aot.AotError, match="config.data.batch_size=1440 exceeds the 1437 training"):
    aot.check_topology(config, "v5e:2x2")
  config = tiny_config(rule="bp")
  config.parallel.mode = "pipeline"
  with pytest.raises(aot.AotError, match="config.rule='bp' cannot be pipelined"):
    aot.check_topology(config, "v5e:2x2")
  config = tiny_config()
  config.parallel.mode, config.parallel.num_stages = "pipeline", 5
  with pytest.raises(aot.AotError, match="config.parallel.num_stages=5"):
    aot.check_topology(config, "v5e:2x2")
  with pytest.raises(aot.AotError, match="--topology='v9z:1x1'"):
    aot.check_topology(tiny_config(), "v9z:1x1")
  with pytest.raises(aot.AotError, match=r"^v9z:1x1: --topology='v9z:1x1' is not a TPU topology"):
    aot.check_topologies(tiny_config(), ["v9z:1x1"])
  assert capsys.readouterr().out.startswith("v9z:1x1: DOES NOT COMPILE: --topology='v9z:1x1'")


@needs_libtpu
def test_command_line_exit_status(tmp_path):
  """The CLI prints the report, appends it to ``--json`` and exits 1 when the run does not fit
  (1 MiB of HBM)."""
  rows = tmp_path / "rows.jsonl"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
    [sys.executable, "-m", "launch.aot", "--topology=v5e:2x2", "--hbm_gib=0.001",
     "--config.model.width=0.125", "--config.model.projector=32-32", f"--json={rows}"],
    cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
  )
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "DOES NOT FIT" in proc.stdout and "FLOPs/chip" in proc.stdout
  assert "config.data.batch_size" in proc.stderr and "config.model.width" in proc.stderr
  (row,) = [json.loads(line) for line in rows.read_text().splitlines()]
  assert (row["topology"], row["chips_used"], row["fits"]) == ("v5e:2x2", 4, False)
  assert row["config"]["model"]["projector"] == "32-32" and row["hbm_bytes"] == 2**30 // 1000
