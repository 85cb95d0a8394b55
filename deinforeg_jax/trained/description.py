"""Recording a run's dataset description in its checkpoints, for runs saved before 2026-12-06.

``load`` builds a model from its checkpoint alone: the input normalisation (``mean``, ``std``,
``pixel_max``) and the ``class_names`` come from the dataset description that
``checkpoint.make_metadata`` records.  Older checkpoints lack it; ``record(workdir)`` reads it
once from the run's own dataset (read as training reads it: a TFDS dataset's files are checked
first, ``tfds_source.check_feature_classes``) and writes it into each kept checkpoint's metadata
(``checkpoint.rewrite_metadata``: the arrays are not touched).
``python -m launch.evaluate --workdir=W --record_description`` runs it.
"""

from __future__ import annotations

import os
from typing import Any

from deinforeg_jax import checkpoint
from deinforeg_jax.data import registry, tfds_source
from deinforeg_jax.trained.loading import DESCRIPTION_FIELDS, WorkdirError, saved_config


def _read(config) -> dict[str, Any]:
  """``DESCRIPTION_FIELDS`` (and ``kind``, ``num_classes``) of ``config.data``'s dataset."""
  data = config.data
  if data.kind == "text":
    data_dir = os.path.expanduser(data.data_dir) or tfds_source.default_data_dir()
    names = tuple(tfds_source.open_builder(data.name, data_dir).info.features["label"].names)
    return {"kind": "text", "class_names": list(names), "num_classes": len(names)}
  if data.name in registry.EMBEDDED:
    info = registry.EMBEDDED[data.name](seed=data.split_seed)[2]
  else:
    info = tfds_source.load_tfds(data.name, data.data_dir)[2]
  return {
    "kind": "image",
    "mean": [float(m) for m in info.mean],
    "std": [float(s) for s in info.std],
    "pixel_max": float(info.pixel_max),
    "class_names": [str(n) for n in info.class_names],
    "num_classes": info.num_classes,
    "input_shape": list(info.input_shape),
  }


def record(workdir: str, data_dir: str | None = None) -> list[str]:
  """Records the dataset description of the run in ``workdir`` in its kept checkpoints.

  ``data_dir``: where the run's dataset is prepared (default: the run's
  ``config.data.data_dir``).  Returns the step folders rewritten.

  Raises:
    WorkdirError: no checkpoint, or the dataset found is not the one the run was trained
      on (its class count or input shape differs).
    DatasetNotPreparedError / ValueError: the dataset cannot be read (its own message).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    metadata = checkpoint.read_metadata(workdir)
  except (FileNotFoundError, checkpoint.CorruptCheckpointError) as error:
    raise WorkdirError(f"cannot record the dataset description of {workdir}: {error}") from None
  config = saved_config(metadata)
  if data_dir is not None:
    config.data.data_dir = data_dir
  found = _read(config)
  saved = metadata["dataset"]
  for field in ("num_classes", "input_shape"):
    if field in found and found[field] != saved[field]:
      raise WorkdirError(
        f"cannot record the dataset description of {workdir}: {config.data.name!r} in "
        f"{config.data.data_dir!r} has {field} {found[field]}, the run {saved[field]}; it is "
        "not the dataset the run was trained on."
      )
  fields = ("kind", *DESCRIPTION_FIELDS[found["kind"]])
  description = {f: found[f] for f in fields}
  return checkpoint.rewrite_metadata(
    workdir, lambda m: {**m, "dataset": {**m["dataset"], **description}}
  )
