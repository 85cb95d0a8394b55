"""Checkpoint save / verified-restore time, and the share the per-array checksums take.

  python -m benchmarks.checkpoint_time [--config=launch/configs/default.py] [--repeats=5]

Builds the config's initial train state (no training), then times ``repeats``
synchronous saves and verified restores with ``checkpoint.RunCheckpointer`` in a
temporary folder, and the checksum pass alone (``checkpoint.checksums``), which runs
once per save and once per restore.  Prints one JSON line: median seconds and
``verification_overhead`` = checksum time / (save or restore time without it).
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time

import flax
import jax
from absl import app, flags
from ml_collections import config_flags

from deinforeg_jax import checkpoint, models, optim, steps
from deinforeg_jax.data import load_dataset

config_flags.DEFINE_config_file("config", "launch/configs/default.py", "Run config.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Saves and restores timed.")


def _median_seconds(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  config = flags.FLAGS.config
  info = load_dataset(config.data).info
  model = models.create_model(config, info.num_classes)
  tx = optim.make_optimizer(config.optim, optim.make_schedule(config.optim, 100, 10))
  state = jax.jit(lambda key: steps.create_train_state(model, tx, key, info.input_shape))(
    jax.random.key(0)
  )
  with tempfile.TemporaryDirectory() as workdir:
    ckpt = checkpoint.RunCheckpointer(workdir, keep=1, use_async=False, info=lambda _: None)
    state_dict = flax.serialization.to_state_dict(state)
    checkpoint.checksums(state_dict)  # compile once, outside the clock
    numbers = itertools.count(1)
    save_s = _median_seconds(lambda: ckpt.save(state, {"step": next(numbers)}), _REPEATS.value)
    last = ckpt.latest_step()
    metadata = checkpoint.read_metadata(workdir)
    restore_s = _median_seconds(
      lambda: ckpt._restore_verified(last, state, metadata),  # pylint: disable=protected-access
      _REPEATS.value,
    )
    checksum_s = _median_seconds(lambda: checkpoint.checksums(state_dict), _REPEATS.value)
    ckpt.close()
  print(
    json.dumps(
      {
        "benchmark": "checkpoint_time",
        "parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "save_s": round(save_s, 4),
        "verified_restore_s": round(restore_s, 4),
        "checksum_s": round(checksum_s, 4),
        "save_overhead": round(checksum_s / max(save_s - checksum_s, 1e-9), 4),
        "restore_overhead": round(checksum_s / max(restore_s - checksum_s, 1e-9), 4),
      }
    )
  )


if __name__ == "__main__":
  app.run(main)
