"""Tests of ``deinforeg_jax.data.label_noise`` and its use by ``load_dataset``."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import data_config
from deinforeg_jax.data import ArraySplit, DatasetInfo, train_batches
from deinforeg_jax.data.label_noise import (
  CIFAR10_CLASSES,
  RelabeledSource,
  apply_label_noise,
  asymmetric_mapping,
)
from deinforeg_jax.data.registry import load_dataset

N = 20000


def uniform_labels(num_classes: int = 10, n: int = N) -> np.ndarray:
  return np.random.default_rng(123).integers(0, num_classes, n)


@pytest.mark.parametrize("kind", ["none", "symmetric", "asymmetric"])
def test_rate_zero_changes_nothing(kind):
  labels = uniform_labels()
  noisy, summary = apply_label_noise(labels, 10, kind=kind, rate=0, seed=0)
  np.testing.assert_array_equal(noisy, labels)
  assert summary == {"kind": kind, "rate": 0, "seed": 0, "num_changed": 0, "changed_fraction": 0.0}


@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_symmetric_rate_100_changes_about_c_minus_1_over_c(num_classes):
  labels = uniform_labels(num_classes)
  noisy, summary = apply_label_noise(labels, num_classes, kind="symmetric", rate=100, seed=1)
  expected = (num_classes - 1) / num_classes
  assert abs(summary["changed_fraction"] - expected) < 0.015
  assert noisy.min() >= 0 and noisy.max() < num_classes
  # New labels are uniform over all classes, whatever the old label was.
  counts = np.bincount(noisy, minlength=num_classes) / N
  assert np.all(np.abs(counts - 1 / num_classes) < 0.25 / num_classes + 0.005)


@pytest.mark.parametrize("rate", [20, 45])
def test_symmetric_selects_rate_percent(rate):
  labels = uniform_labels()
  _, summary = apply_label_noise(labels, 10, kind="symmetric", rate=rate, seed=2)
  assert abs(summary["changed_fraction"] - rate / 100 * 0.9) < 0.012


def test_seeded_and_deterministic_and_input_untouched():
  labels = uniform_labels()
  before = labels.copy()
  a, summary_a = apply_label_noise(labels, 10, kind="symmetric", rate=40, seed=7)
  b, summary_b = apply_label_noise(labels, 10, kind="symmetric", rate=40, seed=7)
  c, _ = apply_label_noise(labels, 10, kind="symmetric", rate=40, seed=8)
  np.testing.assert_array_equal(a, b)
  assert summary_a == summary_b
  assert np.mean(a != c) > 0.2
  np.testing.assert_array_equal(labels, before)
  assert a.dtype == labels.dtype


def test_changed_fraction_counts_labels_that_differ():
  labels = uniform_labels(n=997)
  for kind in ("symmetric", "asymmetric"):
    noisy, summary = apply_label_noise(labels, 10, kind=kind, rate=37, seed=4)
    assert summary["num_changed"] == int(np.sum(noisy != labels))
    assert summary["changed_fraction"] == summary["num_changed"] / 997


def test_cifar10_asymmetric_pairs():
  mapping = asymmetric_mapping(10, CIFAR10_CLASSES)
  name = dict(enumerate(CIFAR10_CLASSES))
  pairs = {name[c]: name[int(m)] for c, m in enumerate(mapping) if m != c}
  assert pairs == {
    "truck": "automobile",
    "bird": "airplane",
    "deer": "horse",
    "cat": "dog",
    "dog": "cat",
  }
  labels = uniform_labels()
  noisy, summary = apply_label_noise(
    labels, 10, kind="asymmetric", rate=100, seed=0, class_names=CIFAR10_CLASSES
  )
  np.testing.assert_array_equal(noisy, mapping[labels])
  assert abs(summary["changed_fraction"] - 0.5) < 0.015  # 5 of 10 classes move


def test_other_datasets_asymmetric_is_next_class():
  np.testing.assert_array_equal(asymmetric_mapping(4), [1, 2, 3, 0])
  np.testing.assert_array_equal(
    asymmetric_mapping(10, [str(i) for i in range(10)]), (np.arange(10) + 1) % 10
  )
  labels = uniform_labels(4)
  noisy, summary = apply_label_noise(labels, 4, kind="asymmetric", rate=100, seed=0)
  np.testing.assert_array_equal(noisy, (labels + 1) % 4)
  assert summary["changed_fraction"] == 1.0
  noisy, summary = apply_label_noise(labels, 4, kind="asymmetric", rate=30, seed=0)
  changed = noisy != labels
  np.testing.assert_array_equal(noisy[changed], (labels[changed] + 1) % 4)
  assert abs(summary["changed_fraction"] - 0.3) < 0.015


@pytest.mark.parametrize("rate", [0.2, -5, 101, 12.5])
def test_rate_must_be_a_whole_percentage(rate):
  with pytest.raises(ValueError, match="whole percentage"):
    apply_label_noise(uniform_labels(), 10, kind="symmetric", rate=rate, seed=0)


def test_unknown_kind_rejected():
  with pytest.raises(ValueError, match="must be one of"):
    apply_label_noise(uniform_labels(), 10, kind="pairflip", rate=10, seed=0)


# --- sources and load_dataset --------------------------------------------------------------


class _Records:
  """A minimal record source: record i has every pixel == i and label i % 10."""

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full((2, 2, 1), float(i), np.float32), "label": i % 10}


def test_relabeled_source_feeds_noisy_labels_to_batches():
  source = _Records(48)
  clean = np.arange(48) % 10
  noisy, _ = apply_label_noise(clean, 10, kind="symmetric", rate=100, seed=0)
  relabeled = RelabeledSource(source, noisy)
  assert relabeled[5]["label"] == noisy[5] and relabeled[5]["image"][0, 0, 0] == 5.0
  assert [r["label"] for r in relabeled.__getitems__([1, 2])] == noisy[[1, 2]].tolist()
  info = DatasetInfo("ids", (2, 2, 1), 10, 48, 0, mean=(0.0,), std=(1.0,))
  for batch in train_batches(relabeled, info, global_batch_size=8, seed=1, epoch=0):
    ids = batch["image"][:, 0, 0, 0].astype(int)
    np.testing.assert_array_equal(batch["label"], noisy[ids])
  with pytest.raises(ValueError, match="3 labels for a source of 48"):
    RelabeledSource(source, noisy[:3])


def test_load_dataset_noise_on_digits_train_only():
  clean = load_dataset(data_config())
  assert clean.label_noise is None
  noise = {"kind": "symmetric", "rate": 50, "seed": 0}
  data = load_dataset(data_config(label_noise=noise))
  assert isinstance(data.train, ArraySplit)
  np.testing.assert_array_equal(data.train.images, clean.train.images)
  changed = np.mean(data.train.labels != clean.train.labels)
  assert data.label_noise["changed_fraction"] == changed
  assert 0.35 < changed < 0.55
  np.testing.assert_array_equal(data.test.labels, clean.test.labels)
