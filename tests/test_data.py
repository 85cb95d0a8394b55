"""Tests of ``deinforeg_jax.data``: the digits dataset and the grain batching path.

Loader tests use a synthetic split whose pixel value is the example's id (mean 0, std 1,
so normalisation is the identity), which makes order, coverage and sharding checkable.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import sklearn.datasets

from deinforeg_jax.data import (
  ArraySplit,
  DatasetInfo,
  eval_batches,
  load_digits,
  steps_per_epoch,
  train_batches,
  validate_labels,
)

N = 50  # synthetic examples
GLOBAL_BATCH = 8
STEPS = N // GLOBAL_BATCH  # 6 full batches, 2 examples dropped per epoch


def id_split(n: int = N) -> tuple[ArraySplit, DatasetInfo]:
  """Split whose example i has every pixel == i and label i % 10."""
  images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 2, 1))
  info = DatasetInfo("ids", (2, 2, 1), 10, n, 0, mean=(0.0,), std=(1.0,))
  return ArraySplit(images.copy(), np.arange(n) % 10), info


def ids(batch: dict[str, np.ndarray]) -> np.ndarray:
  return batch["image"][:, 0, 0, 0].astype(int)


def train_ids(**kwargs) -> list[np.ndarray]:
  split, info = id_split()
  args = dict(global_batch_size=GLOBAL_BATCH, seed=3, epoch=0) | kwargs
  return [ids(b) for b in train_batches(split, info, **args)]


def noise_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  return image + rng.uniform(0.0, 0.5, size=image.shape)


# --- load_digits -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
  return load_digits(seed=0)


def test_digits_shapes_values_and_info(digits):
  train, test, info = digits
  assert (info.name, info.input_shape, info.num_classes) == ("digits", (8, 8, 1), 10)
  assert (info.num_train, info.num_test) == (1437, 360)  # test size = ceil(0.2 * 1797)
  for split, n in ((train, 1437), (test, 360)):
    assert split.images.shape == (n, 8, 8, 1) and split.images.dtype == np.float32
    assert split.labels.shape == (n,)
    assert split.images.min() == 0.0 and split.images.max() == 1.0
    assert set(np.unique(split.labels)) == set(range(10))
  np.testing.assert_allclose(info.mean, [train.images.mean()], rtol=1e-6)
  np.testing.assert_allclose(info.std, [train.images.std()], rtol=1e-6)


def test_digits_split_is_a_stratified_partition(digits):
  train, test, _ = digits
  raw = sklearn.datasets.load_digits()

  # The two splits together are exactly the dataset (as a multiset of
  # (image, label) rows): nothing is lost, duplicated or shared between them.
  def rows(images, labels):
    return collections.Counter(
      (np.round(x * 16).astype(np.int64).tobytes(), int(y)) for x, y in zip(images, labels)
    )

  assert rows(train.images, train.labels) + rows(test.images, test.labels) == rows(
    raw.images[..., None] / 16.0, raw.target
  )
  # Stratified: every class is split 80/20 to within one example.
  per_class = np.bincount(raw.target, minlength=10)
  test_counts = np.bincount(test.labels, minlength=10)
  assert np.all(np.abs(test_counts - 0.2 * per_class) <= 1)


def test_digits_split_is_deterministic_in_seed(digits):
  train, test, info = digits
  train2, test2, info2 = load_digits(seed=0)
  np.testing.assert_array_equal(train.images, train2.images)
  np.testing.assert_array_equal(test.labels, test2.labels)
  assert info == info2
  other, _, _ = load_digits(seed=1)
  assert not np.array_equal(train.labels, other.labels)


def test_digits_train_images_are_normalised_by_loader(digits):
  train, _, info = digits
  images = np.concatenate(
    [b["image"] for b in train_batches(train, info, global_batch_size=64, seed=0, epoch=0)]
  )
  assert images.shape == (steps_per_epoch(1437, 64) * 64, 8, 8, 1)
  assert images.dtype == np.float32
  assert abs(images.mean()) < 0.01 and abs(images.std() - 1.0) < 0.01


# --- train_batches -----------------------------------------------------------------------


def test_train_batch_format():
  split, info = id_split()
  batches = list(train_batches(split, info, global_batch_size=GLOBAL_BATCH, seed=0, epoch=0))
  assert len(batches) == STEPS
  for b in batches:
    assert set(b) == {"image", "label"}
    assert b["image"].shape == (GLOBAL_BATCH, 2, 2, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32
    np.testing.assert_array_equal(b["label"], ids(b) % 10)


def test_train_normalisation_uses_info_mean_std():
  split, info = id_split()
  scaled = DatasetInfo("ids", (2, 2, 1), 10, N, 0, mean=(10.0,), std=(4.0,))
  plain = next(train_batches(split, info, global_batch_size=GLOBAL_BATCH, seed=0, epoch=0))
  norm = next(train_batches(split, scaled, global_batch_size=GLOBAL_BATCH, seed=0, epoch=0))
  np.testing.assert_allclose(norm["image"], (plain["image"] - 10.0) / 4.0, rtol=1e-6)


def test_train_order_is_deterministic_per_seed_and_epoch():
  first = train_ids(epoch=0)
  np.testing.assert_array_equal(first, train_ids(epoch=0))
  np.testing.assert_array_equal(first, train_ids(epoch=0, prefetch=0))
  assert not np.array_equal(first, train_ids(epoch=1))
  assert not np.array_equal(first, train_ids(seed=4))
  # (seed, epoch) is hashed, not added: seed 3 epoch 1 is not seed 4 epoch 0.
  assert not np.array_equal(train_ids(epoch=1), train_ids(seed=4, epoch=0))
  assert not np.array_equal(np.concatenate(first), np.arange(STEPS * GLOBAL_BATCH))


@pytest.mark.parametrize("epoch", [0, 1, 7])
def test_train_epoch_visits_each_example_at_most_once(epoch):
  seen = np.concatenate(train_ids(epoch=epoch))
  assert seen.shape == (STEPS * GLOBAL_BATCH,)
  assert len(np.unique(seen)) == seen.size
  assert seen.min() >= 0 and seen.max() < N


@pytest.mark.parametrize("start_step", [1, 4, STEPS])
def test_train_start_step_resumes_exactly(start_step):
  full = train_ids()
  resumed = train_ids(start_step=start_step)
  assert len(resumed) == STEPS - start_step
  for got, want in zip(resumed, full[start_step:]):
    np.testing.assert_array_equal(got, want)


def test_train_start_step_does_not_read_skipped_examples():
  split, info = id_split()
  reads = []

  class CountingSource:
    def __len__(self):
      return N

    def __getitem__(self, i):
      reads.append(i)
      return split.images[i], split.labels[i]

  batches = list(
    train_batches(
      CountingSource(),
      info,
      global_batch_size=GLOBAL_BATCH,
      seed=3,
      epoch=0,
      start_step=STEPS - 1,
      prefetch=0,
    )
  )
  assert len(batches) == 1
  assert sorted(reads) == sorted(ids(batches[0]).tolist())


def test_train_process_shards_concatenate_to_global_batch():
  full = train_ids()
  shards = [train_ids(process_index=p, process_count=2) for p in range(2)]
  assert all(len(s) == STEPS and s[0].shape == (GLOBAL_BATCH // 2,) for s in shards)
  for step in range(STEPS):
    np.testing.assert_array_equal(np.concatenate([shards[0][step], shards[1][step]]), full[step])


def test_train_augment_is_reproducible_and_position_seeded():
  split, info = id_split()

  def run(**kwargs):
    args = dict(global_batch_size=GLOBAL_BATCH, seed=3, epoch=2, augment=noise_augment)
    return [b["image"] for b in train_batches(split, info, **(args | kwargs))]

  full = run()
  np.testing.assert_array_equal(np.stack(full), np.stack(run()))
  noise = np.stack(full) - np.floor(np.stack(full))  # id is the integer part
  assert noise.min() > 0.0 and noise.max() < 0.5
  per_example = noise.reshape(STEPS * GLOBAL_BATCH, -1)
  assert len(np.unique(per_example, axis=0)) == STEPS * GLOBAL_BATCH  # own rng per example
  assert not np.array_equal(np.stack(full), np.stack(run(epoch=3)))
  # Resume and sharding see the same augmentation as the full single-process pass.
  np.testing.assert_array_equal(np.stack(run(start_step=2)), np.stack(full[2:]))
  shards = [run(process_index=p, process_count=2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([shards[0][1], shards[1][1]]), full[1])


def test_train_accepts_tuple_and_dict_sources():
  split, info = id_split()
  want = train_ids()
  records = {
    "tuples": [(x, y) for x, y in zip(split.images, split.labels)],
    "dicts": [
      {"image": x.astype(np.uint8), "label": y, "id": i}
      for i, (x, y) in enumerate(zip(split.images, split.labels))
    ],
  }
  for source in records.values():
    got = [
      ids(b) for b in train_batches(source, info, global_batch_size=GLOBAL_BATCH, seed=3, epoch=0)
    ]
    np.testing.assert_array_equal(got, want)


def test_train_rejects_bad_arguments():
  split, info = id_split()
  with pytest.raises(ValueError, match="multiple of process_count=3"):
    train_batches(split, info, global_batch_size=8, seed=0, epoch=0, process_count=3)
  with pytest.raises(ValueError, match=r"start_step=7 not in \[0, 6\]"):
    train_batches(split, info, global_batch_size=8, seed=0, epoch=0, start_step=7)
  bad = ArraySplit(split.images, np.where(np.arange(N) == 5, 10, split.labels))
  with pytest.raises(ValueError, match=r"train labels .*\[10\] at index\(es\) \[5\]"):
    train_batches(bad, info, global_batch_size=8, seed=0, epoch=0)


# --- eval_batches ------------------------------------------------------------------------


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once_with_mask(process_count):
  split, info = id_split()
  global_batch = 16  # 50 examples -> 4 global batches, 14 padding rows
  per_process = [
    list(
      eval_batches(
        split, info, global_batch_size=global_batch, process_index=p, process_count=process_count
      )
    )
    for p in range(process_count)
  ]
  rows = []
  for step in range(4):
    batch = {
      k: np.concatenate([s[step][k] for s in per_process]) for k in ("image", "label", "mask")
    }
    assert batch["mask"].dtype == np.float32 and batch["mask"].shape == (global_batch,)
    rows.append(batch)
  assert all(len(s) == 4 for s in per_process)
  mask = np.concatenate([b["mask"] for b in rows])
  image_ids = np.concatenate([ids(b) for b in rows])
  labels = np.concatenate([b["label"] for b in rows])
  assert mask.sum() == N
  np.testing.assert_array_equal(mask, np.arange(64) < N)  # fixed order, padding last
  np.testing.assert_array_equal(image_ids[:N], np.arange(N))
  np.testing.assert_array_equal(labels[:N], np.arange(N) % 10)
  assert np.all(image_ids[N:] == 0) and np.all(labels[N:] == 0)


def test_eval_padding_rows_are_zero_after_normalisation():
  split, _ = id_split()
  info = DatasetInfo("ids", (2, 2, 1), 10, N, 0, mean=(3.0,), std=(2.0,))
  last = list(eval_batches(split, info, global_batch_size=16))[-1]
  np.testing.assert_array_equal(last["mask"], np.arange(16) < 2)
  np.testing.assert_allclose(last["image"][:2, 0, 0, 0], (np.array([48.0, 49.0]) - 3.0) / 2.0)
  assert np.all(last["image"][2:] == 0.0)


def test_eval_exact_multiple_has_no_padding():
  split, info = id_split(48)
  batches = list(eval_batches(split, info, global_batch_size=16))
  assert len(batches) == 3 and all(b["mask"].sum() == 16 for b in batches)


# --- validation helpers -------------------------------------------------------------------


def test_validate_labels_accepts_valid_and_reports_bad_values():
  validate_labels(np.arange(10), 10, split_name="train")
  with pytest.raises(ValueError) as err:
    validate_labels(np.array([0, 3, 10, 2, -1]), 10, split_name="test")
  msg = str(err.value)
  for part in ("test", "[10, -1]", "[2, 4]", "[0, 10)", "num_classes"):
    assert part in msg, (part, msg)
  with pytest.raises(ValueError, match="integer class ids"):
    validate_labels(np.array([0.0, 1.0]), 10, split_name="train")


def test_steps_per_epoch():
  assert steps_per_epoch(50, 8) == 6
  assert steps_per_epoch(48, 8) == 6
  assert steps_per_epoch(1437, 1437) == 1
  with pytest.raises(ValueError, match="exceeds the 5 examples"):
    steps_per_epoch(5, 8)
  with pytest.raises(ValueError, match="must be positive"):
    steps_per_epoch(5, 0)
