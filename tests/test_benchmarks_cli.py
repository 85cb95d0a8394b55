"""``benchmarks.step_time`` on a reference text model: one row per dtype, with MFU;
``benchmarks.pipeline``'s SPMD prototype against the MPMD pipeline."""

import json

import pytest

from benchmarks import pipeline as pipeline_benchmark
from benchmarks import step_time


def test_step_time_text_rows_per_dtype_with_mfu(capsys):
  step_time.main([
    "--models=transformer", "--seq_lens=16", "--vocab_size=50", "--emb_dim=12", "--batch_size=8",
    "--rules=bp", "--dtype=float32,bfloat16", "--steps=1", "--warmup=0", "--peak_tflops=2.0",
  ])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r["benchmark"], r["model"], r["rule"], r["dtype"]) for r in rows] == [
    ("step_time", "transformer", "bp", "float32"),
    ("step_time", "transformer", "bp", "bfloat16"),
  ]
  for row in rows:
    assert (row["seq_len"], row["vocab_size"], row["emb_dim"], row["batch_size"]) == (16, 50, 12, 8)
    assert row["steps"] == 1 and row["median_step_s"] > 0 and row["flops_per_step"] > 0
    assert row["samples_per_s"] == pytest.approx(8 / row["median_step_s"])
    assert row["tflops_per_s_per_device"] == pytest.approx(
      row["flops_per_step"] / row["median_step_s"] / 1e12
    )
    assert row["mfu"] == pytest.approx(row["tflops_per_s_per_device"] / 2.0)
    assert row["peak_source"] == "config.train.peak_tflops"


def test_step_time_mfu_is_null_without_a_known_peak():
  args = step_time._parser().parse_args(["--models=lstm", "--seq_lens=16", "--dtype=bfloat16"])
  config = step_time.make_config("lstm", "deinforeg", args, "bfloat16", 16)
  runner = type("Runner", (), {"config": config, "flops": 1e9})()
  fields = step_time.mfu_fields(runner, 0.5, 1)
  assert fields["mfu"] is None and fields["peak_tflops"] is None
  assert fields["peak_source"].startswith("no peak known for bf16 on cpu device")
  assert (config.data.max_len, config.data.vocab_size, config.model.emb_dim) == (16, 30000, 300)
  assert (config.model.arch, config.model.num_blocks, config.model.dtype) == ("lstm", 4, "bfloat16")


def test_pipeline_spmd_prototype_trains_as_the_mpmd_pipeline(capsys):
  """``--spmd`` nests each stage's train step in one ``shard_map`` program (the pipeline's own
  jitted steps carry ``compiler_options``, which a nested ``jax.jit`` refuses)."""
  pipeline_benchmark.main([
    "--devices=2", "--width=0.0625", "--projector=16", "--batch_size=8", "--batches=1",
    "--repeats=1", "--balance=uniform", "--methods=pipeline_threads", "--spmd",
  ])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  throughput = [r["method"] for r in rows if r["benchmark"] == "pipeline_throughput"]
  assert throughput == ["pipeline_threads", "pipeline_spmd"]
  (check,) = [r for r in rows if r["benchmark"] == "pipeline_spmd_check"]
  assert check["rel_l2_diff_vs_mpmd"] < 1e-5
