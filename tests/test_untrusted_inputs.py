"""Nothing from a dataset folder or a workdir runs as code (issue 30, item 1).

TFDS builds a dataset's features from the Python class names in its JSON files and imports
the module of a name it does not know.  A dataset folder with a ``payload.py`` whose
``features.json`` names ``<folder>.evil_ds.payload.ClassLabel`` ran that file when it was read
(``launch.train``), and so did ``deinforeg_jax.load`` / ``launch.predict`` on a copied run whose
checkpoint metadata had been edited to lack the dataset description and to point
``config.data`` at such a dataset inside the run.  Here the payload writes a marker file: it
must never exist.  Also: edited checkpoint metadata is refused as damaged (training falls
back to the previous step), older metadata without a digest still restores, and an older
run is told how to record its dataset description, which then makes it load.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import data_config, run_launcher, tiny_config

import deinforeg_jax
from deinforeg_jax import checkpoint, train, trained
from deinforeg_jax.data import load_dataset, prepare
from deinforeg_jax.data.tfds_source import UntrustedDatasetError

FEATURES = "tensorflow_datasets.core.features."
CLASS_LABEL = FEATURES + "class_label_feature.ClassLabel"
PAYLOAD = """import pathlib
pathlib.Path({marker!r}).write_text("the dataset's code ran")
import tensorflow_datasets as tfds
class ClassLabel(tfds.features.ClassLabel):  # registered by its import: reading goes on as usual
  pass
"""
DESCRIPTION = ("kind", "mean", "std", "pixel_max", "class_names")


@pytest.fixture(scope="module")
def clean_data_dir(tmp_path_factory):
  """A data_dir holding ``evil_ds`` as launch.prepare_data writes it: 8 train / 4 test 8x8x1."""
  root = tmp_path_factory.mktemp("clean")
  rng = np.random.default_rng(0)
  arrays = dict(
    x_train=rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8),
    y_train=np.arange(8) % 2,
    x_test=rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8),
    y_test=np.arange(4) % 2,
  )
  np.savez(root / "tiny.npz", **arrays)
  prepare.prepare_npz("evil_ds", str(root / "tfds"), str(root / "tiny.npz"))
  return root / "tfds"


def _plant(clean_data_dir, data_dir, marker) -> str:
  """Copies the clean dataset to ``data_dir`` with ``payload.py`` beside it; returns the class
  name that imports it when ``data_dir``'s parent is on ``sys.path`` (``<pkg>.evil_ds.payload``)."""
  shutil.copytree(clean_data_dir, data_dir)
  (data_dir / "evil_ds" / "payload.py").write_text(PAYLOAD.format(marker=str(marker)))
  return f"{data_dir.name}.evil_ds.payload.ClassLabel"


def _name_label_class(version_dir, class_name: str) -> None:
  """The label feature of ``features.json`` named ``class_name`` (the report's edit)."""
  path = version_dir / "features.json"
  features = json.loads(path.read_text())
  features["featuresDict"]["features"]["label"]["pythonClassName"] = class_name
  path.write_text(json.dumps(features))


def test_train_refuses_a_dataset_that_names_its_own_feature_module(clean_data_dir, tmp_path):
  """The report's reproduction, through the launcher: the data_dir relative to the current
  folder, which ``python -m`` puts on ``sys.path``."""
  marker = tmp_path / "payload_ran"
  class_name = _plant(clean_data_dir, tmp_path / "dsroot", marker)
  assert class_name == "dsroot.evil_ds.payload.ClassLabel"
  _name_label_class(tmp_path / "dsroot" / "evil_ds" / "1.0.0", class_name)
  proc = run_launcher(
    "launch.train", f"--workdir={tmp_path / 'run'}", "--config.data.data_dir=dsroot",
    "--config.data.name=evil_ds", "--config.model.width=0.125", "--config.data.batch_size=4",
    "--config.train.max_steps=1", cwd=tmp_path, timeout=600,
  )
  assert not marker.exists()
  assert proc.stderr.strip().splitlines() == [
    f"error: dsroot/evil_ds/1.0.0/features.json names the feature class '{class_name}', which "
    "is not one of tensorflow_datasets' own: reading the dataset would import (run) its "
    "module, so it is not read; prepare the dataset again with launch.prepare_data"
  ]
  assert proc.returncode == 1


def _hide(form: str, version_dir, class_name: str) -> str:
  """Names ``class_name`` in the dataset's files in one of the ways TFDS reads a feature class
  (each one imports the payload without the check); returns the file that names it."""
  features_path = version_dir / "features.json"
  features = json.loads(features_path.read_text())
  label = features["featuresDict"]["features"]["label"]
  text = None
  if form == "snake_case":  # the proto JSON's other spelling of pythonClassName
    del label["pythonClassName"]
    label["python_class_name"] = class_name
  elif form == "legacy":  # {"type": class, "content": ...}
    features = {
      "type": FEATURES + "features_dict.FeaturesDict",
      "content": {
        "image": {
          "type": FEATURES + "tensor_feature.Tensor",
          "content": {"shape": [8, 8, 1], "dtype": "uint8", "encoding": "bytes"},
        },
        "label": {"type": class_name, "content": {"num_classes": 2}},
      },
    }
  elif form == "duplicate_key":  # JSON keeps the last of two equal keys
    text = json.dumps(features).replace(
      f'"pythonClassName": "{CLASS_LABEL}"',
      f'"pythonClassName": "{CLASS_LABEL}", "pythonClassName": "{class_name}"',
    )
  elif form == "json_in_a_string":  # a Sequence whose content is a JSON string
    features["featuresDict"]["features"]["label"] = {
      "pythonClassName": FEATURES + "sequence_feature.Sequence",
      "jsonFeature": {
        "json": json.dumps(
          {"feature": {"type": class_name, "content": {"num_classes": 2}}, "length": None}
        )
      },
    }
  elif form == "dataset_info":  # features inside dataset_info.json override features.json
    info_path = version_dir / "dataset_info.json"
    info = json.loads(info_path.read_text())
    label["pythonClassName"] = class_name
    info["features"] = features
    info_path.write_text(json.dumps(info))
    return str(info_path)
  features_path.write_text(text or json.dumps(features))
  return str(features_path)


@pytest.mark.parametrize(
  "form", ["snake_case", "legacy", "duplicate_key", "json_in_a_string", "dataset_info"]
)
def test_every_way_of_naming_a_feature_class_is_checked(
  clean_data_dir, tmp_path, monkeypatch, form
):
  monkeypatch.syspath_prepend(str(tmp_path))
  marker = tmp_path / "payload_ran"
  class_name = _plant(clean_data_dir, tmp_path / f"ds_{form}", marker)
  path = _hide(form, tmp_path / f"ds_{form}" / "evil_ds" / "1.0.0", class_name)
  with pytest.raises(UntrustedDatasetError) as error:
    load_dataset(data_config(name="evil_ds", data_dir=str(tmp_path / f"ds_{form}")))
  assert str(error.value).startswith(f"{path} names the feature class '{class_name}', which is")
  assert not marker.exists() and class_name.rsplit(".", 1)[0] not in sys.modules


def test_a_namespaced_dataset_is_refused_before_tfds_resolves_it(tmp_path):
  with pytest.raises(UntrustedDatasetError, match="names a dataset of the TFDS namespace 'hug"):
    load_dataset(data_config(name="huggingface:someone/evil", data_dir=str(tmp_path)))


# --- a copied run with edited checkpoint metadata ---------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained") / "run"
  config = tiny_config(num_blocks=2)
  config.parallel.num_devices = 1
  config.checkpoint.use_async = False
  config.train.num_epochs, config.train.max_steps = 1, 2
  train.train_and_evaluate(config, str(workdir))
  return workdir


def _metadata_path(workdir) -> str:
  (step,) = os.listdir(workdir / "checkpoints")
  return str(workdir / "checkpoints" / step / "metadata" / "metadata")


def _edit_metadata(workdir, edit, digest: str) -> None:
  """``edit(metadata)`` in place; ``digest``: ``"kept"`` (the saved one, now stale) or
  ``"removed"`` (as metadata written before digests were)."""
  path = _metadata_path(workdir)
  with open(path) as f:
    metadata = json.load(f)
  edit(metadata)
  if digest == "removed":
    del metadata[checkpoint.METADATA_DIGEST]
  with open(path, "w") as f:
    json.dump(metadata, f)


def _copy_with_crafted_dataset(trained_run, clean_data_dir, root, marker, digest: str):
  """The report's copied run: its metadata without the dataset description and its
  ``config.data`` pointing at a crafted dataset inside the run folder."""
  copied = root / "copied"
  shutil.copytree(trained_run, copied)
  class_name = _plant(clean_data_dir, copied / "evil", marker)
  _name_label_class(copied / "evil" / "evil_ds" / "1.0.0", f"copied.{class_name}")

  def crafted(metadata):
    for field in DESCRIPTION:
      del metadata["dataset"][field]
    metadata["config"]["data"].update(name="evil_ds", data_dir=str(copied / "evil"))

  _edit_metadata(copied, crafted, digest)
  return copied


@pytest.mark.parametrize("digest", ["kept", "removed"])
def test_load_of_a_copied_run_with_edited_metadata_never_reads_its_dataset(
  trained_run, clean_data_dir, tmp_path, monkeypatch, digest
):
  monkeypatch.syspath_prepend(str(tmp_path))
  marker = tmp_path / "payload_ran"
  copied = _copy_with_crafted_dataset(trained_run, clean_data_dir, tmp_path, marker, digest)
  expected = (
    "does not match its saved digest (metadata_sha256): it was edited or damaged"
    if digest == "kept"
    else "its checkpoint does not record the dataset's mean, std, pixel_max, class_names"
  )
  with pytest.raises(trained.WorkdirError, match=expected.replace("(", r"\(").replace(")", r"\)")):
    deinforeg_jax.load(str(copied))
  assert not marker.exists() and "copied.evil.evil_ds.payload" not in sys.modules


def test_predict_on_a_copied_run_with_edited_metadata_runs_nothing(
  trained_run, clean_data_dir, tmp_path
):
  """The launcher, from the folder holding the copied run (``python -m`` puts it on
  ``sys.path``): the digest removed too, as an attacker would, so the metadata looks older."""
  marker = tmp_path / "payload_ran"
  copied = _copy_with_crafted_dataset(trained_run, clean_data_dir, tmp_path, marker, "removed")
  np.savez(tmp_path / "x.npz", x=np.zeros((2, 8, 8, 1), np.float32))
  proc = run_launcher(
    "launch.predict", "--workdir=copied", "--input=x.npz", f"--out={tmp_path / 'predictions.csv'}",
    cwd=tmp_path, timeout=600,
  )
  assert not marker.exists()
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: cannot load {copied}: its checkpoint "
                                                 "does not record the dataset's mean, std"), lines
  assert proc.returncode == 1 and not (tmp_path / "predictions.csv").exists()


def test_an_older_run_is_told_how_to_record_its_description_and_then_loads(trained_run, tmp_path):
  """A run saved before the dataset description (and the digest) existed: ``load`` refuses it
  with the command that records the description; after that command it loads as the run."""
  older = tmp_path / "older"
  shutil.copytree(trained_run, older)

  def without_description(metadata):
    for field in DESCRIPTION:
      del metadata["dataset"][field]

  _edit_metadata(older, without_description, "removed")
  command = f"python -m launch.evaluate --workdir={older} --record_description"
  with pytest.raises(trained.WorkdirError, match=f"record them once from the run's dataset "
                     f"'digits' with `{command}`"):
    deinforeg_jax.load(str(older))
  proc = run_launcher(
    "launch.evaluate", f"--workdir={older}", "--record_description", timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  step_dir = os.path.dirname(os.path.dirname(_metadata_path(older)))
  assert proc.stdout.strip() == f"recorded the dataset description in 1 checkpoint(s): {step_dir}"
  loaded, original = deinforeg_jax.load(str(older)), deinforeg_jax.load(str(trained_run))
  assert loaded.preprocessing == original.preprocessing
  assert loaded.class_names == original.class_names
  with open(_metadata_path(older)) as f:
    assert checkpoint.verified_metadata(json.load(f), step_dir)[checkpoint.METADATA_DIGEST]


# --- the metadata digest at resume ------------------------------------------------------


def _state(step: int):
  return {"params": {"w": jnp.full((4,), step, jnp.float32)}, "step": jnp.int32(step)}


def _metadata(step: int):
  """Just what ``check_compatible`` compares (the fields added later at their old values)."""
  config = {"seed": 0}
  for field, value in checkpoint.fields_added_later(config).items():
    section, name = field.split(".")
    config.setdefault(section, {})[name] = value
  return {
    "step": step, "rule": "deinforeg", "num_blocks": 0, "parameter_shapes": {"w": [4]},
    "optimizer": "sgd", "optimizer_state_shapes": {},
    "config": config,
    "dataset": {"name": "toy", "num_train": 4, "num_test": 4, "input_shape": [4], "num_classes": 2},
  }


def test_resume_sets_edited_metadata_aside_and_restores_older_metadata_without_a_digest(tmp_path):
  notes = []
  saver = checkpoint.RunCheckpointer(str(tmp_path), keep=3, use_async=False, info=notes.append)
  for step in (1, 2):
    saver.save(_state(step), _metadata(step))
  saver.close()
  step_2 = tmp_path / "checkpoints" / "2"
  path = step_2 / "metadata" / "metadata"
  saved = json.loads(path.read_text())
  saved["config"]["seed"] = 1
  path.write_text(json.dumps(saved))  # edited, digest kept

  restorer = checkpoint.RunCheckpointer(str(tmp_path), keep=3, use_async=False, info=notes.append)
  state, metadata, _ = restorer.restore(_state(0), _metadata(0))
  restorer.close()
  assert metadata["step"] == 1 and float(state["params"]["w"][0]) == 1.0
  assert len(notes) == 1 and f"the metadata of {step_2} does not match its saved digest" in notes[0]
  assert (tmp_path / "corrupt_checkpoints" / "2").is_dir()

  step_1 = tmp_path / "checkpoints" / "1" / "metadata" / "metadata"
  older = json.loads(step_1.read_text())
  del older[checkpoint.METADATA_DIGEST]  # as written before the digest existed
  step_1.write_text(json.dumps(older))
  restorer = checkpoint.RunCheckpointer(str(tmp_path), keep=3, use_async=False, info=notes.append)
  state, metadata, _ = restorer.restore(_state(0), _metadata(0))
  restorer.close()
  assert metadata["step"] == 1 and len(notes) == 1
