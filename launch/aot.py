"""Compile a run's train and eval steps for Cloud TPU topologies ahead of time, without a TPU.

  python -m launch.aot --config=launch/configs/cifar10_vgg.py --topology=v5e:2x2,v4:2x2x1
  python -m launch.aot --config=launch/configs/agnews_lstm.py --topology=v5e:4x4 --config.rule=bp

Takes the same ``--config`` flags as ``launch.train`` and, for every ``--topology``
(``get_topology_desc`` names: ``v5e:2x2``, ``v5e:4x4``, ``v4:2x2x1``, ``v5p:2x2x1``,
``v6e:2x2``, ...), compiles the run's steps for the topology's chips
(``deinforeg_jax.aot``: data parallel over ``config.parallel.num_devices`` chips, 0 = all,
with ``config.parallel.shard_state`` splitting the state; or one pipeline stage per chip of
one host).

It prints, per topology, the chips and hosts (as libtpu lays the topology out: 4 chips
per host, so an 8-chip single-host VM such as v5litepod-8 shows as 2 hosts; the compiled
data-parallel program is the same), per chip and step the argument,
temporary and output bytes (``aliased`` is the part of the outputs that reuses the donated
state's buffers) against the chip's HBM, whether the step fits with ``--headroom``, XLA's
FLOPs per chip and step and the compile time; in pipeline mode also each stage's FLOPs and the
bytes it sends to the next stage, and the speedup over one chip that the chip's peak FLOP/s and
ICI bandwidth predict (``deinforeg_jax.pipeline.cost``; ``--json`` has it as ``pipeline_cost``).
It exits with status 1 when a step does not fit or does not compile (the message names the
config fields to change), when libtpu is missing or when a flag is wrong.

No dataset is read: the input shape and class count come from ``deinforeg_jax.aot.DATASETS``
for the shipped datasets (``digits`` 8x8x1/10, ``cifar10`` 32x32x3/10, ``cifar100``
32x32x3/100, ``tiny_imagenet`` 32x32x3/200 as prepared with ``--resize=32``; text:
``(config.data.max_len,)`` int32 token ids, the reference length when 0, with
``config.data.vocab_size`` embedding rows) or from
``--input_shape`` / ``--num_classes`` for any other ``config.data.name``.

Needs libtpu (``pip install -e ".[tpu]"``, i.e. ``jax[tpu]`` at the pinned JAX
version); libtpu prints warnings about missing TPU environment variables
(``TPU_ACCELERATOR_TYPE``, ``TPU_WORKER_HOSTNAMES``) on a machine without a TPU:
they are harmless here.  A full-size reference VGG step takes minutes to compile
on a 2-core CPU.
"""

from __future__ import annotations

import jax
from absl import app, flags, logging

from deinforeg_jax import aot, user_errors
from launch import cli

cli.define_config(
  "config", help_string="Run config (ml_collections file), as launch.train.", lock_config=True
)
_TOPOLOGY = flags.DEFINE_list(
  "topology", None, "TPU topologies, e.g. v5e:2x2,v5e:4x4,v4:2x2x1,v6e:2x2.", required=True
)
_NUM_CLASSES = flags.DEFINE_integer(
  "num_classes", 0, "Classes; 0: from config.data.name (digits/cifar10 10, cifar100 100, "
  "tiny_imagenet 200, imdb_reviews 2, ag_news_subset 4, dbpedia 14). No dataset is read."
)
_INPUT_SHAPE = flags.DEFINE_list(
  "input_shape", [], "One example's shape, e.g. 32,32,3; empty: from config.data.name (digits "
  "8,8,1; cifar10/cifar100/tiny_imagenet 32,32,3; text: config.data.max_len token ids, int32)."
)
_HEADROOM = flags.DEFINE_float(
  "headroom", 0.1, "Fraction of each chip's HBM kept free for the runtime, input buffers and "
  "fragmentation; a step fits when its per-chip bytes stay below the rest."
)
_HBM_GIB = flags.DEFINE_float("hbm_gib", 0.0, "Per-chip HBM in GiB; 0: from the device kind.")
_JSON = flags.DEFINE_string("json", "", "Append one JSON line per topology to this file.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  # The numbers must be those of the program a TPU would run: XLA's full optimisation, even when
  # JAX_DISABLE_MOST_OPTIMIZATIONS is set (the test suite sets it for quicker compiles).
  jax.config.update("jax_disable_most_optimizations", False)
  aot.require_libtpu()
  try:
    input_shape = tuple(int(v) for v in _INPUT_SHAPE.value)
  except ValueError:
    raise user_errors.UserError(
      f"--input_shape={','.join(_INPUT_SHAPE.value)}: give integers, e.g. 32,32,3."
    ) from None
  aot.check_topologies(
    flags.FLAGS.config, _TOPOLOGY.value, json_path=_JSON.value, num_classes=_NUM_CLASSES.value,
    input_shape=input_shape, headroom=_HEADROOM.value, hbm_gib=_HBM_GIB.value,
  )


def run():
  """Entry point of the ``deinforeg-aot`` console script (exit codes: ``launch.cli``; 1 also
  when a topology does not compile or fit)."""
  cli.run(main)


if __name__ == "__main__":
  run()
