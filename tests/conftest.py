"""Test-wide setup, done before JAX initialises: eight fake CPU devices, a persistent
compilation cache, and quick (unoptimised) XLA compiles.

``XLA_FLAGS`` and the ``JAX_*`` variables are read once, when JAX is imported or its
first backend is created, so they are set here at conftest import time (pytest
imports conftest before any test module, and nothing may import ``jax`` earlier).
A process a test launches (``launch.train`` and the other command lines) gets
``helpers.launch_env``: a user's environment, without the quick-compile setting and flags
(``JAX_DISABLE_MOST_OPTIMIZATIONS`` changes which library code runs: it once hid a resume
crash of every user's run), with this session's compilation cache.

* Eight fake CPU devices: tests that need a mesh take the first N of them via
  ``parallel.make_data_mesh(N)``; end-to-end runs that are not about devices set
  ``config.parallel.num_devices = 1`` (an 8-device mesh compiles and runs slower on
  2 cores).
* Persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``): a temporary directory for
  the session, removed at its end, unless ``JAX_COMPILATION_CACHE_DIR`` is already set (then
  that directory is used and kept, e.g. for faster reruns).  Runs of the same config in the
  session (a determinism pair, a killed and a resumed run, a checkpoint reused by several
  tests) compile once.  It is also every run's default ``config.train.compile_cache``
  (``launch/configs/default.py`` reads the variable), in this process and in those tests
  launch, so the suite never writes to the users' ``~/.cache/deinforeg_jax``; the threshold
  below holds there too (``compile_cache.use`` keeps what JAX's variables set).  Only programs
  that took ``CACHE_MIN_COMPILE_S`` or longer to compile are written: serialising and
  compressing the ~2,000 small ones (eager ops, tiny test programs) cost ~10 % of their
  compile time and they are rarely compiled twice (four test files: 839 writes, 2.1 CPU-s,
  against 15 writes, 0.7 CPU-s, at 0.1 s).
* ``JAX_DISABLE_MOST_OPTIMIZATIONS=1``: XLA skips most of its optimisation passes, so
  programs compile several times faster (random initialisers ~7x, train steps
  ~2x) and run slower (a tiny model's step ~2x, the default width's ~8x).  That
  is the right trade for the many short runs here; the runs that must reach an
  accuracy (hundreds of steps, marked ``slow``) compile with every optimisation
  (but their initial state's program, run once) inside ``helpers.optimized_compiles()``.
  Both sides of every bit-for-bit comparison run in this process, or both in launched
  processes, so they compare like with like.  The in-process engines take the users' code
  path all the same (``xla_cpu.init_options`` passes level 0 here, level 1 for users).
* ``--xla_cpu_use_fusion_emitters=false`` (``QUICK_COMPILE_FLAGS``): XLA:CPU's older
  fusion code generator, ~40 % quicker to compile than the fusion emitters with the
  optimisations off (and ~30 % slower with them on; overall a net gain).
  ``--xla_cpu_parallel_codegen_split_count=1``: one LLVM module per program instead of
  several compiled on parallel threads; with both cores busy (pytest-xdist) the split only
  adds work: a tiny VGG / ResNet-18 run's compiles took 27 % / 25 % less CPU time (3 quiet
  alternating runs each: 3.2-4.0 vs 4.5-5.3 s, 5.8-6.4 vs 7.0-9.5 s).  An unknown
  flag in ``XLA_FLAGS`` aborts the process, so it is only added for the jaxlib
  versions it was checked with (``_QUICK_COMPILE_JAXLIB``); others run without it.
  Processes that tests launch do not get them (``helpers.launch_env``).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile

_DEVICE_FLAG = "--xla_force_host_platform_device_count"
NUM_FAKE_DEVICES = 8
CACHE_MIN_COMPILE_S = 0.1
_QUICK_COMPILE_JAXLIB = ("0.10.2",)
QUICK_COMPILE_FLAGS = (
  "--xla_cpu_use_fusion_emitters=false",
  "--xla_cpu_parallel_codegen_split_count=1",
)


def _with_device_count(flags: str, count: int) -> str:
  kept = [f for f in flags.split() if not f.startswith(_DEVICE_FLAG)]
  return " ".join(kept + [f"{_DEVICE_FLAG}={count}"])


def _quick_compile_flags(flags: str) -> str:
  try:
    jaxlib_version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return flags
  if jaxlib_version not in _QUICK_COMPILE_JAXLIB:
    return flags
  names = {f.split("=")[0] for f in flags.split()}
  return " ".join(flags.split() + [f for f in QUICK_COMPILE_FLAGS if f.split("=")[0] not in names])


os.environ["XLA_FLAGS"] = _with_device_count(
  _quick_compile_flags(os.environ.get("XLA_FLAGS", "")), NUM_FAKE_DEVICES
)

_OWN_CACHE_DIR = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _OWN_CACHE_DIR = tempfile.mkdtemp(prefix="deinforeg-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE_DIR
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(CACHE_MIN_COMPILE_S)
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

# The environment variables are read when jax is imported; set them again in case a
# plugin imported jax before this file.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_S)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
jax.config.update(
  "jax_disable_most_optimizations", os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1"
)


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE_DIR:
    shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def session_tempdir(tmp_path_factory):
  """Temporary files of the session (and of the processes its tests start, through
  ``TMPDIR``) go under pytest's base temporary directory, which pytest prunes to the last
  three sessions: TFDS's ``DatasetInfo.initialize_from_bucket`` leaves an empty ``tmp*tfds``
  directory in the system's temporary directory on every builder made before its data exists
  (~40 per suite run)."""
  directory = str(tmp_path_factory.mktemp("tempfiles", numbered=False))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tempfile, "tempdir", directory)
    patch.setenv("TMPDIR", directory)
    yield directory


@pytest.fixture(scope="session")
def eight_devices():
  """The eight fake CPU devices; fails loudly if JAX started before the flag was set."""
  devices = jax.devices()
  assert jax.device_count() == NUM_FAKE_DEVICES, (
    f"expected {NUM_FAKE_DEVICES} fake CPU devices, got {jax.device_count()}: JAX was "
    "initialised before tests/conftest.py set XLA_FLAGS"
  )
  return devices


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist's ``--dist loadgroup`` (the README's test command), the tests that
  share a module-scoped fixture (a trained run, a compiled report) are put in one group, so
  that one worker builds the fixture once; every other test is scheduled on its own.  A test
  marked with a group of its own (``helpers.TINY_RUNS``: runs of one config, whose programs a
  worker builds once, ``program_cache.shared_programs``) keeps it; its module fixtures must then
  be used only within that group.  Runs before xdist's own hook, which reads the groups."""
  del config
  for item in items:
    fixtures = getattr(item, "_fixtureinfo", None)
    if fixtures is None or item.get_closest_marker("xdist_group"):
      continue
    shared = sorted(
      name
      for name, definitions in fixtures.name2fixturedefs.items()
      if definitions and definitions[-1].scope == "module"
    )
    if shared:
      item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{shared[0]}"))
