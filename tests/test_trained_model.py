"""Using a trained run: ``deinforeg_jax.load``, ``launch.evaluate`` / ``predict`` / ``export``.

Three tiny runs are trained once for the module: digits (3 blocks), a run grown from it
(``config.grow.from_workdir``, 4 blocks) and a text run (BiLSTM, 2 exits).  On each:

* the loaded model reproduces the run's own per-exit test accuracy and adaptive-exit
  accuracy (``results.json``) exactly, and ``exit="best"`` is ``results.json``'s block;
* ``exit="adaptive"`` equals ``inference.decide_exits`` on the same logits;
* the exported function, deserialized in a process with only jax and numpy, gives the
  loaded model's logits for two batch sizes (symbolic batch);
* evaluate / predict write what they report; bad workdirs and inputs fail in one line.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import (
  REPO,
  launch_env,
  run_launchers,
  text_data_config,
  tiny_config,
  toy_records,
  write_jsonl,
)

import deinforeg_jax
from deinforeg_jax import inference, train, trained
from deinforeg_jax.trained import evaluation, export, inputs, loading, prediction_csv
from deinforeg_jax.data import load_digits, load_dataset
from deinforeg_jax.data.prepare import text as text_prepare
from deinforeg_jax.run import DatasetShape, build_run
from deinforeg_jax.user_errors import UserError

# One worker trains the module's runs once (conftest groups by fixture name otherwise).
pytestmark = pytest.mark.xdist_group("test_trained_model")


def _digits_config(num_blocks: int, **grow):
  config = tiny_config(num_blocks=num_blocks, projector="16-16")
  config.parallel.num_devices = 1
  config.checkpoint.use_async = False
  config.train.num_epochs = 2
  config.inference.cosine_threshold = 0.0  # exits vary: the argmax decides
  for name, value in grow.items():
    config.grow[name] = value
  return config


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("digits_run"))
  results = train.train_and_evaluate(_digits_config(3), workdir)
  return workdir, results


@pytest.fixture(scope="module")
def grown_run(digits_run, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("grown_run"))
  config = _digits_config(4, from_workdir=digits_run[0])
  config.train.num_epochs = 1
  results = train.train_and_evaluate(config, workdir)
  return workdir, results


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("text_run")
  write_jsonl(root / "train.jsonl.gz", toy_records(32, 0))
  write_jsonl(root / "test.jsonl.gz", toy_records(9, 1))
  text_prepare.prepare_jsonl(
    "toy_text", str(root / "tfds"), str(root / "train.jsonl.gz"), str(root / "test.jsonl.gz")
  )
  config = text_data_config(root / "tfds")
  config.model.num_blocks = 2
  config.parallel.num_devices = 1
  config.checkpoint.use_async = False
  config.inference.cosine_threshold = 0.0
  workdir = str(root / "run")
  results = train.train_and_evaluate(config, workdir)
  return workdir, results, config


def _run_exit_logits(model: trained.TrainedModel, config=None):
  """Exit logits ``[K, N, C]`` and labels of the run's own test split, through ``load``'s
  preprocessing of the raw inputs."""
  if model.kind == "image":
    _, test, _ = load_digits(seed=model.config.data.split_seed)
    return model.logits(test.images), test.labels
  texts = [r["text"] for r in toy_records(9, 1)]
  return model.logits(texts), np.asarray([r["label"] for r in toy_records(9, 1)])


@pytest.fixture(scope="module", params=["digits", "grown", "text"])
def loaded(request):
  workdir, results = request.getfixturevalue(f"{request.param}_run")[:2]
  return request.param, deinforeg_jax.load(workdir), results


# ------------------------------------------------------------------ load and predict


def test_loaded_model_reproduces_the_runs_accuracy_and_best_exit(loaded):
  name, model, results = loaded
  logits, labels = _run_exit_logits(model)
  accuracy = (np.argmax(logits, -1) == labels[None]).mean(axis=1)
  np.testing.assert_allclose(accuracy, results["per_block_test_accuracy"], atol=1e-12)
  assert model.best_exit == results["best_block"]
  assert model.best_exit_source == "results.json best_block"
  best = model.prediction(logits, "best")
  np.testing.assert_array_equal(best.labels, np.argmax(logits[results["best_block"]], -1))
  np.testing.assert_allclose(best.probabilities.sum(-1), 1.0, rtol=1e-5)
  expected_blocks = {"digits": [0, 1, 2], "grown": [0, 1, 2, 3], "text": [1, 2]}[name]
  assert model.exit_blocks == expected_blocks
  assert best.blocks.tolist() == [expected_blocks[results["best_block"]]] * len(labels)


def test_adaptive_exit_is_the_runs_rule(loaded):
  _, model, results = loaded
  logits, labels = _run_exit_logits(model)
  adaptive = model.prediction(logits, "adaptive")
  cfg = model.config.inference
  expected = inference.decide_exits(
    logits, cfg.patience, cfg.cosine_threshold, mode=cfg.exit_mode, reset=cfg.patience_reset
  )
  np.testing.assert_array_equal(adaptive.exits, expected["exit"])
  np.testing.assert_array_equal(adaptive.labels, expected["prediction"])
  report = results["adaptive_inference"]
  assert np.mean(adaptive.labels == labels) == pytest.approx(report["accuracy"], abs=1e-12)
  fractions = np.bincount(adaptive.exits, minlength=model.num_exits) / len(labels)
  np.testing.assert_allclose(fractions, report["exit_fractions"], atol=1e-12)


def test_predict_matches_logits_and_chunks_do_not_change_results(digits_run):
  model = deinforeg_jax.load(digits_run[0])
  _, test, _ = load_digits(seed=0)
  images = test.images[:50]
  whole = model.predict(images, exit="adaptive")
  chunked = model.predict(images, exit="adaptive", batch_size=16)  # padded last chunk
  np.testing.assert_array_equal(whole.exits, chunked.exits)
  np.testing.assert_allclose(whole.probabilities, chunked.probabilities, rtol=1e-5, atol=1e-6)
  at_1 = model.predict(images, exit=1)
  assert at_1.exits.tolist() == [1] * 50 and at_1.names == [str(k) for k in at_1.labels]
  np.testing.assert_array_equal(model.predict(images, exit=-1).labels,
                                model.predict(images, exit=2).labels)
  grey = model.predict(images[..., 0], exit=1)  # [N, H, W] for one channel
  np.testing.assert_array_equal(grey.labels, at_1.labels)
  uint8 = model.predict(np.round(images * 255).astype(np.uint8), exit=1)  # divided by 255
  assert np.mean(uint8.labels == at_1.labels) > 0.9
  x = model.preprocessing(images)
  np.testing.assert_allclose(x, (images - model.preprocessing.mean[0]) / model.preprocessing.std[0],
                             rtol=1e-6)
  np.testing.assert_array_equal(model.predict(x, exit=1, preprocessed=True).labels, at_1.labels)


def test_load_exposes_model_variables_class_names_and_preprocessing(digits_run, text_run):
  model = deinforeg_jax.load(digits_run[0])
  _, _, info = load_digits(seed=0)
  assert model.class_names == info.class_names
  assert model.preprocessing.mean == info.mean and model.preprocessing.std == info.std
  assert sorted(model.variables["params"]) == ["block_00", "block_01", "block_02"]
  assert model.model.num_classes == 10 and model.step == 44
  text_model = deinforeg_jax.load(text_run[0])
  data = load_dataset(text_run[2].data)
  assert text_model.preprocessing.vocabulary.words == data.vocabulary.words
  np.testing.assert_array_equal(
    text_model.preprocessing([r["text"] for r in toy_records(9, 1)]), data.test.tokens
  )
  assert text_model.class_names == data.info.class_names


def test_interrupted_run_best_exit_falls_back_to_metrics_then_the_last_exit(digits_run, tmp_path):
  workdir = str(tmp_path / "interrupted")
  shutil.copytree(digits_run[0], workdir)
  os.remove(os.path.join(workdir, "results.json"))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  model = deinforeg_jax.load(workdir)
  assert model.best_exit == int(np.argmax(last["test_accuracy"]))
  assert "interrupted run" in model.best_exit_source
  os.remove(os.path.join(workdir, "metrics.jsonl"))
  model = deinforeg_jax.load(workdir)
  assert model.best_exit == 2 and model.best_exit_source.endswith("the last exit")


def test_schedule_run_uses_only_the_blocks_added_by_its_step():
  config = _digits_config(3, schedule="1,2")
  config.train.num_epochs = 3
  shape = DatasetShape(input_shape=(8, 8, 1), num_classes=10, num_train=1437)
  run = build_run(config, shape, num_old=0)
  assert run.steps_per_epoch == 22
  active = loading._active_blocks  # pylint: disable=protected-access
  assert active(run, 22) == 1
  assert active(run, 23) == 2  # the first step of epoch 2 trains the added block
  assert active(run, 66) == 3


# ------------------------------------------------------------------ clear errors


def test_bad_workdirs_and_inputs_fail_with_one_line_naming_the_problem(
  digits_run, text_run, tmp_path
):
  with pytest.raises(trained.WorkdirError, match=r"no such directory"):
    deinforeg_jax.load(str(tmp_path / "absent"))
  with pytest.raises(trained.WorkdirError, match=r"no checkpoint in .*checkpoints \(train with"):
    deinforeg_jax.load(str(tmp_path))
  text_copy = str(tmp_path / "text_without_vocab")
  shutil.copytree(text_run[0], text_copy)
  os.remove(os.path.join(text_copy, "vocab.json"))
  with pytest.raises(trained.WorkdirError, match=r"no vocab.json: a text run keeps"):
    deinforeg_jax.load(text_copy)
  model = deinforeg_jax.load(digits_run[0])
  with pytest.raises(trained.InputError, match=r"shape \[2, 16, 16, 3\], but the model takes "
                     r"\[N, 8x8x1\]"):
    model.predict(np.zeros((2, 16, 16, 3), np.uint8))
  with pytest.raises(trained.InputError, match="this model reads images, not text"):
    model.predict(["some text"])
  with pytest.raises(ValueError, match=r"exit=7: choose an exit index 0..2 \(blocks \[0, 1, 2\]\)"):
    model.predict(np.zeros((1, 8, 8, 1)), exit=7)
  text_model = deinforeg_jax.load(text_run[0])
  with pytest.raises(trained.InputError, match="this model reads text"):
    text_model.predict(np.zeros((1, 8, 8, 1)))
  with pytest.raises(trained.WorkdirError) as error:
    deinforeg_jax.load(str(tmp_path))
  assert "\n" not in str(error.value)


# ------------------------------------------------------------------ evaluate and predict


def test_evaluate_reports_the_runs_accuracy_and_writes_json_and_png(loaded, tmp_path):
  name, model, results = loaded
  before = sorted(os.listdir(os.path.join(model.workdir, "checkpoints")))
  report = evaluation.evaluate(model, model.config.data, "adaptive")
  json_path, png = evaluation.write_report(report, str(tmp_path / name))
  np.testing.assert_allclose(report["per_exit_accuracy"], results["per_block_test_accuracy"])
  assert report["adaptive_inference"]["accuracy"] == pytest.approx(
    results["adaptive_inference"]["accuracy"], abs=1e-12
  )
  assert report["accuracy"] == pytest.approx(results["adaptive_inference"]["accuracy"], abs=1e-12)
  matrix = np.asarray(report["confusion_matrix"])
  assert matrix.sum() == report["num_examples"] == {"text": 9}.get(name, 360)
  with open(json_path) as f:
    assert json.load(f)["confusion_matrix"] == report["confusion_matrix"]
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(os.path.join(model.workdir, "checkpoints"))) == before


def test_evaluate_on_another_prepared_dataset_rescales_its_pixels(digits_run, tmp_path):
  """Digits stored as uint8 0..255 in a prepared TFDS dataset: the run's normalisation is
  rescaled, so the accuracy equals the run's own (up to rounding to 8 bits)."""
  from deinforeg_jax.data import prepare  # pylint: disable=import-outside-toplevel

  train_split, test_split, _ = load_digits(seed=0)
  to_uint8 = lambda x: np.round(x[..., 0] * 255).astype(np.uint8)
  np.savez(
    tmp_path / "digits.npz",
    x_train=to_uint8(train_split.images),
    y_train=train_split.labels,
    x_test=to_uint8(test_split.images),
    y_test=test_split.labels,
  )
  prepare.prepare_npz("digits_uint8", str(tmp_path / "tfds"), str(tmp_path / "digits.npz"))
  model = deinforeg_jax.load(digits_run[0])
  data_cfg = model.config.data.copy_and_resolve_references()
  data_cfg.name, data_cfg.data_dir = "digits_uint8", str(tmp_path / "tfds")
  report = evaluation.evaluate(model, data_cfg, 1)
  uint8 = model.predict(to_uint8(test_split.images), exit=1)
  assert report["accuracy"] == pytest.approx(np.mean(uint8.labels == test_split.labels))
  assert report["dataset"] == "digits_uint8" and report["num_examples"] == 360


def test_evaluate_overrides_only_data_and_inference_fields():
  config = tiny_config(num_blocks=2)
  width = config.model.width
  evaluation.apply_overrides(config, {"data.name": "other", "inference.patience": 2})
  assert (config.data.name, config.inference.patience, config.model.width) == ("other", 2, width)
  with pytest.raises(UserError, match=r"^--config.model.width: evaluate takes only "):
    evaluation.apply_overrides(config, {"data.name": "again", "model.width": 2.0})
  assert (config.data.name, config.model.width) == ("other", width)  # refused before any is set


def test_predict_reads_image_folders_npz_and_jsonl(digits_run, text_run, tmp_path):
  from PIL import Image  # pylint: disable=import-outside-toplevel

  model = deinforeg_jax.load(digits_run[0])
  _, test, _ = load_digits(seed=0)
  images = np.round(test.images[:6, ..., 0] * 255).astype(np.uint8)
  folder = tmp_path / "images"
  (folder / "sub").mkdir(parents=True)
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / ("sub" if i % 2 else "") / f"{i}.png")
  ids, raw = inputs.read_input(str(folder), model)
  assert ids == ["0.png", "2.png", "4.png", "sub/1.png", "sub/3.png", "sub/5.png"]
  order = [0, 2, 4, 1, 3, 5]
  np.testing.assert_array_equal(raw[..., 0], images[order])
  np.savez(tmp_path / "x.npz", images=images)
  ids, raw = inputs.read_input(str(tmp_path / "x.npz"), model)
  assert ids == [str(i) for i in range(6)]
  out = tmp_path / "preds.csv"
  prediction = model.predict(raw, exit="adaptive")
  prediction_csv.write_csv(str(out), ids, prediction)
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert [int(r["label"]) for r in rows] == prediction.labels.tolist()
  assert [int(r["exit_block"]) for r in rows] == prediction.blocks.tolist()
  np.testing.assert_allclose([float(r["probability"]) for r in rows], prediction.confidence,
                             atol=1e-6)
  text_model = deinforeg_jax.load(text_run[0])
  records = [{"id": f"t{i}", "text": r["text"]} for i, r in enumerate(toy_records(4, 1))]
  with open(tmp_path / "texts.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records[:3])
    f.write(json.dumps(records[3]["text"]) + "\n")
  ids, texts = inputs.read_input(str(tmp_path / "texts.jsonl"), text_model)
  assert ids == ["t0", "t1", "t2", "3"] and texts == [r["text"] for r in records]
  with pytest.raises(ValueError, match="this image model reads an image folder or an .npz"):
    inputs.read_input(str(tmp_path / "texts.jsonl"), model)
  np.savez(tmp_path / "bad.npz", pixels=images)
  with pytest.raises(ValueError, match=r"has no array 'x' or 'images' \(found \['pixels'\]\)"):
    inputs.read_input(str(tmp_path / "bad.npz"), model)


def _launch(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=REPO,
    env=launch_env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_predict_and_evaluate_commands(digits_run, tmp_path):
  workdir = digits_run[0]
  model = deinforeg_jax.load(workdir)
  _, test, _ = load_digits(seed=0)
  np.savez(tmp_path / "x.npz", x=test.images[:20])
  out = tmp_path / "preds.csv"
  (tmp_path / "launched").mkdir()
  launched = run_launchers(
    {
      "predict": ["launch.predict", f"--workdir={workdir}", f"--input={tmp_path}/x.npz",
                  f"--out={out}", "--exit=adaptive"],
      "evaluate": ["launch.evaluate", f"--workdir={workdir}", "--config.inference.patience=2"],
      "predict_no_run": ["launch.predict", f"--workdir={tmp_path}", f"--input={tmp_path}/x.npz"],
      "evaluate_model": ["launch.evaluate", f"--workdir={workdir}", "--config.model.width=2"],
      "evaluate_typo": ["launch.evaluate", f"--workdir={workdir}", "--config.data.nme=x"],
    },
    tmp_path / "launched",
  )
  done = launched["predict"]
  assert done.code == 0, done.stderr[-2000:]
  with open(out) as f:
    rows = list(csv.DictReader(f))
  expected = model.predict(test.images[:20], exit="adaptive")
  assert [int(r["label"]) for r in rows] == expected.labels.tolist()
  assert [r["class_name"] for r in rows] == expected.names
  done = launched["evaluate"]
  assert done.code == 0, done.stderr[-2000:]
  with open(os.path.join(workdir, "evaluation", "digits.json")) as f:
    report = json.load(f)
  assert report["adaptive_inference"]["patience"] == 2 and report["exit"] == "best"
  assert os.path.exists(os.path.join(workdir, "evaluation", "digits_confusion.png"))
  bad = launched["predict_no_run"]
  assert bad.code == 1
  assert bad.stderr.strip().splitlines() == [
    f"error: cannot load {tmp_path}: no checkpoint in {tmp_path}/checkpoints (train with "
    "`python -m launch.train --workdir=...` first, and point --workdir at that run)."
  ]
  bad = launched["evaluate_model"]
  assert bad.code == 1 and len(bad.stderr.strip().splitlines()) == 1
  assert "evaluate takes only --config.data.* and --config.inference.*" in bad.stderr
  bad = launched["evaluate_typo"]
  assert bad.code == 1 and bad.stderr.strip().splitlines() == [
    "error: --config.data.nme: the config has no field 'nme'. Did you mean \"name\" instead of "
    '"nme"? The fields and their defaults are in launch/configs/default.py.'
  ]


# ------------------------------------------------------------------ export

_SERVE = r"""
import json, sys
import numpy as np
import jax
exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
inputs = np.load(sys.argv[2])
outs = [np.asarray(exported.call(inputs[k])) for k in sorted(inputs.files)]
np.savez(sys.argv[3], *outs)
project = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "deinforeg_jax", "launch"))
print(json.dumps({"project_modules": project, "shapes": [o.shape for o in outs]}))
"""


def test_exported_function_gives_the_loaded_logits_without_flax(loaded, tmp_path):
  name, model, _ = loaded
  out = str(tmp_path / f"{name}.jaxexport")
  _, description_path = export.export(model, out)
  if model.kind == "image":
    raw = load_digits(seed=0)[1].images
  else:
    raw = [r["text"] for r in toy_records(9, 1)]
  x = model.preprocessing(raw)
  np.savez(tmp_path / "inputs.npz", a=x[:3], b=x[3:8])
  serve = subprocess.run(
    [sys.executable, "-c", _SERVE, out, str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
    cwd=str(tmp_path),
    env={k: v for k, v in launch_env(1).items() if k != "PYTHONPATH"},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert serve.returncode == 0, serve.stderr[-2000:]
  served = json.loads(serve.stdout.strip().splitlines()[-1])
  assert served["project_modules"] == []  # plain jax: no flax, no project code
  with np.load(tmp_path / "out.npz") as outs:
    exported = [outs["arr_0"], outs["arr_1"]]
  loaded_logits = model.logits(x, preprocessed=True)
  assert exported[0].shape == (model.num_exits, 3, model.num_classes)
  assert exported[1].shape == (model.num_exits, 5, model.num_classes)
  diff = max(np.abs(exported[0] - loaded_logits[:, :3]).max(),
             np.abs(exported[1] - loaded_logits[:, 3:8]).max())
  assert diff < 1e-5, diff
  with open(description_path) as f:
    description = json.load(f)
  assert description_path == str(tmp_path / f"{name}.json")
  assert description["class_names"] == list(model.class_names)
  assert description["exit_blocks"] == model.exit_blocks
  assert description["input"]["shape"] == ["b", *model.preprocessing.input_shape]
  pre = description["preprocessing"]
  if model.kind == "image":
    assert pre["mean"] == list(model.preprocessing.mean) and pre["pixel_max"] == 1.0
  else:
    assert pre["vocabulary"] == list(model.preprocessing.vocabulary.words)


def test_export_command(digits_run, tmp_path):
  out = tmp_path / "digits.jaxexport"
  done = _launch("launch.export", f"--workdir={digits_run[0]}", f"--out={out}",
                 "--platforms=cpu")
  assert done.returncode == 0, done.stderr[-2000:]
  exported = jax.export.deserialize(bytearray(out.read_bytes()))
  assert exported.platforms == ("cpu",)
  assert str(exported.in_avals[0].shape[0]) == "b"
  with open(tmp_path / "digits.json") as f:
    assert json.load(f)["best_exit"] == digits_run[1]["best_block"]


def test_pipeline_run_loads_as_the_one_program_model(tmp_path):
  """A pipeline run's checkpoint holds the one-program state: it loads like any run."""
  config = _digits_config(2)
  config.parallel.mode, config.parallel.num_stages = "pipeline", 2
  config.train.num_epochs, config.train.max_steps = 1, 3
  results = train.train_and_evaluate(config, str(tmp_path))
  model = deinforeg_jax.load(str(tmp_path))
  logits, labels = _run_exit_logits(model)
  accuracy = (np.argmax(logits, -1) == labels[None]).mean(axis=1)
  np.testing.assert_allclose(accuracy, results["per_block_test_accuracy"], atol=1e-12)
  assert model.step == 3 and model.exit_blocks == [0, 1]


def test_checkpoint_description_is_used_and_damaged_arrays_are_passed_over(
  digits_run, monkeypatch, tmp_path, capsys
):
  """The checkpoint's mean/std/pixel_max/class_names are what the model uses; a step whose
  array does not match its saved checksum is passed over, naming the array."""
  read = loading.checkpoint.read_variables
  described = {"mean": [0.5], "std": [2.0], "pixel_max": 1.0, "class_names": list("abcdefghij")}

  def with_description(workdir, warn):
    variables, metadata = read(workdir, warn)
    metadata["dataset"].update(described)
    return variables, metadata

  monkeypatch.setattr(loading.checkpoint, "read_variables", with_description)
  model = deinforeg_jax.load(digits_run[0])
  assert model.class_names == tuple("abcdefghij") and model.notes == []
  np.testing.assert_allclose(model.preprocessing(np.ones((1, 8, 8, 1))), 0.25)
  assert model.predict(np.ones((2, 8, 8, 1)), exit=0).names[0] in "abcdefghij"

  workdir = tmp_path / "run"
  shutil.copytree(digits_run[0], workdir)
  path = workdir / "checkpoints" / "44" / "metadata" / "metadata"
  metadata = json.loads(path.read_text())
  array = "params/block_01/classifier/Dense_0/kernel"
  metadata["checksums"][array] ^= 1  # as if a word of the array changed on disk
  path.write_text(json.dumps(loading.checkpoint.with_metadata_digest(metadata)))
  capsys.readouterr()
  assert deinforeg_jax.load(str(workdir)).step == 22
  warning = capsys.readouterr().err
  assert f"step 44 in {workdir}/checkpoints/44: CorruptCheckpointError: array {array} " in warning
  assert f"{array} does not match its saved checksum); read step 22" in warning
