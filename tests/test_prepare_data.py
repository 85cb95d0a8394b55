"""Tests of ``launch.prepare_data`` / ``deinforeg_jax.data.prepare`` and Pillow image reading.

Tiny datasets (40 train / 20 test images of 8x8) are written to tmp dirs as real TFDS
array_record datasets and read back through ``load_dataset``, in this process and in a
fresh one that never imports the builder class.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import (
  CLASS_NAMES,
  REPO,
  all_records,
  data_config,
  png_bytes,
  tiny_arrays,
  write_folder,
  write_npz,
)
from deinforeg_jax.data import prepare
from deinforeg_jax.data.prepare.image_folder import image_shape
from deinforeg_jax.data.registry import load_dataset


def run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=REPO)
  return subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )


# --- npz -------------------------------------------------------------------------------


def test_npz_round_trip_keeps_order_pixels_labels_and_stats(tmp_path):
  arrays = tiny_arrays()
  npz = write_npz(tmp_path / "tiny.npz", arrays)
  prepared = prepare.prepare_npz("tiny_rgb", str(tmp_path / "tfds"), npz)
  assert prepared.dataset_dir == str(tmp_path / "tfds" / "tiny_rgb" / "1.0.0")
  assert os.path.isfile(os.path.join(prepared.dataset_dir, "dataset_info.json"))

  data = load_dataset(data_config("tiny_rgb", tmp_path / "tfds"))
  info = data.info
  assert (info.input_shape, info.num_classes, info.num_train, info.num_test) == (
    (8, 8, 3),
    4,
    40,
    20,
  )
  assert info.class_names == tuple(CLASS_NAMES) and info.pixel_max == 255.0
  flat = arrays["x_train"].reshape(-1, 3).astype(np.float64)
  np.testing.assert_allclose(info.mean, flat.mean(0), rtol=1e-9)
  np.testing.assert_allclose(info.std, flat.std(0), rtol=1e-9)
  for split, source in (("train", data.train), ("test", data.test)):
    images, labels = all_records(source)
    np.testing.assert_array_equal(images, arrays[f"x_{split}"])  # same order, exact
    np.testing.assert_array_equal(labels, arrays[f"y_{split}"])
  assert data.label_noise is None


def test_npz_greyscale_hw_arrays_become_hw1(tmp_path):
  arrays = tiny_arrays(channels=None)
  npz = write_npz(tmp_path / "grey.npz", arrays, class_names=None)
  prepared = prepare.prepare_npz("tiny_grey", str(tmp_path), npz)
  assert prepared.image_shape == (8, 8, 1) and prepared.num_classes == 4  # max label + 1
  data = load_dataset(data_config("tiny_grey", tmp_path))
  assert data.info.input_shape == (8, 8, 1) and len(data.info.mean) == 1
  images, _ = all_records(data.test)
  np.testing.assert_array_equal(images[..., 0], arrays["x_test"])


def test_given_mean_std_are_stored(tmp_path):
  npz = write_npz(tmp_path / "tiny.npz", tiny_arrays())
  prepare.prepare_npz(
    "tiny_stats", str(tmp_path), npz, mean=[1.0, 2.0, 3.0], std=[4.0, 5.0, 6.0]
  )
  info = load_dataset(data_config("tiny_stats", tmp_path)).info
  assert info.mean == (1.0, 2.0, 3.0) and info.std == (4.0, 5.0, 6.0)


@pytest.mark.parametrize("split, bad", [("y_train", 4), ("y_test", -1)])
def test_out_of_range_labels_rejected_at_prepare_time(tmp_path, split, bad):
  arrays = tiny_arrays()
  arrays[split] = arrays[split].copy()
  arrays[split][5] = bad
  npz = write_npz(tmp_path / "bad.npz", arrays)
  with pytest.raises(ValueError, match=rf"{split} labels out of range.*value\(s\) \[{bad}\]"):
    prepare.prepare_npz("tiny_bad", str(tmp_path), npz)
  assert not os.path.exists(tmp_path / "tiny_bad" / "1.0.0")


def test_prepare_rejects_bad_inputs(tmp_path):
  npz = write_npz(tmp_path / "tiny.npz", tiny_arrays())
  with pytest.raises(ValueError, match="TFDS catalogue dataset"):
    prepare.prepare_npz("mnist", str(tmp_path), npz)
  with pytest.raises(ValueError, match="snake_case"):
    prepare.prepare_npz("My-Data", str(tmp_path), npz)
  np.savez(tmp_path / "nokeys.npz", x_train=np.zeros((2, 4, 4), np.uint8))
  with pytest.raises(ValueError, match=r"lacks key\(s\).*x_test"):
    prepare.prepare_npz("tiny_keys", str(tmp_path), str(tmp_path / "nokeys.npz"))
  arrays = tiny_arrays()
  arrays["y_train"] = arrays["y_train"].astype(np.float32)
  with pytest.raises(ValueError, match="integer class ids"):
    prepare.prepare_npz("tiny_float", str(tmp_path), write_npz(tmp_path / "f.npz", arrays))


def test_existing_dataset_needs_overwrite(tmp_path):
  npz = write_npz(tmp_path / "tiny.npz", tiny_arrays())
  prepare.prepare_npz("tiny_twice", str(tmp_path), npz)
  with pytest.raises(FileExistsError, match="--overwrite"):
    prepare.prepare_npz("tiny_twice", str(tmp_path), npz)
  arrays = tiny_arrays(seed=1)
  prepare.prepare_npz(
    "tiny_twice", str(tmp_path), write_npz(tmp_path / "b.npz", arrays), overwrite=True
  )
  images, _ = all_records(load_dataset(data_config("tiny_twice", tmp_path)).train)
  np.testing.assert_array_equal(images, arrays["x_train"])


# --- image folder ----------------------------------------------------------------------


def expected_folder_order(arrays, split):
  """Folder datasets list classes in sorted order, files by name within a class."""
  labels = arrays[f"y_{split}"]
  order = np.concatenate([np.flatnonzero(labels == c) for c in range(len(CLASS_NAMES))])
  return arrays[f"x_{split}"][order], labels[order]


def test_image_folder_round_trip(tmp_path):
  arrays = tiny_arrays()
  folder = write_folder(tmp_path / "images", arrays)
  (tmp_path / "images" / "train" / "ant" / "notes.txt").write_text("not an image")
  prepared = prepare.prepare_image_folder("tiny_folder", str(tmp_path / "tfds"), folder)
  assert prepared.image_shape == (8, 8, 3) and prepared.num_classes == 4
  data = load_dataset(data_config("tiny_folder", tmp_path / "tfds"))
  assert data.info.class_names == tuple(CLASS_NAMES)
  for split, source in (("train", data.train), ("test", data.test)):
    images, labels = all_records(source)
    want_images, want_labels = expected_folder_order(arrays, split)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)


def test_image_folder_mixed_grey_and_rgb_becomes_rgb(tmp_path):
  arrays = tiny_arrays()
  root = tmp_path / "images"
  write_folder(root, arrays)
  grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
  (root / "train" / "bee" / "zzz_grey.png").write_bytes(png_bytes(grey))
  prepare.prepare_image_folder("tiny_mixed", str(tmp_path), str(root))
  data = load_dataset(data_config("tiny_mixed", tmp_path))
  assert data.info.input_shape == (8, 8, 3) and data.info.num_train == 41
  images, labels = all_records(data.train)
  # Last "bee" file: after ant's 10 and bee's 10 files -> index 20.
  assert labels[20] == 1
  np.testing.assert_array_equal(images[20], np.repeat(grey[..., None], 3, axis=-1))


def test_image_folder_errors(tmp_path):
  arrays = tiny_arrays()
  root = tmp_path / "images"
  write_folder(root, arrays)
  (root / "test" / "eel").mkdir()
  with pytest.raises(ValueError, match=r"class folder\(s\) \['eel'\] that .*train lacks"):
    prepare.prepare_image_folder("tiny_err", str(tmp_path), str(root))
  (root / "test" / "eel").rmdir()
  (root / "train" / "ant" / "big.png").write_bytes(png_bytes(np.zeros((9, 8, 3), np.uint8)))
  with pytest.raises(ValueError, match="differ in size"):
    prepare.prepare_image_folder("tiny_err", str(tmp_path), str(root))
  with pytest.raises(ValueError, match="is not a folder"):
    prepare.prepare_image_folder("tiny_err", str(tmp_path), str(tmp_path / "nothing"))


def test_image_folder_reads_jpeg_with_pillow(tmp_path):
  root = tmp_path / "images"
  colours = {"cat": (200, 40, 10), "dog": (10, 90, 250)}  # flat images: JPEG keeps them closely
  for split in ("train", "test"):
    for cls, colour in colours.items():
      (root / split / cls).mkdir(parents=True)
      Image.new("RGB", (6, 4), colour).save(root / split / cls / "a.jpg", quality=95)
  prepared = prepare.prepare_image_folder("tiny_jpeg", str(tmp_path / "tfds"), str(root))
  assert prepared.image_shape == (4, 6, 3) and prepared.num_classes == 2
  images, labels = all_records(load_dataset(data_config("tiny_jpeg", tmp_path / "tfds")).train)
  np.testing.assert_array_equal(labels, [0, 1])
  want = np.broadcast_to(np.asarray(list(colours.values()))[:, None, None], images.shape)
  np.testing.assert_allclose(images, want, atol=3)


def test_corrupt_image_fails_naming_the_file(tmp_path):
  arrays = tiny_arrays()
  root = tmp_path / "images"
  write_folder(root, arrays)
  truncated = root / "train" / "cat" / "truncated.png"
  truncated.write_bytes(png_bytes(arrays["x_train"][0])[:-40])  # header intact, pixels cut
  with pytest.raises(ValueError, match=f"cannot read image {re.escape(str(truncated))}"):
    prepare.prepare_image_folder("tiny_corrupt", str(tmp_path / "tfds"), str(root))
  truncated.unlink()
  garbage = root / "test" / "dog" / "garbage.png"
  garbage.write_bytes(b"GIF89a....")
  with pytest.raises(ValueError, match=f"cannot read image {re.escape(str(garbage))}"):
    prepare.prepare_image_folder("tiny_corrupt", str(tmp_path / "tfds"), str(root))


# --- command line and a fresh process ----------------------------------------------------


def test_cli_prepares_and_a_fresh_process_reads_by_name(tmp_path):
  arrays = tiny_arrays()
  npz = write_npz(tmp_path / "tiny.npz", arrays)
  folder = write_folder(tmp_path / "images", tiny_arrays(channels=1, seed=2))
  data_dir = tmp_path / "tfds"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.prepare_data",
      "--name=cli_npz",
      f"--data_dir={data_dir}",
      f"--npz={npz}",
      "--mean=0.5,0.25,0.125",
      "--std=0.5,0.5,0.25",
    ],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert (
    "python -m launch.train --config=launch/configs/default.py "
    f"--config.data.name=cli_npz --config.data.data_dir={data_dir} --workdir=W" in result.stdout
  )
  prepare.prepare_image_folder("cli_folder", str(data_dir), folder)

  # A new interpreter: TFDS must find both datasets from the files alone.
  code = f"""
import json, sys
import numpy as np
from deinforeg_jax.data.registry import load_dataset
from launch.configs import default
out = {{}}
for name in ("cli_npz", "cli_folder"):
    cfg = default.get_config().data
    cfg.update({{"name": name, "data_dir": {str(data_dir)!r}}})
    data = load_dataset(cfg)
    first = data.train[0]
    out[name] = dict(shape=list(data.info.input_shape), classes=data.info.num_classes,
                     n=[data.info.num_train, data.info.num_test], mean=list(data.info.mean),
                     first_label=int(first["label"]), first_sum=int(np.sum(first["image"])))
out["builder_module_imported"] = any(m.startswith("deinforeg_jax.data.prepare")
                                     for m in sys.modules)
import tensorflow_datasets as tfds
source = tfds.data_source("cli_npz", split="test", data_dir={str(data_dir)!r}, download=False)
out["data_source"] = [len(source), int(source[0]["label"]), list(source[0]["image"].shape)]
print(json.dumps(out))
"""
  result = run_python(code)
  assert result.returncode == 0, result.stderr[-2000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out["builder_module_imported"] is False
  assert out["cli_npz"]["shape"] == [8, 8, 3] and out["cli_npz"]["classes"] == 4
  assert out["cli_npz"]["n"] == [40, 20]
  assert out["cli_npz"]["mean"] == [127.5, 63.75, 31.875]  # [0, 1] units -> raw uint8 units
  assert out["cli_npz"]["first_label"] == arrays["y_train"][0]
  assert out["cli_npz"]["first_sum"] == int(arrays["x_train"][0].sum())
  assert out["cli_folder"]["shape"] == [8, 8, 1] and out["cli_folder"]["n"] == [40, 20]
  assert out["data_source"] == [20, arrays["y_test"][0], [8, 8, 3]]


def test_cli_reports_label_errors(tmp_path):
  arrays = tiny_arrays()
  arrays["y_test"] = arrays["y_test"] + 10
  npz = write_npz(tmp_path / "bad.npz", arrays)
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.prepare_data",
      "--name=cli_bad",
      f"--data_dir={tmp_path}",
      f"--npz={npz}",
    ],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=REPO),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1
  assert result.stderr.startswith("error: ") and "y_test labels out of range" in result.stderr


# --- reading images with Pillow ------------------------------------------------------------


@pytest.mark.parametrize(
  "shape, channels", [((7, 5, 3), 3), ((8, 8, 1), 1), ((3, 9, 4), 3), ((5, 4, 2), 1), ((6, 6), 1)]
)
def test_read_image_drops_alpha_and_converts_grey(tmp_path, shape, channels):
  image = np.random.default_rng(len(shape) + shape[-1]).integers(0, 256, shape, dtype=np.uint8)
  path = str(tmp_path / "image.png")
  with open(path, "wb") as f:
    f.write(png_bytes(image))
  want = (image if image.ndim == 3 else image[..., None])[..., :channels]  # alpha dropped
  assert image_shape(path) == (shape[0], shape[1], channels)
  np.testing.assert_array_equal(prepare.read_image(path, channels), want)
  if channels == 1:  # grey -> RGB repeats the grey value
    np.testing.assert_array_equal(prepare.read_image(path, 3), np.repeat(want, 3, axis=-1))


def test_read_image_palette_one_bit_and_16_bit(tmp_path):
  palette = np.asarray([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
  indices = np.asarray([[1, 2, 3], [3, 0, 1]], np.uint8)
  paletted = Image.new("P", (3, 2))
  paletted.putpalette(palette.reshape(-1).tolist())
  paletted.putdata(indices.reshape(-1).tolist())
  paletted.save(tmp_path / "palette.png")
  assert image_shape(str(tmp_path / "palette.png")) == (2, 3, 3)  # palette images are colour
  decoded = prepare.read_image(str(tmp_path / "palette.png"), 3)
  np.testing.assert_array_equal(decoded, palette[indices])
  # 1-bit greyscale becomes 0/255.
  Image.fromarray(np.asarray([[True, False, True, False]])).save(tmp_path / "bits.png")
  decoded = prepare.read_image(str(tmp_path / "bits.png"), 1)
  np.testing.assert_array_equal(decoded[..., 0], [[255, 0, 255, 0]])
  # 16-bit greyscale is scaled to 8 bits: round(v * 255 / 65535).
  values = np.asarray([[1, 65535], [256, 7], [32896, 0]], np.uint16)
  Image.fromarray(values).save(tmp_path / "wide.png")
  assert image_shape(str(tmp_path / "wide.png")) == (3, 2, 1)
  decoded = prepare.read_image(str(tmp_path / "wide.png"), 1)
  assert decoded.dtype == np.uint8
  np.testing.assert_array_equal(decoded[..., 0], [[0, 255], [1, 0], [128, 0]])


def test_read_image_rejects_garbage_naming_the_file(tmp_path):
  path = str(tmp_path / "not_an_image.png")
  with open(path, "wb") as f:
    f.write(b"GIF89a....")
  with pytest.raises(ValueError, match=f"cannot read image {re.escape(path)}"):
    image_shape(path)
  with pytest.raises(ValueError, match=f"cannot read image {re.escape(path)}"):
    prepare.read_image(path, 3)

