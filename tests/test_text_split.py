"""Tests of splitting one JSON Lines file into train/test (``launch.prepare_data --jsonl``).

Small files are generated here; the check on ``../shared/data`` skips when it is absent.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
from helpers import REPO, run_prepare_data_cases

from deinforeg_jax.data import prepare
from deinforeg_jax.data.prepare import stratified_split

SHARED_DBPEDIA = os.path.join(REPO, "..", "shared", "data", "dbpedia14_subset.jsonl.gz")


def write_jsonl(path, labels) -> str:
  """Record ``i``: text ``"text i"``, ``labels[i]`` and an ignored ``source_split``."""
  with gzip.open(path, "wt", encoding="utf-8") as f:
    for i, label in enumerate(labels):
      f.write(json.dumps({"text": f"text {i}", "label": label, "source_split": "val"}) + "\n")
  return str(path)


# 3 classes with 10, 7 and 5 records, interleaved.
LABELS = [0, 1, 2] * 5 + [0, 1] * 2 + [0] * 3


def test_split_is_stratified_seeded_and_in_file_order():
  train, test = stratified_split(LABELS, 0.3, seed=0)
  labels = np.asarray(LABELS)
  assert sorted([*train, *test]) == list(range(len(LABELS)))
  assert list(train) == sorted(train) and list(test) == sorted(test)
  # round(0.3 * n) per class, halves up: 10 -> 3, 7 -> 2 (2.1), 5 -> 2 (1.5).
  assert np.bincount(labels[test]).tolist() == [3, 2, 2]
  again, other = stratified_split(LABELS, 0.3, seed=0), stratified_split(LABELS, 0.3, seed=1)
  np.testing.assert_array_equal(again[1], test)
  assert not np.array_equal(other[1], test)
  assert np.bincount(labels[other[1]]).tolist() == [3, 2, 2]


@pytest.mark.parametrize(
  "labels, fraction, seed, message",
  [
    (LABELS, 0.0, 0, r"--test_fraction=0.0 must be in \(0, 1\)"),
    (LABELS, 1.0, 0, r"--test_fraction=1.0 must be in \(0, 1\)"),
    (LABELS, 0.3, -1, r"--split_seed=-1 must be a non-negative integer"),
    (LABELS, 0.04, 0, r"f: class 0 has 10 record\(s\); --test_fraction=0.04 .* the test split"),
    (LABELS, 0.95, 0, r"f: class 0 has 10 record\(s\); --test_fraction=0.95 .* the train split"),
    ([0, 0, 1], 0.5, 0, r"f: class 1 has 1 record\(s\); .* in the train split"),
  ],
)
def test_bad_split_requests_name_the_flag(labels, fraction, seed, message):
  with pytest.raises(ValueError, match=message):
    stratified_split(labels, fraction, seed, source="f")


def test_prepared_split_keeps_texts_and_records_the_split(tmp_path):
  path = write_jsonl(tmp_path / "all.jsonl.gz", LABELS)
  prepared = prepare.prepare_jsonl_split(
    "split_text", str(tmp_path / "tfds"), path, test_fraction=0.3, split_seed=0
  )
  assert prepared.num_examples == {"train": 15, "test": 7} and prepared.num_classes == 3
  assert prepared.metadata["test_fraction"] == 0.3 and prepared.metadata["split_seed"] == 0
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  _, test = stratified_split(LABELS, 0.3, seed=0)
  source = tfds.data_source("split_text", split="test", data_dir=str(tmp_path / "tfds"))
  records = [source[i] for i in range(len(source))]
  assert [r["text"].decode() for r in records] == [f"text {i}" for i in test]
  assert [int(r["label"]) for r in records] == [LABELS[i] for i in test]
  empty = write_jsonl(tmp_path / "empty.jsonl.gz", [])
  with pytest.raises(ValueError, match=r"empty.jsonl.gz: the file is empty"):
    prepare.prepare_jsonl_split("split_empty", str(tmp_path / "tfds"), empty, test_fraction=0.3)


def test_cli_splits_one_file_and_refuses_bad_flags(tmp_path):
  path = write_jsonl(tmp_path / "all.jsonl.gz", LABELS)
  data_dir = tmp_path / "tfds"
  cases = {
    "ok": [f"--jsonl={path}", "--test_fraction=0.3", "--split_seed=1"],
    "both": [f"--jsonl={path}", f"--jsonl_train={path}", f"--jsonl_test={path}"],
    "fraction_alone": [f"--jsonl_train={path}", f"--jsonl_test={path}", "--test_fraction=0.5"],
    "fraction": [f"--jsonl={path}", "--test_fraction=1.5"],
    "too_small": [f"--jsonl={path}", "--test_fraction=0.01"],
  }
  out = run_prepare_data_cases(cases, data_dir)
  code, _, printed = out["ok"]
  assert code == 0
  assert "15 train, 7 test texts, 3 classes" in printed
  assert f"(split of {path} by label: test fraction 0.3, seed 1)" in printed
  assert out["both"][0] == "usage" and "give --jsonl (one file" in out["both"][1]
  assert out["fraction_alone"][0] == "usage" and "apply to --jsonl" in out["fraction_alone"][1]
  for case, message in [
    ("fraction", "--test_fraction=1.5 must be in (0, 1)"),
    ("too_small", "class 0 has 10 record(s); --test_fraction=0.01 leaves none"),
  ]:
    code, err, _ = out[case]
    assert code == 1 and err.startswith("error: ") and message in err, case
    assert not (data_dir / f"cli_{case}").exists()


def test_shared_dbpedia_subset_splits_8000_2000():
  if not os.path.exists(SHARED_DBPEDIA):
    pytest.skip("../shared/data is absent")
  _, labels = prepare.read_jsonl(SHARED_DBPEDIA)
  train, test = stratified_split(labels, 0.2, seed=0)
  assert (len(train), len(test)) == (8000, 2000)
  assert np.bincount(np.asarray(labels)[test]).min() >= 133  # 664 * 0.2 = 132.8
