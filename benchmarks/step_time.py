"""Train-step time of DeInfoReg vs end-to-end BP on the same backbone.

  python -m benchmarks.step_time --models=vgg,resnet18 --steps=5 --warmup=2 --devices=1
  python -m benchmarks.step_time --models=lstm,transformer --seq_lens=350,128 \
      --dtype=float32,bfloat16

Prints one JSON line per (model, sequence length, dtype, rule) with the median step time and
MFU, then a ``step_time_ratio`` line per (model, sequence length, dtype) (DeInfoReg median / BP
median).  The rules' steps are interleaved (one step of each in turn) so that load from other
processes on a shared host affects both alike.  Vision batches are synthetic (fixed seed)
32x32x3 images with 10 classes, the default config's LARS; text batches (``lstm``,
``transformer``: the reference's embedding + 4 BiLSTM or Transformer blocks,
``launch/configs/spec_text.py``, Adam) are ``--seq_lens`` uniform token ids in
``[1, --vocab_size)`` (no padding) with 2 classes.  ``--dtype`` sets ``config.model.dtype``;
MFU is against ``deinforeg_jax.throughput``'s peak for that dtype on the device (null where
unknown, e.g. on a CPU, unless ``--peak_tflops``).  ``--devices=N`` splits the batch over N
fake CPU devices (``XLA_FLAGS`` is set before JAX is imported).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import sys
import time


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m benchmarks.step_time",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    "--models", default="vgg,resnet18", help="comma list: vgg, resnet18, lstm, transformer"
  )
  parser.add_argument("--rules", default="deinforeg,bp", help="comma list: deinforeg, bp")
  parser.add_argument(
    "--dtype", default="float32", help="comma list of config.model.dtype: float32, bfloat16"
  )
  parser.add_argument("--seq_lens", default="350,128", help="text models: comma list of lengths")
  parser.add_argument("--vocab_size", type=int, default=30000, help="text models: vocabulary")
  parser.add_argument(
    "--emb_dim",
    type=int,
    default=300,
    help="text models: embedding width, BiLSTM hidden size and Transformer feed-forward width "
    "(the reference: 300 each)",
  )
  parser.add_argument(
    "--peak_tflops",
    type=float,
    default=0.0,
    help="the device's peak TFLOP/s for MFU (config.train.peak_tflops; 0: throughput.py's table)",
  )
  parser.add_argument("--batch_size", type=int, default=128, help="global batch size")
  parser.add_argument("--width", type=float, default=1.0, help="channel multiplier")
  parser.add_argument("--projector", default="2048-2048-2048", help="DeInfoReg projector widths")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--devices", type=int, default=1, help="fake CPU devices on the data axis")
  parser.add_argument(
    "--shard_state",
    action="store_true",
    help="shard large parameters and optimizer state over the devices (config.parallel.shard_state)",
  )
  parser.add_argument(
    "--conv_impl",
    default="auto",
    choices=("auto", "xla", "winograd"),
    help="3x3 convolutions (config.model.conv_impl; auto: see layers.resolve_conv_impl)",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--matmul_peak", action="store_true", help="also measure the fp32 matmul GFLOP/s of one device"
  )
  return parser


def _force_host_devices(count: int) -> None:
  """Ask XLA:CPU for ``count`` devices; must run before JAX is imported."""
  if "jax" in sys.modules:
    raise RuntimeError("--devices must be applied before jax is imported.")
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


if __name__ == "__main__":
  _force_host_devices(_parser().parse_known_args()[0].devices)

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from deinforeg_jax import parallel, throughput, train
from deinforeg_jax.run import DatasetShape, build_run
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.modules import layers
from launch.configs import default
from launch.configs.spec_text import spec_text_config

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
TEXT_NUM_CLASSES = 2  # IMDB, the reference's length-350 dataset
MODEL_OVERRIDES = {
  "vgg": {"arch": "vgg", "vgg_blocks": "spec", "num_blocks": 4, "bp_head_hidden": 2048},
  "resnet18": {"arch": "resnet18", "num_blocks": 4},
}
TEXT_MODELS = ("lstm", "transformer")


def make_config(
  model: str, rule: str, args: argparse.Namespace, dtype: str = "float32", seq_len: int = 0
):
  """The default config with the reference backbone ``model`` and the benchmark's sizes; for a
  text model the reference text settings (``spec_text_config``) at length ``seq_len``."""
  if model in TEXT_MODELS:
    config = spec_text_config("imdb_reviews", model)
    config.data.max_len = seq_len
    config.data.vocab_size = args.vocab_size
    config.model.emb_dim = config.model.hidden = config.model.ff_dim = args.emb_dim
  elif model in MODEL_OVERRIDES:
    config = default.get_config()
    config.model.conv_impl = args.conv_impl
    config.model.update(MODEL_OVERRIDES[model])
    config.model.width = args.width
    config.model.projector = args.projector
  else:
    known = sorted([*MODEL_OVERRIDES, *TEXT_MODELS])
    raise ValueError(f"--models: {model!r} is unknown; choose from {known}.")
  config.rule = rule
  config.seed = args.seed
  config.data.batch_size = args.batch_size
  config.data.eval_batch_size = args.batch_size
  config.parallel.num_devices = args.devices
  config.parallel.shard_state = args.shard_state
  config.model.dtype = dtype
  config.train.peak_tflops = args.peak_tflops
  validate_config(config)
  return config


def input_spec(config) -> tuple[tuple[int, ...], int]:
  """``(one example's shape, classes)`` of ``config``'s synthetic batches."""
  if config.data.kind == "text":
    return (config.data.max_len,), TEXT_NUM_CLASSES
  return INPUT_SHAPE, NUM_CLASSES


def synthetic_batches(
  count: int,
  batch_size: int,
  seed: int,
  input_shape=INPUT_SHAPE,
  num_classes: int = NUM_CLASSES,
  vocab_size: int = 0,
) -> list[dict[str, np.ndarray]]:
  """``count`` host batches of standard-normal images (or, with ``vocab_size``, int32 token
  ids uniform in ``[1, vocab_size)``: no padding) and uniform labels."""
  rng = np.random.default_rng(seed)

  def inputs():
    if vocab_size:
      return rng.integers(1, vocab_size, (batch_size, *input_shape), dtype=np.int32)
    return rng.standard_normal((batch_size, *input_shape), np.float32)

  return [
    {"image": inputs(), "label": rng.integers(0, num_classes, batch_size, dtype=np.int32)}
    for _ in range(count)
  ]


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled (or lowered) program (per device under SPMD)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per executable
    return float(sum(c.get("flops", 0.0) for c in cost))
  return float(cost.get("flops", 0.0))


def compiled_memory(compiled) -> dict[str, int]:
  """Per-device bytes of a compiled step (``Compiled.memory_analysis()``): arguments,
  temporaries, outputs, and outputs aliased to (donated) arguments."""
  analysis = compiled.memory_analysis()
  fields = {
    "argument_bytes": "argument_size_in_bytes",
    "temp_bytes": "temp_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
  }
  return {name: int(getattr(analysis, attr, 0) or 0) for name, attr in fields.items()}


def minor_page_faults() -> int:
  """This process's minor page faults so far.  glibc's malloc maps every buffer over 32 MB
  afresh, so a step faults in its whole temporary allocation each time (4 KiB per fault)
  unless another allocator keeps the memory (README: tcmalloc)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_bytes() -> int:
  """This process's peak resident set size so far (Linux reports ``ru_maxrss`` in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StepRunner:
  """One rule's compiled train step and its (donated, updated) train state, for inputs of
  ``input_shape`` and ``num_classes`` labels."""

  def __init__(
    self,
    config,
    total_steps: int,
    mesh,
    example_batch,
    input_shape=INPUT_SHAPE,
    num_classes: int = NUM_CLASSES,
  ):
    config = config.copy_and_resolve_references()
    config.train.num_epochs = 1  # the schedule: one epoch of the timed steps
    info = DatasetShape(
      input_shape, num_classes, total_steps * config.data.batch_size, config.data.kind
    )
    run = build_run(config, info)
    state_sharding = parallel.state_shardings(
      run.abstract_state(), mesh, config.parallel.shard_state
    )
    init = jax.jit(run.create_state, out_shardings=state_sharding)
    self.name = f"{config.model.arch}/{config.rule}/{config.model.dtype}"
    self.config = config
    self.state = init(jax.random.key(config.seed))
    self.params = train.parameter_count(self.state.params)
    self.metrics = None
    self.page_faults = 0
    self.state_bytes_per_device = parallel.bytes_per_device(self.state)
    args = (self.state, example_batch["image"], example_batch["label"])

    def train_step(conv_impl: str):
      config_impl = config.copy_and_resolve_references()
      config_impl.model.conv_impl = conv_impl
      built = build_run(config_impl, info)
      return built.jit_steps(built.plan.final, mesh, state_sharding).train

    self.conv_impl = layers.resolve_conv_impl(config.model.conv_impl)
    start = time.perf_counter()
    lowered = train_step(self.conv_impl).lower(*args)
    self.step = lowered.compile()
    self.compile_s = time.perf_counter() - start
    # The model's FLOPs are those of direct convolutions (XLA's cost analysis of the step
    # with conv_impl="xla", lowered only, i.e. of the global program before SPMD partitioning):
    # a Winograd step computes the same result with fewer multiplications, and its achieved
    # rate is quoted against the same count.
    xla_lowered = lowered if self.conv_impl == "xla" else train_step("xla").lower(*args)
    self.flops = compiled_flops(xla_lowered)
    self.memory = compiled_memory(self.step)

  def timed_step(self, batch) -> float:
    """Run one train step to completion; its wall time in seconds (its minor page faults in
    ``self.page_faults``)."""
    faults = minor_page_faults()
    start = time.perf_counter()
    self.state, self.metrics, _ = self.step(self.state, batch["image"], batch["label"])
    jax.block_until_ready((self.state, self.metrics))
    elapsed = time.perf_counter() - start
    self.page_faults = minor_page_faults() - faults
    return elapsed

  def check_finite(self) -> None:
    """Fail if the last step's loss is NaN or infinite."""
    if not np.isfinite(float(self.metrics["total_loss"])):
      raise FloatingPointError(f"{self.name}: non-finite loss after the benchmark steps.")


def mfu_fields(runner: StepRunner, median_s: float, devices: int) -> dict:
  """Samples/s, TFLOP/s per device and MFU of ``runner``'s step at ``median_s`` per step
  (``throughput``: the peak for the run's dtype on this device, or why it is unknown)."""
  device = jax.devices()[0]
  cost = throughput.StepCost(runner.flops, devices, device.platform, device.device_kind)
  peak = throughput.peak(runner.config, cost)
  rates = throughput.rates(1, median_s, runner.flops, runner.config.data.batch_size, cost,
                           peak.tflops)
  del rates["flops_per_step"]  # the row's own, from the same count
  return {**rates, "peak_tflops": peak.tflops, "peak_source": peak.source,
          "device_kind": device.device_kind}


def measure_model(configs: dict, args: argparse.Namespace, mesh) -> dict[str, dict]:
  """Result row per rule of ``configs`` (rule -> config, one model, length and dtype),
  stepping the rules in turn."""
  total_steps = args.warmup + args.steps
  first = next(iter(configs.values()))
  input_shape, num_classes = input_spec(first)
  vocab_size = first.data.vocab_size if first.data.kind == "text" else 0
  batches = [
    parallel.shard_batch(b, mesh)
    for b in synthetic_batches(
      total_steps, args.batch_size, args.seed, input_shape, num_classes, vocab_size
    )
  ]
  runners = {
    rule: StepRunner(config, total_steps, mesh, batches[0], input_shape, num_classes)
    for rule, config in configs.items()
  }
  times = {rule: [] for rule in configs}
  faults = {rule: [] for rule in configs}
  for i, batch in enumerate(batches):
    for rule, runner in runners.items():
      elapsed = runner.timed_step(batch)
      if i >= args.warmup:
        times[rule].append(elapsed)
        faults[rule].append(runner.page_faults)
  rows = {}
  for rule, runner in runners.items():
    runner.check_finite()
    median = statistics.median(times[rule])
    rows[rule] = {
      "params": runner.params,
      "median_step_s": median,
      "min_step_s": min(times[rule]),
      "max_step_s": max(times[rule]),
      "spread_rel": (max(times[rule]) - min(times[rule])) / median,
      "steps": len(times[rule]),
      "flops_per_step": runner.flops,
      "achieved_gflops_per_s": runner.flops / median / 1e9,
      **mfu_fields(runner, median, args.devices),
      "compile_s": runner.compile_s,
      "conv_impl": runner.conv_impl,
      "state_bytes_per_device": runner.state_bytes_per_device,
      **runner.memory,
      "process_peak_rss_bytes": peak_rss_bytes(),
      "minor_page_faults_per_step": statistics.median(faults[rule]),
      "host_load_1m": os.getloadavg()[0],
    }
  return rows


def matmul_peak(n: int = 2048, trials: int = 10) -> dict:
  """fp32 ``n x n`` matmul GFLOP/s on the default device: best and median of ``trials`` calls.

  One matmul per call: a ``fori_loop`` chain of matmuls ran ~40% slower on XLA:CPU here.
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  times = []
  for _ in range(trials):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    times.append(time.perf_counter() - start)
  flops = 2 * n**3
  return {
    "benchmark": "matmul_peak",
    "n": n,
    "trials": trials,
    "gflops_per_s": flops / min(times) / 1e9,
    "median_gflops_per_s": flops / statistics.median(times) / 1e9,
  }


def _emit(row: dict) -> None:
  print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> None:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    parser.error("--steps must be >= 1 and --warmup >= 0.")
  seq_lens = [int(n) for n in args.seq_lens.split(",")]
  configs = {  # (model, seq_len or None, dtype) -> rule -> config
    (model, seq_len, dtype): {
      rule: make_config(model, rule, args, dtype, seq_len or 0) for rule in args.rules.split(",")
    }
    for model in args.models.split(",")
    for seq_len in (seq_lens if model in TEXT_MODELS else [None])
    for dtype in args.dtype.split(",")
  }
  mesh = parallel.make_data_mesh(args.devices)
  parallel.check_batch_divisible(args.batch_size, mesh, "data.batch_size (--batch_size)")
  peak = None
  if args.matmul_peak:
    peak = matmul_peak()
    _emit(peak)
  for (model, seq_len, dtype), model_configs in configs.items():
    sizes = (
      {"seq_len": seq_len, "vocab_size": args.vocab_size, "emb_dim": args.emb_dim}
      if seq_len
      else {"width": args.width, "projector": args.projector}
    )
    common = {
      "model": model,
      "dtype": dtype,
      "batch_size": args.batch_size,
      "devices": args.devices,
      **sizes,
      "shard_state": args.shard_state,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    rows = measure_model(model_configs, args, mesh)
    for rule, row in rows.items():
      if peak:
        row["fraction_of_matmul_peak"] = row["achieved_gflops_per_s"] / peak["gflops_per_s"]
      _emit({"benchmark": "step_time", **common, "rule": rule, **row})
    if {"deinforeg", "bp"} <= rows.keys():
      deinforeg, bp = rows["deinforeg"], rows["bp"]
      _emit(
        {
          "benchmark": "step_time_ratio",
          **common,
          "deinforeg_over_bp": deinforeg["median_step_s"] / bp["median_step_s"],
          "flops_deinforeg_over_bp": deinforeg["flops_per_step"] / bp["flops_per_step"],
          "deinforeg_median_step_s": deinforeg["median_step_s"],
          "bp_median_step_s": bp["median_step_s"],
        }
      )


if __name__ == "__main__":
  main()
