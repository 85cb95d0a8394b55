"""XLA:CPU settings: the convolution library (set when the package is imported, before JAX
starts) and per-program compiler options.

jaxlib 0.10.2's XLA:CPU hands 2-D convolutions to YNNPACK by default (its debug option
``xla_cpu_experimental_ynn_fusion_type`` lists individual dots, individual convolutions and
reductions).  On x86 CPUs that path runs a 3x3 convolution's forward and backward at about half
the rate of XLA's own (Eigen) convolution: 137 vs 250 GFLOP/s for 256->256 channels, batch 64,
16x16, on 2 cores, and the reference VGG's BP train step (batch 128, 32x32) takes 9.9 s instead
of 6.4 s.  ``FAST_CONV_FLAG`` takes convolutions off that list; dots and reductions keep YNNPACK.

XLA reads ``XLA_FLAGS`` once, when the first JAX backend starts, so ``configure`` (run by
``import deinforeg_jax``) only appends the flag while no backend has started, only for the
jaxlib versions it was measured with (an unknown flag aborts the process), and never overrides a
setting of the option already in ``XLA_FLAGS``: a user's own value wins, e.g.
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`` restores XLA's
default.  ``fast_convolutions()`` says whether the flag is in effect; ``config.model.conv_impl=
"auto"`` then uses XLA's convolution on the CPU, and the Winograd matmuls otherwise
(``modules.layers.resolve_conv_impl``).

Per-program options (``jax.jit(..., compiler_options=...)``, CPU only, measured on 2 cores):

- ``init_options``: the initial state's program (run once, mostly random-number code) at LLVM
  level 1 instead of XLA's default 3 compiles 2-4x faster (digits default 6.1 -> 2.1 s,
  reference VGG 8.0 -> 3.5 s, quarter-width ResNet-18 11.9 -> 4.1 s) and draws the same bits
  for every architecture, rule and ``model.init`` (level 0 changes a few in the last place).
- ``train_step_options``: copy insertion with region analysis.  The train step donates its
  state and updates the parameters in place; without the analysis XLA copies parameters that
  the backward pass reads after scheduling their update (the DeInfoReg projectors' first
  kernels, 537 MB for the reference VGG's block 0).  Same bits; in one process, alternating
  steps: ResNet-18 DeInfoReg 3.97 -> 3.70 s and 4.87 -> 4.47 s (faster in 5 of 6 pairs each),
  reference VGG DeInfoReg 6.77 -> 6.65 s (5 of 6), step temporaries 1.89 -> 1.50 / 2.30 ->
  2.11 GiB; BP steps unchanged within noise.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import warnings

OPTION = "xla_cpu_experimental_ynn_fusion_type"
FAST_CONV_VALUE = "-individual_convolution"
FAST_CONV_FLAG = f"--{OPTION}={FAST_CONV_VALUE}"
# jaxlib versions whose XLA knows the option and whose default list holds individual_convolution.
MEASURED_JAXLIB = ("0.10.2",)
INIT_OPTIMIZATION_LEVEL = 1  # LLVM level of the initial state's program (XLA's default: 3)
REGION_ANALYSIS = "xla_cpu_copy_insertion_use_region_analysis"

_status: str | None = None
_value: str | None = None  # the option's value in effect, if ``configure`` knows it


def _option_value(flags: str) -> str | None:
  """The last value ``flags`` gives ``OPTION`` (None if it is not set)."""
  value = None
  for flag in flags.split():
    name, _, rest = flag.lstrip("-").partition("=")
    if name == OPTION:
      value = rest
  return value


def _backend_started() -> bool:
  if "jax" not in sys.modules:
    return False
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel

  return xla_bridge.backends_are_initialized()


def _default_backend() -> str:
  import jax  # pylint: disable=import-outside-toplevel

  return jax.default_backend()


def _jaxlib_version() -> str | None:
  try:
    return importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    return None


def configure(environ=None) -> str:
  """Appends ``FAST_CONV_FLAG`` to ``environ["XLA_FLAGS"]`` (default ``os.environ``) if it can
  take effect; returns what happened, also kept for ``fast_convolutions``:

  ``"applied"`` (appended now), ``"present"`` (``XLA_FLAGS`` already asks for it, e.g. from a
  parent process), ``"user"`` (``XLA_FLAGS`` sets the option to another value, which is kept),
  ``"late"`` (a JAX backend had already started; if it is the CPU, a warning says how to fix it),
  ``"unsupported"`` (a jaxlib this was not measured with).
  """
  global _status, _value
  environ = os.environ if environ is None else environ
  flags = environ.get("XLA_FLAGS", "")
  value = _value = _option_value(flags)
  if value == FAST_CONV_VALUE:
    _status = "present"
  elif value is not None:
    _status = "user"
  elif _jaxlib_version() not in MEASURED_JAXLIB:
    _status = "unsupported"
  elif _backend_started():
    _status = "late"
    if _default_backend() == "cpu":  # elsewhere only incidental CPU work is affected
      warnings.warn(
        "deinforeg_jax was imported after a JAX backend started, so XLA:CPU keeps its slower "
        "YNNPACK convolutions (config.model.conv_impl='auto' falls back to Winograd matmuls). "
        f"Import deinforeg_jax before running JAX computations, or start Python with "
        f"XLA_FLAGS={FAST_CONV_FLAG}.",
        stacklevel=3,
      )
  else:
    environ["XLA_FLAGS"] = f"{flags} {FAST_CONV_FLAG}".strip()
    _status, _value = "applied", FAST_CONV_VALUE
  return _status


def fast_convolutions() -> bool:
  """Whether XLA:CPU compiles convolutions with its own (fast) kernels in this process: the
  option's value is known (``configure`` set it, or found it) and leaves convolutions out of
  YNNPACK (a relative ``-individual_convolution``, or a list without ``individual_convolution``)."""
  if _status not in ("applied", "present", "user"):
    return False
  return "individual_convolution" not in _value.replace("-individual_convolution", "")


def init_options(platform: str) -> dict[str, object] | None:
  """``compiler_options`` for the program that creates the initial train state: LLVM level
  ``INIT_OPTIMIZATION_LEVEL`` on the CPU (level 0 when JAX compiles with most optimisations off,
  ``jax_disable_most_optimizations``, which asks for it); None elsewhere.  The options are passed
  either way, so a program built under quick compiles takes the same code path as a user's: such
  a jitted program must never be traced inside another transformation (``jax.eval_shape``,
  ``jax.jit``), which refuses ``compiler_options`` on a nested jit."""
  import jax  # pylint: disable=import-outside-toplevel

  if platform != "cpu":
    return None
  quick = jax.config.read("jax_disable_most_optimizations")
  return {"xla_backend_optimization_level": 0 if quick else INIT_OPTIMIZATION_LEVEL}


def train_step_options(platform: str) -> dict[str, object] | None:
  """``compiler_options`` for a train step that donates its state: region-analysis copy
  insertion on the CPU with a jaxlib it was measured with (an unknown option fails the
  compile); None otherwise."""
  if platform != "cpu" or _jaxlib_version() not in MEASURED_JAXLIB:
    return None
  return {REGION_ANALYSIS: True}
