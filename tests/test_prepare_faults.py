"""Fault cases of ``launch.prepare_data`` (issue 14, "Data preparation").

Bad input is refused with the file (and the line or index) named, before or while the
dataset is written, and a failed run never loses an existing dataset. Everything is
generated in tmp dirs; the only subprocess runs the command line once for all its cases.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib

import numpy as np
import pytest
from PIL import Image
from helpers import (
  all_records,
  data_config,
  png_bytes,
  run_prepare_data_cases,
  tiny_arrays,
  write_folder,
  write_npz,
)

from deinforeg_jax.data import prepare
from deinforeg_jax.data.prepare import builder
from deinforeg_jax.data.registry import load_dataset


def at(path, rest: str = "") -> str:
  """A regex: ``path`` literally, then ``rest`` (a regex)."""
  return re.escape(str(path)) + rest


def leftovers(data_dir) -> list[str]:
  return [n for n in os.listdir(data_dir) if ".incomplete-" in n]


def write_lines(path, lines: list[bytes]) -> str:
  data = b"".join(line + b"\n" for line in lines)
  path.write_bytes(gzip.compress(data) if str(path).endswith(".gz") else data)
  return str(path)


def record(text, label) -> bytes:
  return json.dumps({"text": text, "label": label}).encode()


# --- --overwrite never loses a dataset --------------------------------------------------


@pytest.fixture
def old_dataset(tmp_path):
  """``keep_me``: a prepared dataset that failed overwrites must leave as it was."""
  arrays = tiny_arrays(seed=3)
  data_dir = tmp_path / "tfds"
  prepare.prepare_npz("keep_me", str(data_dir), write_npz(tmp_path / "old.npz", arrays))
  return data_dir, arrays


def assert_intact(data_dir, arrays):
  data = load_dataset(data_config("keep_me", data_dir))
  for split, source in (("train", data.train), ("test", data.test)):
    images, labels = all_records(source)
    np.testing.assert_array_equal(images, arrays[f"x_{split}"])
    np.testing.assert_array_equal(labels, arrays[f"y_{split}"])
  assert leftovers(data_dir) == []


def test_overwrite_with_bad_arrays_keeps_the_old_dataset(old_dataset, tmp_path):
  data_dir, old = old_dataset
  arrays = tiny_arrays()
  arrays["x_test"] = arrays["x_test"].astype(np.float32)
  arrays["x_test"][7, 1, 2, 0] = np.nan
  npz = write_npz(tmp_path / "nan.npz", arrays)
  with pytest.raises(ValueError, match=at(npz, r": x_test\[7\] has NaN or Inf pixel values")):
    prepare.prepare_npz("keep_me", str(data_dir), npz, overwrite=True)
  assert_intact(data_dir, old)


def test_overwrite_failing_while_writing_keeps_the_old_dataset(old_dataset, tmp_path):
  data_dir, old = old_dataset
  arrays = tiny_arrays(seed=4)
  root = tmp_path / "images"
  write_folder(root, arrays)
  # Header intact, pixels cut: the header scan passes, decoding fails while TFDS writes
  # the test split (the train split is written by then).
  truncated = root / "test" / "dog" / "zzz.png"
  truncated.write_bytes(png_bytes(arrays["x_test"][0])[:-40])
  with pytest.raises(ValueError, match=at(f"cannot read image {truncated}: ")):
    prepare.prepare_image_folder("keep_me", str(data_dir), str(root), overwrite=True)
  assert_intact(data_dir, old)
  truncated.unlink()
  prepared = prepare.prepare_image_folder("keep_me", str(data_dir), str(root), overwrite=True)
  assert prepared.num_examples == {"train": 40, "test": 20} and leftovers(data_dir) == []


def test_a_failed_swap_puts_the_old_dataset_back(tmp_path, monkeypatch):
  target, new, trash = tmp_path / "name" / "1.0.0", tmp_path / "new", tmp_path / "trash"
  target.mkdir(parents=True)
  (target / "old.txt").write_text("old")
  new.mkdir()
  (new / "new.txt").write_text("new")
  real_rename, calls = os.rename, []

  def rename_failing_second(src, dst):
    calls.append(dst)
    if len(calls) == 2:  # old moved aside, new not yet in place
      raise OSError("simulated failure")
    real_rename(src, dst)

  monkeypatch.setattr(os, "rename", rename_failing_second)
  with pytest.raises(OSError, match="simulated failure"):
    builder._swap_in(str(new), str(target), str(trash))  # pylint: disable=protected-access
  monkeypatch.undo()
  assert os.listdir(target) == ["old.txt"] and not trash.exists()
  builder._swap_in(str(new), str(target), str(trash))  # pylint: disable=protected-access
  assert os.listdir(target) == ["new.txt"] and os.listdir(trash) == ["old.txt"]


# --- pixel range ------------------------------------------------------------------------


@pytest.mark.parametrize(
  "dtype, scale, pixel_max, stored",
  [
    (np.float32, 1.0, 255.0, np.float32),  # floats 0..255: not clipped to [0, 1]
    (np.float64, 1 / 255, 1.0, np.float32),  # floats in [0, 1]
    (np.int64, 1.0, 255.0, np.uint8),  # integers 0..255: stored exactly as uint8
  ],
)
def test_pixel_range_is_inferred_from_the_data(tmp_path, dtype, scale, pixel_max, stored):
  arrays = tiny_arrays()
  for split in ("train", "test"):
    arrays[f"x_{split}"] = (arrays[f"x_{split}"] * scale).astype(dtype)
  npz = write_npz(tmp_path / "range.npz", arrays)
  prepared = prepare.prepare_npz("px", str(tmp_path), npz)
  assert prepared.metadata["pixel_max"] == pixel_max
  data = load_dataset(data_config("px", tmp_path))
  assert data.info.pixel_max == pixel_max
  images, _ = all_records(data.train)
  assert images.dtype == stored
  np.testing.assert_allclose(images, arrays["x_train"].astype(stored), rtol=1e-6)
  # --mean/--std in [0, 1] units are scaled by the inferred range.
  prepared = prepare.prepare_npz(
    "px", str(tmp_path), npz, mean=[0.5] * 3, std=[0.25] * 3, stats_units="unit", overwrite=True
  )
  assert prepared.mean == (0.5 * pixel_max,) * 3 and prepared.std == (0.25 * pixel_max,) * 3


@pytest.mark.parametrize(
  "key, dtype, index, value, message",
  [
    ("x_train", np.float32, 5, np.inf, r"x_train\[5\] has NaN or Inf pixel values"),
    ("x_test", np.float16, 3, np.nan, r"x_test\[3\] has NaN or Inf pixel values"),
    (
      "x_train",
      np.float32,
      6,
      -0.5,
      r"x_train\[6\] has a negative pixel value \(-0\.5\).*undo any normalisation",
    ),
    (
      "x_train",
      np.float32,
      7,
      300.0,
      r"x_train\[7\] has a pixel value above 255 \(300\); .*floats in \[0, 1\]",
    ),
    ("x_test", np.int64, 8, 256, r"x_test\[8\] has a pixel value above 255 \(256\)"),
    ("x_train", np.int16, 9, -1, r"x_train\[9\] has a negative pixel value \(-1\)"),
  ],
)
def test_bad_pixel_values_are_refused_naming_file_and_index(
  tmp_path, key, dtype, index, value, message
):
  arrays = tiny_arrays()
  arrays[key] = arrays[key].astype(dtype)
  arrays[key][index, 4, 4, 1] = value
  npz = write_npz(tmp_path / "bad.npz", arrays)
  with pytest.raises(ValueError, match=at(npz, ": " + message)):
    prepare.prepare_npz("px_bad", str(tmp_path), npz)
  assert not (tmp_path / "px_bad").exists() and leftovers(tmp_path) == []


def test_splits_on_different_pixel_scales_are_refused(tmp_path):
  arrays = tiny_arrays()
  arrays["x_train"] = arrays["x_train"].astype(np.float32) / 255
  npz = write_npz(tmp_path / "scales.npz", arrays)  # x_test stays uint8 0..255
  with pytest.raises(
    ValueError, match=at(npz, r": x_train holds values in \[0, 1\] but x_test reaches 25\d")
  ):
    prepare.prepare_npz("px_scales", str(tmp_path), npz)


@pytest.mark.parametrize(
  "mean, std, message",
  [
    ([float("nan"), 0.5, 0.5], [0.2] * 3, r"mean \(--mean\) of channel 0 is nan; it must be"),
    ([0.5] * 3, [0.2, 0.0, 0.2], r"std \(--std\) of channel 1 is 0\.0; it must be .* > 0"),
    ([0.5] * 3, [0.2, 0.2, float("inf")], r"std \(--std\) of channel 2 is inf"),
    ([0.5] * 3, [0.2, -0.1, 0.2], r"std \(--std\) of channel 1 is -0\.1"),
    ([0.5] * 2, [0.2] * 2, r"need one value per channel \(3\)"),
  ],
)
def test_bad_mean_std_are_refused(tmp_path, mean, std, message):
  npz = write_npz(tmp_path / "tiny.npz", tiny_arrays())
  with pytest.raises(ValueError, match=message):
    prepare.prepare_npz("stats_bad", str(tmp_path), npz, mean=mean, std=std, stats_units="unit")
  assert not (tmp_path / "stats_bad").exists()


# --- one class, empty splits ---------------------------------------------------------------


def test_one_class_data_is_refused_unless_asked_for(tmp_path):
  arrays = tiny_arrays()
  arrays["y_train"] = np.zeros_like(arrays["y_train"])
  npz = write_npz(tmp_path / "one.npz", arrays)
  with pytest.raises(
    ValueError,
    match=at(npz, r" \(y_train\): the train split has only one class \(label 0 on all 40 ")
    + r"examples\).*--allow_one_class",
  ):
    prepare.prepare_npz("one_class", str(tmp_path), npz)
  prepared = prepare.prepare_npz("one_class", str(tmp_path), npz, allow_one_class=True)
  assert prepared.num_examples == {"train": 40, "test": 20}

  root = tmp_path / "images"
  write_folder(root, tiny_arrays(), class_names=["ant"] * 4)  # every image in train/ant
  with pytest.raises(ValueError, match=at(root / "train", ": the train split has only one")):
    prepare.prepare_image_folder("one_folder", str(tmp_path), str(root))

  train = write_lines(tmp_path / "train.jsonl", [record("a b", 1), record("c", 1)])
  test = write_lines(tmp_path / "test.jsonl", [record("d", 0)])
  with pytest.raises(
    ValueError, match=at(train, r": the train split has only one class \(label 1")
  ):
    prepare.prepare_jsonl("one_text", str(tmp_path), train, test)


def test_empty_splits_are_refused_naming_the_source(tmp_path):
  arrays = tiny_arrays()
  arrays["x_test"], arrays["y_test"] = arrays["x_test"][:0], arrays["y_test"][:0]
  npz = write_npz(tmp_path / "empty.npz", arrays)
  with pytest.raises(ValueError, match=at(npz, r" \(x_test, y_test\): the test split is empty")):
    prepare.prepare_npz("empty_npz", str(tmp_path), npz)

  root = tmp_path / "images"
  write_folder(root, tiny_arrays())
  for path in (root / "test").glob("*/*.png"):
    path.unlink()
  with pytest.raises(ValueError, match=at(root / "test", r": the test split is empty: no \.png")):
    prepare.prepare_image_folder("empty_folder", str(tmp_path), str(root))

  train = write_lines(tmp_path / "train.jsonl", [record("a", 0), record("b", 1)])
  test = write_lines(tmp_path / "test.jsonl", [b"", b"  "])
  with pytest.raises(ValueError, match=at(test, r": the test split is empty \(no records\)")):
    prepare.prepare_jsonl("empty_text", str(tmp_path), train, test)
  assert leftovers(tmp_path) == []


# --- text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "line, message",
  [
    (b'{"text": null, "label": 0}', r":2: field 'text' must be a string, got null"),
    (b'{"text": 12, "label": 0}', r":2: field 'text' must be a string, got int 12"),
    (b'{"text": ["a"], "label": 0}', r":2: field 'text' must be a string, got list \[\"a\"\]"),
    (b"5", r":2: expected a JSON object like .*got int 5"),
    (b'{"text": "caf\xe9", "label": 1}', r":2: not UTF-8 text \(byte 0xe9 at column 14\)"),
    (b'{"text": "\\ud800", "label": 1}', r":2: field 'text' is not valid Unicode"),
    (b'{"text": "a", "label": 1.0}', r":2: label 1\.0 must be a 0-based integer class id"),
  ],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_bad_jsonl_lines_are_refused_naming_file_and_line(tmp_path, line, message, suffix):
  path = write_lines(tmp_path / f"bad{suffix}", [record("fine", 0), line, record("x", 1)])
  with pytest.raises(ValueError, match=at(path, message)):
    prepare.read_jsonl(path)


def test_truncated_or_non_gzip_files_are_refused_naming_the_file(tmp_path):
  path = tmp_path / "cut.jsonl.gz"
  data = gzip.compress(b"".join(record(f"text {i}", i % 2) + b"\n" for i in range(500)))
  path.write_bytes(data[: len(data) // 2])
  cut = r": truncated or corrupt gzip data after line \d+"
  with pytest.raises(ValueError, match=at(path, cut)):
    prepare.read_jsonl(str(path))
  plain = tmp_path / "plain.jsonl.gz"
  plain.write_bytes(record("not compressed", 0) + b"\n")
  with pytest.raises(ValueError, match=at(plain, r": truncated or corrupt gzip data after line 0")):
    prepare.read_jsonl(str(plain))
  with pytest.raises(FileNotFoundError, match=at(tmp_path / "none.jsonl", ": no such file")):
    prepare.read_jsonl(str(tmp_path / "none.jsonl"))


def test_text_label_outside_num_classes_names_file_and_line(tmp_path):
  train = write_lines(tmp_path / "train.jsonl", [record("a", 0), record("b", 1)])
  test = write_lines(tmp_path / "test.jsonl", [record("c", 0), b"", record("d", 5)])
  with pytest.raises(ValueError, match=at(test, r":3: label 5 is outside \[0, 2\)")):
    prepare.prepare_jsonl("text_range", str(tmp_path), train, test, num_classes=2)


# --- unreadable files -----------------------------------------------------------------------


def test_unreadable_npz_files_get_one_line_errors(tmp_path):
  npy = tmp_path / "arrays.npz"
  with open(npy, "wb") as f:
    np.save(f, np.zeros((3, 4)))  # .npy content under an .npz name
  with pytest.raises(ValueError, match=at(npy, r" holds a single array of shape \(3, 4\) \(\.npy")):
    prepare.prepare_npz("npz_bad", str(tmp_path), str(npy))
  missing = tmp_path / "missing.npz"
  with pytest.raises(FileNotFoundError, match=at(missing, ": no such file")):
    prepare.prepare_npz("npz_bad", str(tmp_path), str(missing))
  text = tmp_path / "text.npz"
  text.write_text("x_train,y_train\n1,2\n")
  with pytest.raises(ValueError, match=at(text, r" is not a readable \.npz archive")):
    prepare.prepare_npz("npz_bad", str(tmp_path), str(text))
  objects = tmp_path / "objects.npz"
  np.savez(objects, **{**tiny_arrays(), "x_train": np.asarray([{"a": 1}], dtype=object)})
  with pytest.raises(ValueError, match=at(objects, ": cannot read array 'x_train'")):
    prepare.prepare_npz("npz_bad", str(tmp_path), str(objects))
  corrupt = tmp_path / "corrupt.npz"
  np.savez_compressed(corrupt, **tiny_arrays())
  data = bytearray(corrupt.read_bytes())
  data[200:260] = bytes(60)  # inside x_train's compressed bytes
  corrupt.write_bytes(bytes(data))
  with pytest.raises(ValueError, match=at(corrupt, ": cannot read array 'x_train'")):
    prepare.prepare_npz("npz_bad", str(tmp_path), str(corrupt))


def test_image_decode_errors_name_their_file(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  png = bytearray(png_bytes(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)))
  start = png.find(b"IDAT")
  end = start + 4 + int.from_bytes(png[start - 4 : start], "big")
  png[start + 10 : start + 30] = bytes(b ^ 0x55 for b in png[start + 10 : start + 30])
  png[end : end + 4] = zlib.crc32(bytes(png[start:end])).to_bytes(4, "big")  # CRC still valid
  corrupt = tmp_path / "corrupt.png"
  corrupt.write_bytes(bytes(png))
  with pytest.raises(ValueError, match=at(f"cannot read image {corrupt}: ")):
    prepare.read_image(str(corrupt), 3)
  jpeg = tmp_path / "cut.jpg"
  Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(jpeg, quality=90)
  jpeg.write_bytes(jpeg.read_bytes()[:300])
  with pytest.raises(ValueError, match=at(f"cannot read image {jpeg}: ")):
    prepare.read_image(str(jpeg), 3)

  def zlib_failure(*args, **kwargs):
    raise zlib.error("Error -3 while decompressing data: invalid distance too far back")

  good = tmp_path / "good.png"
  good.write_bytes(png_bytes(np.zeros((4, 4, 3), np.uint8)))
  monkeypatch.setattr(Image.Image, "convert", zlib_failure)
  with pytest.raises(ValueError, match=at(f"cannot read image {good}: Error -3")):
    prepare.read_image(str(good), 3)


# --- the command line: one-line errors, no tracebacks -----------------------------------------


def test_cli_errors_are_one_line_and_name_the_file(tmp_path):
  npz = write_npz(tmp_path / "tiny.npz", tiny_arrays())
  npy = tmp_path / "arrays.npz"
  with open(npy, "wb") as f:
    np.save(f, np.zeros((3, 4)))
  one = tiny_arrays()
  one["y_train"] = np.zeros_like(one["y_train"])
  one_npz = write_npz(tmp_path / "one.npz", one)
  five = write_lines(tmp_path / "five.jsonl", [record("a", 0), b"5"])
  floats = tiny_arrays()
  floats = {k: v.astype(np.float32) if k.startswith("x") else v for k, v in floats.items()}
  floats_npz = write_npz(tmp_path / "floats.npz", floats)
  data_dir = tmp_path / "tfds"
  cases = {
    "npy": [f"--npz={npy}"],
    "missing": [f"--npz={tmp_path / 'missing.npz'}"],
    "nan_mean": [f"--npz={npz}", "--mean=nan,0.5,0.5", "--std=0,1,1"],
    "word_mean": [f"--npz={npz}", "--mean=a,0.5,0.5", "--std=1,1,1"],
    "one_class": [f"--npz={one_npz}"],
    "one_class_allowed": [f"--npz={one_npz}", "--allow_one_class"],
    "bare_five": [f"--jsonl_train={five}", f"--jsonl_test={five}"],
    "floats_0_255": [f"--npz={floats_npz}", "--mean=0.5,0.5,0.5", "--std=0.25,0.25,0.25"],
  }
  out = run_prepare_data_cases(cases, data_dir)
  for case in ("npy", "missing", "nan_mean", "one_class", "bare_five"):
    code, err, _ = out[case]
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, case
  assert f"{npy} holds a single array of shape (3, 4) (.npy format)" in out["npy"][1]
  assert f"{tmp_path / 'missing.npz'}: no such file" in out["missing"][1]
  assert "mean (--mean) of channel 0 is nan" in out["nan_mean"][1]
  code, err, _ = out["word_mean"]
  assert code == "usage" and "--mean=a,0.5,0.5: could not convert" in err
  assert "the train split has only one class" in out["one_class"][1]
  code, _, printed = out["one_class_allowed"]
  assert code == 0 and "Prepared cli_one_class_allowed" in printed
  assert f"{five}:2: expected a JSON object" in out["bare_five"][1]
  code, _, printed = out["floats_0_255"]
  assert code == 0 and "pixel range [0, 255], mean (127.50, 127.50, 127.50)" in printed
  assert not (data_dir / "cli_nan_mean").exists() and leftovers(data_dir) == []


# --- class ids: the classes present, as for image folders ---------------------------------


def test_jsonl_labels_with_missing_ids_are_refused_unless_num_classes_is_given(tmp_path):
  """Label 99 with no 2..98 used to make 100 classes silently, where an image folder's classes
  are exactly its train class folders."""
  train = write_lines(
    tmp_path / "train.jsonl", [record("a", 0), record("b", 1), record("c", 99), record("d", 0)]
  )
  test = write_lines(tmp_path / "test.jsonl", [record("e", 1), record("f", 99)])
  with pytest.raises(
    ValueError,
    match=at(train, r":3: label 99 makes 100 classes, but 97 of the ids below it have no train ")
    + r"record \(2, 3, 4, 5, 6, \.\.\.\): labels must be the 0-based ids 0\.\.K-1 .*--num_classes",
  ):
    prepare.prepare_jsonl("gappy", str(tmp_path / "tfds"), train, test)
  prepared = prepare.prepare_jsonl("gappy", str(tmp_path / "tfds"), train, test, num_classes=100)
  assert prepared.num_classes == 100  # asked for: the classes exist without records

  one_file = write_lines(tmp_path / "all.jsonl", [record(str(i), i % 2 * 5) for i in range(20)])
  with pytest.raises(ValueError, match=at(one_file, r":\d+: label 5 makes 6 classes, but 4 of")):
    prepare.prepare_jsonl_split("gappy_split", str(tmp_path / "tfds"), one_file, test_fraction=0.5)


def test_a_jsonl_test_label_without_train_records_is_refused_like_an_image_folder(tmp_path):
  train = write_lines(tmp_path / "train.jsonl", [record("a", 0), record("b", 1)])
  test = write_lines(tmp_path / "test.jsonl", [record("c", 0), record("d", 2)])
  with pytest.raises(
    ValueError,
    match=at(test, r":2: label 2 has no record in the train split \(")
    + at(train, r"\), whose classes are \[0, 1\]; every test class must be in train"),
  ):
    prepare.prepare_jsonl("test_only", str(tmp_path / "tfds"), train, test)
  root = tmp_path / "images"
  write_folder(root, tiny_arrays())
  (root / "test" / "zebra").mkdir()
  with pytest.raises(ValueError, match=r"has class folder\(s\) \['zebra'\] that .*/train lacks"):
    prepare.prepare_image_folder("test_only_images", str(tmp_path / "tfds"), str(root))


def test_an_empty_train_class_folder_is_refused(tmp_path):
  root = tmp_path / "images"
  write_folder(root, tiny_arrays())
  (root / "train" / "zebra").mkdir()  # a class with no train image
  with pytest.raises(
    ValueError, match=at(root / "train", r": class folder\(s\) \['zebra'\] hold no \.png/")
  ):
    prepare.prepare_image_folder("empty_class", str(tmp_path / "tfds"), str(root))
