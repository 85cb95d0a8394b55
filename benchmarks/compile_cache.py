"""Time to first step of the default job on a cold and on a warm compilation cache.

  python -m benchmarks.compile_cache [--repeats=3] [--max_steps=1] [--flags=--config.rule=bp]

Each repeat starts ``python -m launch.train`` twice as fresh processes, in a new temporary
folder: first on an empty ``config.train.compile_cache`` folder (cold: everything compiles and
is written there), then again on a new workdir with the same folder (warm: the programs are
read).  The launched processes get this one's environment without ``JAX_COMPILATION_CACHE_DIR``
and JAX's cache thresholds, so they use the defaults a user gets.  ``--max_steps`` stops each
run early (the first step does not depend on it).  Cold and warm alternate, so load from other
processes slows both about alike.  Prints one JSON line per run (``time_to_first_step_s`` and
the programs read and compiled, from its ``results.json``) and a summary line: the medians and
``cold_over_warm``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 3, "Cold and warm runs, each.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 1, "config.train.max_steps of every run.")
_FLAGS = flags.DEFINE_list("flags", [], "More launch.train flags, e.g. --config.rule=bp.")

DEFAULT_VARIABLES = (  # left out of the runs' environment: the users' defaults apply
  "JAX_COMPILATION_CACHE_DIR",
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)


def _train(workdir: str, cache: str) -> dict:
  """One ``launch.train`` process; its ``results.json`` line."""
  env = {k: v for k, v in os.environ.items() if k not in DEFAULT_VARIABLES}
  command = [
    sys.executable, "-m", "launch.train", f"--workdir={workdir}",
    f"--config.train.compile_cache={cache}", f"--config.train.max_steps={_MAX_STEPS.value}",
    *_FLAGS.value,
  ]
  subprocess.run(command, env=env, check=True, capture_output=True)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  return {
    "time_to_first_step_s": results["time_to_first_step_s"],
    "programs_read": results["compile_cache"]["read"],
    "programs_compiled": results["compile_cache"]["compiled"],
  }


def main(argv):
  del argv
  times = {"cold": [], "warm": []}
  for repeat in range(_REPEATS.value):
    with tempfile.TemporaryDirectory() as root:
      cache = os.path.join(root, "jax_cache")
      for kind in ("cold", "warm"):
        line = _train(os.path.join(root, kind), cache)
        times[kind].append(line["time_to_first_step_s"])
        print(json.dumps({"benchmark": "compile_cache", "cache": kind, "repeat": repeat, **line}))
  cold, warm = (statistics.median(times[k]) for k in ("cold", "warm"))
  print(json.dumps({
    "benchmark": "compile_cache", "summary": True, "flags": _FLAGS.value,
    "max_steps": _MAX_STEPS.value, "cold_s": times["cold"], "warm_s": times["warm"],
    "median_cold_s": cold, "median_warm_s": warm, "cold_over_warm": cold / warm,
  }))


if __name__ == "__main__":
  app.run(main)
