"""Throughput, MFU, time to first step, the compilation cache and profiler traces of a run.

``results.json`` holds ``throughput`` (samples/s, XLA's FLOPs per step, TFLOP/s per device,
MFU against a known or given peak), ``time_to_first_step_s`` and the cache's counts, while
``metrics.jsonl`` stays free of timings; ``config.train.profile_steps`` writes an XProf trace;
a fresh process reads the programs an earlier one wrote to ``config.train.compile_cache``.
"""

from __future__ import annotations

import json
import os
import types

import pytest
from helpers import TINY_RUNS, TINY_TRAIN_FLAGS, run_launchers, short_config

from deinforeg_jax import profiling, throughput
from deinforeg_jax.config_error import ConfigError
from deinforeg_jax.train import train_and_evaluate


def _metrics_lines(workdir) -> list[str]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return f.readlines()


@TINY_RUNS
def test_results_hold_throughput_and_mfu_and_metrics_jsonl_no_timings_and_a_profile(tmp_path):
  unknown = train_and_evaluate(
    short_config(4, train__profile_steps="2:3"), str(tmp_path / "cpu")
  )
  rates = unknown["throughput"]
  assert rates["flops_per_step"] > 0 and rates["samples_per_s"] > 0
  assert rates["tflops_per_s_per_device"] > 0
  assert rates["mfu"] is None  # no peak known for the CPU
  assert unknown["time_to_first_step_s"] > 0
  assert unknown["compile_cache"]["dir"] == os.environ["JAX_COMPILATION_CACHE_DIR"]  # the suite's
  traces = [f for _, _, files in os.walk(tmp_path / "cpu" / "profile") for f in files]
  assert any(name.endswith(".xplane.pb") for name in traces), traces

  given = train_and_evaluate(
    short_config(4, train__peak_tflops=2e-4), str(tmp_path / "given")
  )["throughput"]
  assert given["flops_per_step"] == rates["flops_per_step"]  # the same compiled step
  assert given["mfu"] == pytest.approx(given["tflops_per_s_per_device"] / 2e-4, rel=1e-12)
  # Bit-reproducible metrics: the same lines whatever the timings, and none of them timed.
  assert _metrics_lines(tmp_path / "cpu") == _metrics_lines(tmp_path / "given")
  keys = set().union(*(json.loads(line) for line in _metrics_lines(tmp_path / "cpu")))
  assert not keys & {"samples_per_s", "flops_per_step", "tflops_per_s_per_device", "mfu"}


def test_peak_table_by_device_dtype_and_precision():
  def peak(kind, platform, dtype="float32", precision="default", given=0.0):
    config = types.SimpleNamespace(
      train=types.SimpleNamespace(peak_tflops=given),
      model=types.SimpleNamespace(dtype=dtype, matmul_precision=precision),
    )
    return throughput.peak(config, throughput.StepCost(1.0, 1, platform, kind))

  assert peak("NVIDIA H100 80GB HBM3", "gpu", "bfloat16").tflops == 989.5
  assert peak("NVIDIA H100 80GB HBM3", "gpu").tflops == 494.5  # float32 matmuls on TF32
  assert peak("NVIDIA H100 PCIe", "gpu", precision="highest").tflops == 51.0
  assert peak("NVIDIA A100-SXM4-40GB", "gpu", "bfloat16").tflops == 312.0
  assert peak("NVIDIA H200", "gpu", "bfloat16").tflops == 989.5
  assert peak("TPU v5 lite", "tpu").tflops == 197.0  # float32 at "default": one bf16 pass
  assert peak("TPU v5", "tpu", "bfloat16").tflops == 459.0
  assert peak("TPU v6 lite", "tpu", "bfloat16").tflops == 918.0
  assert peak("TPU v4", "tpu", "bfloat16").tflops == 275.0
  multipass = peak("TPU v4", "tpu", precision="highest")
  assert multipass.tflops is None and "config.train.peak_tflops" in multipass.source
  assert peak("cpu", "cpu").tflops is None
  assert peak("cpu", "cpu", given=1.5) == throughput.Peak(1.5, "config.train.peak_tflops")


@pytest.mark.parametrize("spec", ["3-5", "5:3", "0:2", "a:b", ":4", "3:"])
def test_a_bad_profile_steps_is_one_config_error(spec):
  config = short_config(4, train__profile_steps=spec)
  with pytest.raises(ConfigError) as error:
    train_and_evaluate(config, "/nonexistent/never/written")
  assert str(error.value) == f"config.train.profile_steps={spec!r} {profiling.SYNTAX}."


COLD_WARM = ("cold", "warm")


def test_cache_filled_by_one_process_is_read_by_the_next(tmp_path):
  """Two fresh processes (``launch.train``, one after the other) of one tiny run on an empty
  cache folder: the first compiles and writes its programs, the second reads them all.  As a
  user runs them: without the suite's minimum compile time for cache entries (a program that
  compiled just under it in one process and just over it in the other, on a loaded machine, would
  be written by the second only)."""
  cache = tmp_path / "cache"
  flags = (*TINY_TRAIN_FLAGS, "--config.train.max_steps=2", f"--config.train.compile_cache={cache}")
  runs = {name: ["launch.train", f"--workdir={tmp_path / name}", *flags] for name in COLD_WARM}
  launched = run_launchers(
    runs, tmp_path, parallel=1, unset=("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",)
  )
  assert [launched[name].code for name in runs] == [0, 0], launched["cold"].stderr[-3000:]
  entries = os.listdir(cache)
  assert entries and f"{cache}: {len(entries)} programs read" in launched["warm"].stdout
  results = []
  for name in runs:
    with open(tmp_path / name / "results.json") as f:
      results.append(json.load(f))
  assert results[0]["compile_cache"]["compiled"] >= len(entries)
  assert results[1]["compile_cache"]["read"] == len(entries)
  assert all(r["time_to_first_step_s"] > 0 for r in results)  # present; never compared
