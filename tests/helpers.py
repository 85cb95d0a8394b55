"""The tests' one set of helpers: tiny configs, batches and datasets, tree asserts, checkpoint
readers and launcher runners (test modules import only this, ``conftest`` and
``reference_losses``).

Widths are tiny (``model.width=0.125``, projector ``"32-32"``) so every model
compiles in seconds and runs in milliseconds on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import io
import json
import os
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from launch.configs import default
from launch.configs.spec_text import spec_text_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10
DIGITS_SHAPE = (8, 8, 1)
RGB_SHAPE = (16, 16, 3)
# Tiny text stacks (``tiny_text_config``, ``token_batch``): vocabulary, tokens per text, classes.
TEXT_VOCAB, TEXT_MAX_LEN, TEXT_CLASSES = 40, 12, 3
# The classes of the tiny image datasets that ``write_npz`` and ``write_folder`` write.
CLASS_NAMES = ["ant", "bee", "cat", "dog"]
# The words of ``toy_records``' texts: class c's texts mention ``TOY_WORDS[c]`` often.
TOY_WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa"]
# The tests that train runs of ``tiny_config(num_epochs=...)`` with loop settings changed
# (``config_fields.program_free_fields``): under xdist one worker runs them all and builds their
# programs once.
TINY_RUNS = pytest.mark.xdist_group("tiny_config runs")


@contextlib.contextmanager
def _compile_setting(disable_most_optimizations: bool):
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", disable_most_optimizations)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


@contextlib.contextmanager
def optimized_compiles():
  """Compile with every XLA optimisation inside the block, except the initial state.

  ``conftest`` turns most XLA optimisations off for the session (quick compiles,
  slower programs), the right trade for short runs; a run of hundreds of steps that
  must reach an accuracy runs faster optimised.  The engines' ``init`` (the program
  that draws the initial parameters, run once) stays unoptimised: optimised, its
  random initialisers take ~0.5 s each to compile.  Programs already compiled
  (jitted functions cached in memory) are not recompiled.
  """
  from deinforeg_jax import data_parallel, pipeline  # pylint: disable=import-outside-toplevel

  engines = (data_parallel.DataParallelEngine, pipeline.PipelineEngine)
  originals = [engine.init for engine in engines]

  def quick(init):
    def quick_init(self, rng):
      with _compile_setting(True):
        return init(self, rng)

    return quick_init

  with _compile_setting(False):
    for engine, init in zip(engines, originals):
      engine.init = quick(init)
    try:
      yield
    finally:
      for engine, init in zip(engines, originals):
        engine.init = init


# What ``conftest`` sets for quick compiles in this process only: a process a test launches runs
# as a user's does (``JAX_DISABLE_MOST_OPTIMIZATIONS`` changes which library code runs, e.g.
# ``xla_cpu.init_options``, and once hid a resume crash of every user's run).
TEST_ONLY_VARIABLES = ("JAX_DISABLE_MOST_OPTIMIZATIONS",)


def launch_env(num_devices: int = 1) -> dict[str, str]:
  """The environment for a process a test launches: a user's (without ``TEST_ONLY_VARIABLES``
  and ``conftest``'s quick-compile XLA flags) on the CPU, with this session's compilation cache
  and ``num_devices`` fake CPU devices."""
  from conftest import QUICK_COMPILE_FLAGS  # pylint: disable=import-outside-toplevel

  env = {k: v for k, v in os.environ.items() if k not in TEST_ONLY_VARIABLES}
  device_flag = "--xla_force_host_platform_device_count"
  dropped = (device_flag, *(f.split("=")[0] for f in QUICK_COMPILE_FLAGS))
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(dropped)]
  env["XLA_FLAGS"] = " ".join([*flags, f"{device_flag}={num_devices}"])
  # The CPU, which JAX picks here anyway, named so that libtpu (installed by the test command on
  # Linux x86_64) does not probe for a TPU and print its warnings into the launched command's
  # stderr, which tests read line by line.
  env["JAX_PLATFORMS"] = "cpu"
  return env


def tiny_config(
  arch: str = "vgg", rule: str = "deinforeg", *, num_epochs: int | None = None, **model_overrides
):
  """The default config shrunk to a few thousand parameters; with ``num_epochs``, a run of that
  many epochs on one device (``parallel.num_devices=1``), as the checkpoint tests train."""
  config = default.get_config()
  config.rule = rule
  config.model.arch = arch
  config.model.width = 0.125
  config.model.projector = "32-32"
  config.model.bp_head_hidden = 64
  for name, value in model_overrides.items():
    config.model[name] = value
  if num_epochs is not None:
    config.train.num_epochs = num_epochs
    config.parallel.num_devices = 1
  return config


def short_config(max_steps: int, every_steps: int = 0, **changes):
  """``tiny_config(num_epochs=1)`` that stops after ``max_steps`` steps, saving synchronously
  every ``every_steps``; ``changes`` as ``section__field=value``."""
  config = tiny_config(num_epochs=1)
  config.train.max_steps = max_steps
  config.checkpoint.every_steps = every_steps
  config.checkpoint.use_async = False
  for path, value in changes.items():
    section, name = path.split("__")
    config[section][name] = value
  return config


def tiny_text_config(arch: str = "lstm", rule: str = "deinforeg", **model_overrides):
  """A text stack of ``TEXT_VOCAB`` words and ``TEXT_MAX_LEN`` tokens, two tiny blocks."""
  config = spec_text_config("tiny_text", arch)
  config.rule = rule
  config.data.vocab_size = TEXT_VOCAB
  config.data.max_len = TEXT_MAX_LEN
  defaults = {"num_blocks": 2, "emb_dim": 8, "hidden": 6, "heads": 2, "ff_dim": 8, "dropout": 0.0}
  config.model.update({**defaults, **model_overrides})
  return config


def text_data_config(data_dir, name: str = "toy_text", **data):
  """A one-epoch, one-block LSTM run on the prepared text dataset ``name`` in ``data_dir``."""
  config = spec_text_config(name, "lstm")
  config.data.data_dir = str(data_dir)
  config.data.update(
    {"max_len": 6, "vocab_size": 12, "batch_size": 8, "eval_batch_size": 16, **data}
  )
  config.model.update({"num_blocks": 1, "emb_dim": 4, "hidden": 4})
  config.train.num_epochs = 1
  return config


def data_config(name: str | None = None, data_dir=None, **overrides: Any):
  """The default ``config.data`` with ``overrides`` (a dict value updates a sub-config); with
  ``name`` and ``data_dir``, the dataset prepared there (``download=False``)."""
  data = default.get_config().data
  if name is not None:
    data.update({"name": name, "data_dir": str(data_dir), "download": False})
  for field, value in overrides.items():
    if isinstance(value, dict):
      data[field].update(value)
    else:
      data[field] = value
  return data


def random_batch(
  batch_size: int, input_shape=DIGITS_SHAPE, seed: int = 0, num_classes: int = NUM_CLASSES
) -> dict[str, np.ndarray]:
  """``{"image": float32 [B, *input_shape], "label": int32 [B]}``; every class appears."""
  rng = np.random.default_rng(seed)
  image = rng.normal(size=(batch_size, *input_shape)).astype(np.float32)
  label = (np.arange(batch_size) % num_classes).astype(np.int32)
  rng.shuffle(label)
  return {"image": image, "label": label}


def token_batch(batch_size: int = 12, seed: int = 0, min_len: int = 1) -> dict[str, np.ndarray]:
  """``{"tokens": int32 [B, TEXT_MAX_LEN] right-padded, "label": int32 [B]}``, every class
  present."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(min_len, TEXT_MAX_LEN + 1, batch_size)
  tokens = rng.integers(2, TEXT_VOCAB, (batch_size, TEXT_MAX_LEN)).astype(np.int32)
  tokens[np.arange(TEXT_MAX_LEN)[None, :] >= lengths[:, None]] = 0
  label = (np.arange(batch_size) % TEXT_CLASSES).astype(np.int32)
  return {"tokens": tokens, "label": label}


# ------------------------------------------------------------------ tiny datasets on disk


def tiny_arrays(channels: int | None = 3, seed: int = 0) -> dict[str, np.ndarray]:
  """40 train / 20 test 8x8 uint8 images (``channels=None``: [N, 8, 8]) and labels 0..3."""
  rng = np.random.default_rng(seed)
  shape = (8, 8) if channels is None else (8, 8, channels)
  return {
    "x_train": rng.integers(0, 256, (40, *shape), dtype=np.uint8),
    "y_train": np.arange(40) % 4,
    "x_test": rng.integers(0, 256, (20, *shape), dtype=np.uint8),
    "y_test": (np.arange(20) * 3) % 4,
  }


def png_bytes(image: np.ndarray, **save_options) -> bytes:
  """uint8 ``[H, W]`` or ``[H, W, C]`` (C in 1..4) encoded as PNG by Pillow."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG", **save_options)
  return buffer.getvalue()


def write_npz(path, arrays, class_names=CLASS_NAMES) -> str:
  """``arrays`` (and ``class_names`` unless None) saved as the .npz ``path``."""
  extra = {} if class_names is None else {"class_names": np.asarray(class_names)}
  np.savez(path, **arrays, **extra)
  return str(path)


def write_folder(root, arrays, class_names=CLASS_NAMES) -> str:
  """``root/{train,test}/<class>/<i>.png``, written by Pillow."""
  for split in ("train", "test"):
    for i, (image, label) in enumerate(zip(arrays[f"x_{split}"], arrays[f"y_{split}"])):
      folder = root / split / class_names[label]
      folder.mkdir(parents=True, exist_ok=True)
      (folder / f"{i:03d}.png").write_bytes(png_bytes(image))
  return str(root)


def all_records(source) -> tuple[np.ndarray, np.ndarray]:
  """A data source's images ``[N, ...]`` and labels ``[N]``, in its order."""
  records = [source[i] for i in range(len(source))]
  return np.stack([r["image"] for r in records]), np.asarray([r["label"] for r in records])


def toy_records(n: int, seed: int, extra_word: str | None = None) -> list[dict[str, Any]]:
  """``n`` texts of classes 0..2; class c's mention ``TOY_WORDS[c]`` often, ``extra_word``
  appears in every text."""
  rng = np.random.default_rng(seed)
  records = []
  for i in range(n):
    label = i % 3
    words = (
      [TOY_WORDS[label]] * 3
      + list(rng.choice(TOY_WORDS[3:], 4))
      + ([extra_word] if extra_word else [])
    )
    records.append({"text": "<p>" + " ".join(words).title() + "!</p>", "label": label})
  return records


def write_jsonl(path, records) -> None:
  """``records`` as gzipped JSON lines."""
  with gzip.open(path, "wt", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")


def init_variables(model, input_shape, seed: int = 0) -> dict[str, Any]:
  """Host (numpy) variables with ``model.init``'s structure, filled by NumPy.

  XLA:CPU takes ~0.5 s to compile each random initializer (15-20 s for a tiny
  4-block stack), so tests take only the *shapes* from ``jax.eval_shape`` and
  draw the values here: kernels ``N(0, 1/fan_in)``, biases and BatchNorm
  offsets ``0.1·N(0, 1)``, BatchNorm scales ``1 + 0.1·N(0, 1)``, running means
  ``0.1·N(0, 1)`` and running variances ``1 + 0.1·|N(0, 1)|``.  Nonzero biases
  and offsets keep every parameter's gradient generically nonzero.
  """
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((2, *input_shape), jnp.float32), train=False)
  )
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    noise = rng.normal(size=leaf.shape)
    if "kernel" in name:
      value = noise / np.sqrt(np.prod(leaf.shape[:-1]))
    elif "scale" in name:
      value = 1.0 + 0.1 * noise
    elif "var" in name:
      value = 1.0 + 0.1 * np.abs(noise)
    else:  # bias, mean
      value = 0.1 * noise
    return value.astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def block_names(params) -> list[str]:
  return sorted(k for k in params if k.startswith("block_"))


def global_norm(tree) -> float:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return 0.0
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in leaves)))


def to_host(tree):
  """A host (numpy) copy, safe to reuse after the device copy is donated."""
  return jax.tree.map(lambda x: np.array(x), jax.device_get(tree))


def assert_trees_equal(actual, expected, rtol: float = 0.0, atol: float = 0.0) -> None:
  """``actual`` and ``expected`` have the same structure and each leaf equals the other's, bit
  for bit, or within ``rtol``/``atol`` when given; a failure names the leaf's path."""
  flat_actual, flat_expected = (
    {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(t)}
    for t in (actual, expected)
  )
  assert flat_actual.keys() == flat_expected.keys()
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for path, leaf in flat_actual.items():
    a, b = np.asarray(leaf), np.asarray(flat_expected[path])
    if rtol or atol:
      np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=path)
    else:
      np.testing.assert_array_equal(a, b, err_msg=path)


# ------------------------------------------------------------------ checkpoints of a run


def saved_state(workdir: str, step: int | None = None) -> tuple[Any, int]:
  """The raw state tree (numpy arrays) of the run's checkpoint at ``step`` (default: the
  newest), and that step."""
  with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
    step = manager.latest_step() if step is None else step
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore()))
  return restored["state"], step


def saved_steps(workdir) -> list[int]:
  """The steps of the run's checkpoint folders, ascending."""
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def run_prepare_data_cases(cases: dict[str, list[str]], data_dir) -> dict[str, list[Any]]:
  """Run ``launch.prepare_data`` once per case (its flags besides ``--name``/``--data_dir``)
  in one fresh interpreter, which re-parses the absl flags per case to pay the imports once;
  its ``main`` behind the launchers' error boundary (``launch.cli.guarded``).

  Returns ``{case: [exit code, stderr, stdout]}``; the code is ``"usage"`` for an
  ``app.UsageError`` (stderr then holds its message) and ``"traceback"`` for any other
  exception.
  """
  code = f"""
import contextlib, io, json
from absl import app, flags
from launch import cli, prepare_data
main = cli.guarded(prepare_data.main)
out = {{}}
for case, args in {cases!r}.items():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["prepare_data", "--name=cli_" + case, "--data_dir={data_dir}", *args])
    err, std = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        try:
            main(["prepare_data"])
        except SystemExit as e:
            code = e.code
        except app.UsageError as e:
            code, err = "usage", io.StringIO(str(e))
        except Exception as e:
            code, err = "traceback", io.StringIO(repr(e))
    out[case] = [code, err.getvalue(), std.getvalue()]
print(json.dumps(out))
"""
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ launchers as a user runs them


def _launcher_kwargs(module: str, flags, num_devices: int, cwd: str, stderr) -> dict[str, Any]:
  env = launch_env(num_devices)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
  return dict(
    args=[sys.executable, "-m", module, *flags], cwd=cwd, env=env, stdout=subprocess.PIPE,
    stderr=stderr, text=True,
  )


def start_launcher(
  module: str, *flags: str, num_devices: int = 1, cwd: str = REPO, stderr=subprocess.PIPE,
  **popen_kwargs,
) -> subprocess.Popen:
  """``python -m <module> <flags>`` started as a user runs it: in ``launch_env(num_devices)``,
  with the repository on ``PYTHONPATH`` whatever ``cwd`` is, its text output piped
  (``stderr=subprocess.STDOUT``: the errors in ``stdout`` too)."""
  return subprocess.Popen(
    **_launcher_kwargs(module, flags, num_devices, cwd, stderr), **popen_kwargs
  )


def run_launcher(
  module: str, *flags: str, num_devices: int = 1, cwd: str = REPO, stderr=subprocess.PIPE,
  timeout: float = 300, **run_kwargs,
) -> subprocess.CompletedProcess:
  """``start_launcher``'s command run to its end (at most ``timeout`` seconds)."""
  return subprocess.run(
    **_launcher_kwargs(module, flags, num_devices, cwd, stderr), timeout=timeout, check=False,
    **run_kwargs,
  )


# ``launch.train`` flags of the one tiny launched run: two epochs of 22 steps of a tiny stack on one
# device.  Launched runs take these and add only fields that change no compiled program
# (``config_fields``: ``compiled=False``, e.g. ``train.max_steps``, ``checkpoint.every_steps``),
# so that their programs, compiled with every optimisation, are compiled once per session and
# read from its compilation cache by every later launch (each miss costs a launch ~10 CPU-s).
TINY_TRAIN_FLAGS = (
  "--config.model.width=0.25",
  "--config.model.projector=32-32",
  "--config.parallel.num_devices=1",
  "--config.train.num_epochs=2",
)


def train_command(workdir, *flags: str) -> list[str]:
  """``[module, *flags]`` of ``launch.train`` of the tiny launched run (``TINY_TRAIN_FLAGS``) into
  ``workdir`` with ``flags`` added, for ``run_launcher``, ``start_launcher`` and
  ``run_launchers``."""
  return ["launch.train", f"--workdir={workdir}", *TINY_TRAIN_FLAGS, *flags]


def start_train(workdir, *flags: str) -> subprocess.Popen:
  """``train_command(workdir, *flags)`` started, its errors in ``stdout``."""
  return start_launcher(*train_command(workdir, *flags), stderr=subprocess.STDOUT)


@dataclasses.dataclass(frozen=True)
class Launched:
  """What one ``python -m <launcher> ...`` gave: exit code, output, and what SIGTERM would do
  at the end (``signal.getsignal``: "ignored", "default" or "a Python handler")."""

  code: int
  stdout: str
  stderr: str
  sigterm_at_exit: str


# Imported once by ``run_launchers``' driver before it forks; not the launchers that define flags
# at import (train, experiments, prepare_data, aot): each child runs its launcher as ``__main__``.
DRIVER_PRELOAD = (
  "jax", "scipy.stats", "tensorflow_datasets", "orbax.checkpoint", "matplotlib.pyplot",
  "deinforeg_jax.train", "deinforeg_jax.trained", "deinforeg_jax.data.prepare", "launch.cli",
)


def run_launchers(
  commands: dict[str, list[str]], out_dir, parallel: int = 2, unset: tuple[str, ...] = ()
) -> dict:
  """``{name: Launched}`` of each command ``[module, *flags]`` run as ``python -m module
  flags`` (``runpy`` as ``__main__``, in ``launch_env`` less the variables ``unset``) by one
  driver process, which imports ``DRIVER_PRELOAD`` once and forks a child per command,
  ``parallel`` at a time: 20 launches cost one set of imports (~5 s) instead of 20."""
  spec = os.path.join(out_dir, "commands.json")
  with open(spec, "w") as f:
    json.dump(commands, f)
  env = {k: v for k, v in launch_env(num_devices=1).items() if k not in unset}
  env["PYTHONPATH"] = os.pathsep.join([REPO, os.path.join(REPO, "tests")])
  code = f"import helpers; helpers._drive({spec!r}, {parallel})"
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with open(spec + ".codes") as f:
    codes = json.load(f)
  launched = {}
  for name, (exit_code, sigterm) in codes.items():
    prefix = os.path.join(out_dir, name)
    with open(f"{prefix}.out") as out, open(f"{prefix}.err") as err:
      launched[name] = Launched(exit_code, out.read(), err.read(), sigterm)
  return launched


def _drive(spec: str, parallel: int) -> None:
  """``run_launchers``' driver (runs in its own process)."""
  import importlib  # pylint: disable=import-outside-toplevel

  for module in DRIVER_PRELOAD:
    importlib.import_module(module)
  with open(spec) as f:
    commands = json.load(f)
  out_dir, pending, running, codes = os.path.dirname(spec), list(commands), {}, {}
  while pending or running:
    while pending and len(running) < parallel:
      name = pending.pop(0)
      running[_fork_launcher(commands[name], os.path.join(out_dir, name))] = name
    pid, status = os.wait()
    name = running.pop(pid)
    with open(os.path.join(out_dir, f"{name}.sigterm")) as f:
      codes[name] = (os.waitstatus_to_exitcode(status), f.read())
  with open(spec + ".codes", "w") as f:
    json.dump(codes, f)


def _fork_launcher(command: list[str], prefix: str) -> int:
  """Fork a child that runs ``python -m command[0] command[1:]`` and exits with its code."""
  import runpy  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  import traceback  # pylint: disable=import-outside-toplevel

  pid = os.fork()
  if pid:
    return pid
  for fd, suffix in ((1, ".out"), (2, ".err")):
    os.dup2(os.open(prefix + suffix, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
  sys.argv = list(command)
  code = 0
  try:
    runpy.run_module(command[0], run_name="__main__", alter_sys=True)
  except SystemExit as stop:  # as the interpreter ends on it
    if isinstance(stop.code, str):
      print(stop.code, file=sys.stderr)
    code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
  except BaseException:  # pylint: disable=broad-except  # as the interpreter reports it
    traceback.print_exc()
    code = 1
  handler = signal.getsignal(signal.SIGTERM)
  names = {signal.SIG_IGN: "ignored", signal.SIG_DFL: "default"}
  with open(prefix + ".sigterm", "w") as f:
    f.write(names.get(handler, "a Python handler"))
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)
