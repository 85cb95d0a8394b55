"""A trained run as a serialized JAX function (``jax.export``) and its description.

``export(trained, out)`` writes ``out``: ``jax.export`` bytes of ``f(x) -> logits``, ``x`` the
preprocessed inputs ``[b, *input_shape]`` (float32 normalised images, or int32 token ids) with a
symbolic batch ``b``, ``logits`` float32 ``[K, b, C]`` (every exit, in ``results.json``'s order),
the parameters baked in; lowered for ``platforms``.  Beside it ``out`` with ``.json`` for its
extension (``description_path``): the input and output shapes, the preprocessing (mean/std or
the vocabulary), class names, exit blocks, the best exit and the run's adaptive-exit rule.
Serving needs only ``jax``: ``jax.export.deserialize(bytearray(open(OUT, "rb").read())).call(x)``
(docs/using_a_trained_model.md).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp

from deinforeg_jax import safe_files
from deinforeg_jax.user_errors import UserError

FORMAT = "deinforeg-jax export 1"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for


def description_path(out: str) -> str:
  """``model.jaxexport`` -> ``model.json`` (``OUT.json`` when ``OUT`` has no extension)."""
  root, ext = os.path.splitext(out)
  return (root if ext else out) + ".json"


def check_target(out: str, platforms) -> None:
  """Refuses an unknown platform, a folder or a ``.json`` file as ``out`` (before any work)."""
  unknown = sorted(set(platforms) - set(PLATFORMS))
  if unknown:
    raise UserError(f"--platforms: {unknown[0]!r} is none of {', '.join(PLATFORMS)}.")
  if os.path.isdir(out):
    raise UserError(
      f"--out={out} is a folder: give the file to write, e.g. "
      f"--out={os.path.join(out, 'model.jaxexport')}."
    )
  if out.endswith(".json"):
    raise UserError(
      f"--out={out}: the description is written as .json beside it; use another extension, "
      "e.g. model.jaxexport"
    )


def export(trained, out: str, platforms=("cpu", "cuda", "tpu")) -> tuple[str, str]:
  """Write ``trained``'s exit logits function to ``out`` and its description beside it;
  returns both paths."""
  check_target(out, platforms)
  model, variables, pre = trained.model, trained.variables, trained.preprocessing
  logits = jax.jit(lambda x: jnp.stack(model.apply(variables, x, train=False)["logits"]))
  (batch,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((batch, *pre.input_shape), pre.dtype)
  exported = jax.export.export(logits, platforms=tuple(platforms))(spec)
  try:
    data = exported.serialize()
  except ImportError as error:  # jax.export needs flatbuffers to serialize
    raise UserError(f"{error} (pip install flatbuffers)") from None
  cfg = trained.config.inference
  description = {
    "format": FORMAT,
    "workdir": trained.workdir,
    "step": trained.step,
    "rule": trained.config.rule,
    "arch": trained.config.model.arch,
    "dataset": trained.metadata["dataset"]["name"],
    "platforms": list(platforms),
    "jax_version": jax.__version__,
    "input": {"shape": ["b", *pre.input_shape], "dtype": str(pre.dtype)},
    "output": {
      "shape": [trained.num_exits, "b", trained.metadata["dataset"]["num_classes"]],
      "dtype": "float32",
      "meaning": "logits of every exit; softmax(logits[e]) are exit e's class probabilities",
    },
    "exit_blocks": trained.exit_blocks,
    "best_exit": trained.best_exit,
    "best_exit_source": trained.best_exit_source,
    "adaptive_exit": {
      "patience": int(cfg.patience),
      "cosine_threshold": float(cfg.cosine_threshold),
      "exit_mode": cfg.exit_mode,
      "patience_reset": bool(cfg.patience_reset),
      "rule": "exit e >= 1 agrees with e-1 when argmax equal and cosine(logits) > threshold; "
      "exit at the first e whose count of (consecutive, with reset) agreements reaches "
      "patience, else the last exit (deinforeg_jax/inference.py)",
    },
    "class_names": list(trained.class_names),
    "preprocessing": pre.to_json(),
  }
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  safe_files.write_atomic(out, data)
  path = description_path(out)
  safe_files.write_atomic(path, json.dumps(description, indent=1))
  return out, path
