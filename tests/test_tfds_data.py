"""Tests of reading prepared TFDS datasets (``tfds_source``, ``registry.load_dataset``).

Nothing here touches the network: not-prepared datasets must fail at once, and the
``download=True`` opt-in is exercised with builders defined here whose generators need
no download (its connection probe pointed at a local socket, or a closed local port).
Their images use ``tfds.features.Image`` (PNG bytes), like TFDS's catalogue image
datasets.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from deinforeg_jax.configuration import validate_config
from helpers import data_config, png_bytes, run_launcher, tiny_config
from deinforeg_jax.data import eval_batches, make_augment, prepare, train_batches
from deinforeg_jax.data.label_noise import CIFAR10_CLASSES
from deinforeg_jax.data.registry import LoadedData, load_dataset
from deinforeg_jax.data import tfds_source
from deinforeg_jax.data.tfds_source import (
  DatasetNotPreparedError,
  DownloadUnavailableError,
  load_tfds,
)

TOY_SHAPE = (6, 5, 3)


def toy_examples(n: int, seed: int):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, *TOY_SHAPE), dtype=np.uint8)
  return images, np.arange(n) % 3


class DeinforegTestToyImages(tfds.core.GeneratorBasedBuilder):
  """A registered catalogue-style builder: PNG ``Image`` features, train + validation."""

  VERSION = tfds.core.Version("2.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=TOY_SHAPE),
          "label": tfds.features.ClassLabel(names=["x", "y", "z"]),
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {"train": self._generate_examples(12, 0), "validation": self._generate_examples(7, 1)}

  def _generate_examples(self, n, seed):
    images, labels = toy_examples(n, seed)
    for i in range(n):
      yield i, {"image": png_bytes(images[i]), "label": int(labels[i])}


class DeinforegTestToyNoLabel(DeinforegTestToyImages):
  """Like the toy builder, but one test example has TFDS's "no label" value -1."""

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(12, 0), "test": self._unlabeled()}

  def _unlabeled(self):
    for i, (key, example) in enumerate(self._generate_examples(4, 1)):
      yield key, {**example, "label": -1 if i == 2 else example["label"]}


class DeinforegTestToyNeedsTf(DeinforegTestToyImages):
  """Like TFDS's CIFAR/MNIST builders, whose generators read files with ``tf.io.gfile``."""

  def _split_generators(self, dl_manager):
    raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")


def _fake_cifar10(data_dir: str) -> np.ndarray:
  """Writes a 4 + 2 image dataset that TFDS's own ``cifar10`` builder reads as prepared."""

  class FakeCifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "cifar10"
    VERSION = tfds.builder_cls("cifar10").VERSION

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "id": tfds.features.Text(),
            "image": tfds.features.Image(shape=(32, 32, 3)),
            "label": tfds.features.ClassLabel(names=list(CIFAR10_CLASSES)),
          }
        ),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(0, 4), "test": self._generate_examples(4, 6)}

    def _generate_examples(self, start, stop):
      for i in range(start, stop):
        yield i, {"id": f"img_{i}", "image": png_bytes(images[i]), "label": i}

  images = np.random.default_rng(5).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  tfds.disable_progress_bar()
  FakeCifar10(data_dir=data_dir).download_and_prepare(file_format="array_record")
  return images


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
  """A launch.prepare_data dataset: 40 train / 20 test 8x8x3 images, labels i % 4."""
  root = tmp_path_factory.mktemp("tfds")
  rng = np.random.default_rng(0)
  arrays = dict(
    x_train=rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8),
    y_train=np.arange(40) % 4,
    x_test=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8),
    y_test=np.arange(20) % 4,
  )
  np.savez(root / "tiny.npz", **arrays)
  prepare.prepare_npz("tiny_tfds", str(root), str(root / "tiny.npz"))
  return str(root), arrays


@pytest.fixture
def network_up(monkeypatch):
  """The download probe pointed at a listening local socket: "the network is up"."""
  server = socket.create_server(("127.0.0.1", 0))
  for variable in ("DEINFOREG_DOWNLOAD_PROBE", "HTTPS_PROXY", "https_proxy"):
    monkeypatch.delenv(variable, raising=False)
  monkeypatch.setattr(tfds_source, "DOWNLOAD_PROBE", server.getsockname()[:2])
  yield
  server.close()


def closed_port() -> tuple[str, int]:
  """A local address nothing listens on: connecting is refused at once."""
  with socket.create_server(("127.0.0.1", 0)) as probe:
    return probe.getsockname()[:2]


# --- not prepared / download opt-in ------------------------------------------------------


@pytest.mark.parametrize("name", ["cifar10", "mnist"])
def test_a_catalogue_dataset_not_prepared_fails_fast_with_instructions(tmp_path, name):
  start = time.perf_counter()
  with pytest.raises(DatasetNotPreparedError) as error:
    load_dataset(data_config(name, tmp_path, download=False))
  assert time.perf_counter() - start < 5.0  # no network wait
  message = str(error.value)
  assert f"{name!r} is not prepared" in message and str(tmp_path) in message
  local = f"{name}_local"  # catalogue names belong to TFDS's builders
  assert f"python -m launch.prepare_data --name={local} --data_dir={tmp_path}" in message
  assert "--npz=" in message and "--image_folder=" in message
  assert "--config.data.download=True" in message


@pytest.mark.parametrize("download", [False, True])
def test_an_unknown_dataset_is_one_line_without_the_tfds_catalogue(tmp_path, download):
  """TFDS's own error lists its whole catalogue (~300 lines): it is neither shown nor chained."""
  start = time.perf_counter()
  with pytest.raises((DatasetNotPreparedError, ValueError)) as error:
    load_dataset(data_config("cifar01", tmp_path, download=download))
  assert time.perf_counter() - start < 5.0
  assert error.value.__cause__ is None and error.value.__suppress_context__
  assert str(error.value) == (
    f"Dataset 'cifar01' is not prepared in data_dir='{tmp_path}' (no dataset files under "
    f"{tmp_path}/cifar01) and is not a TFDS catalogue name"
    + (" (download=True cannot fetch it)" if download else "")
    + f"; prepare it with `python -m launch.prepare_data --name=cifar01 --data_dir={tmp_path}` "
    "and one of --npz=FILE.npz, --image_folder=DIR, --jsonl=FILE.jsonl, or set "
    "config.data.data_dir to where it is prepared (did you mean 'cifar10'?)."
  )


def test_the_launcher_prints_an_unknown_dataset_in_one_line(tmp_path):
  proc = run_launcher(
    "launch.train", f"--workdir={tmp_path / 'run'}", "--config.data.name=deinforeg_never_prepared",
    f"--config.data.data_dir={tmp_path}",
  )
  assert proc.returncode == 1
  assert proc.stderr.strip().startswith(
    "error: Dataset 'deinforeg_never_prepared' is not prepared in data_dir="
  )
  assert len(proc.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "run" / "run.lock")


def test_download_opt_in_prepares_then_reads(tmp_path, network_up):
  with pytest.raises(DatasetNotPreparedError):
    load_dataset(data_config("deinforeg_test_toy_images", tmp_path, download=False))
  data = load_dataset(data_config("deinforeg_test_toy_images", tmp_path, download=True))
  assert isinstance(data, LoadedData)
  info = data.info
  assert (info.input_shape, info.num_classes, info.num_train, info.num_test) == (
    TOY_SHAPE,
    3,
    12,
    7,
  )  # the test split falls back to "validation"
  assert info.class_names == ("x", "y", "z")
  train_images, train_labels = toy_examples(12, 0)
  for i in range(12):  # PNG-decoded without TensorFlow (and without Pillow/OpenCV here)
    np.testing.assert_array_equal(data.train[i]["image"], train_images[i])
    assert data.train[i]["label"] == train_labels[i]
  np.testing.assert_array_equal(data.test.labels(), toy_examples(7, 1)[1])
  # No stored statistics: computed from the train images.
  flat = train_images.reshape(-1, 3).astype(np.float64)
  np.testing.assert_allclose(info.mean, flat.mean(0), rtol=1e-9)
  np.testing.assert_allclose(info.std, flat.std(0), rtol=1e-9)
  # Already prepared: download=True is a no-op, download=False now works too.
  again = load_dataset(data_config("deinforeg_test_toy_images", tmp_path, download=False))
  assert again.info == info


def test_download_of_a_builder_that_needs_tensorflow_says_so(tmp_path, network_up):
  with pytest.raises(RuntimeError, match="needs TensorFlow to generate.*tfds build"):
    load_dataset(data_config("deinforeg_test_toy_needs_tf", tmp_path, download=True))


def test_download_without_network_fails_fast_naming_the_offline_way(tmp_path, monkeypatch):
  for variable in ("DEINFOREG_DOWNLOAD_PROBE", "HTTPS_PROXY", "https_proxy"):
    monkeypatch.delenv(variable, raising=False)
  monkeypatch.setattr(tfds_source, "DOWNLOAD_PROBE", closed_port())
  start = time.perf_counter()
  with pytest.raises(DownloadUnavailableError) as error:
    load_dataset(data_config("deinforeg_test_toy_images", tmp_path, download=True))
  assert time.perf_counter() - start < 5.0
  message = str(error.value)
  assert message.startswith("config.data.download=True, but 127.0.0.1:")
  assert "cannot be reached (ConnectionRefusedError" in message
  assert "launch.prepare_data" in message and "config.data.download=False" in message
  local = "--name=deinforeg_test_toy_images_local"
  assert f"python -m launch.prepare_data {local} --data_dir={tmp_path}" in message
  assert not (tmp_path / "deinforeg_test_toy_images" / "2.0.0" / "dataset_info.json").exists()
  # DEINFOREG_DOWNLOAD_PROBE=off skips the probe (this builder needs no network) ...
  monkeypatch.setattr(tfds_source, "probe_network", lambda *a: pytest.fail("probed"))
  monkeypatch.setenv("DEINFOREG_DOWNLOAD_PROBE", "off")
  data = load_dataset(data_config("deinforeg_test_toy_images", tmp_path, download=True))
  assert data.info.num_train == 12
  # ... and a prepared dataset is read with download=True without probing.
  monkeypatch.delenv("DEINFOREG_DOWNLOAD_PROBE")
  again = load_dataset(data_config("deinforeg_test_toy_images", tmp_path, download=True))
  assert again.info == data.info


def test_download_probe_bounds_slow_name_resolution(monkeypatch):
  release = threading.Event()

  def hanging_connection(address, timeout=None):
    release.wait(10)  # a resolver that does not answer, whatever the socket timeout
    raise OSError("too late")

  monkeypatch.setattr(socket, "create_connection", hanging_connection)
  start = time.perf_counter()
  assert tfds_source.probe_network(("example.invalid", 443), 0.2) == "no answer within 0.2 s"
  assert time.perf_counter() - start < 2.0
  release.set()
  # Behind a proxy, the proxy is what must answer.
  monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
  assert tfds_source._probe_address() == ("proxy.example", 3128)  # pylint: disable=protected-access
  monkeypatch.setenv("DEINFOREG_DOWNLOAD_PROBE", "localhost:80x")
  with pytest.raises(ValueError, match="PROBE='localhost:80x' must be host:port or 'off'"):
    tfds_source.check_download_possible("x", "/tmp")


def test_catalogue_cifar10_reads_spec_stats_and_png_images(tmp_path):
  images = _fake_cifar10(str(tmp_path))
  train, test, info = load_tfds("cifar10", str(tmp_path))
  assert (info.input_shape, info.num_classes, info.num_train, info.num_test) == (
    (32, 32, 3),
    10,
    4,
    2,
  )
  assert info.class_names == CIFAR10_CLASSES
  np.testing.assert_allclose(info.mean, np.asarray([0.4914, 0.4822, 0.4465]) * 255)
  np.testing.assert_allclose(info.std, np.asarray([0.2023, 0.1994, 0.2010]) * 255)
  np.testing.assert_array_equal(test[1]["image"], images[5])
  assert sorted(train[i]["label"] for i in range(4)) == [0, 1, 2, 3]
  assert set(train[0]) == {"image", "label"}  # the "id" feature is dropped


def test_labels_out_of_range_rejected_at_load(tmp_path, network_up):
  with pytest.raises(ValueError, match=r"test labels out of range.*value\(s\) \[-1\] at index"):
    load_dataset(data_config("deinforeg_test_toy_no_label", tmp_path, download=True))


# --- sources, noise and batching ---------------------------------------------------------


def test_labels_are_read_once_and_match_records(tiny_dataset):
  data_dir, arrays = tiny_dataset
  train, test, _ = load_tfds("tiny_tfds", data_dir)
  np.testing.assert_array_equal(train.labels(), arrays["y_train"])
  np.testing.assert_array_equal(test.labels(), arrays["y_test"])
  assert train.labels() is train.labels()  # cached
  records = train.__getitems__([3, 0, 7])
  assert [r["label"] for r in records] == [3, 0, 3]
  np.testing.assert_array_equal(records[1]["image"], arrays["x_train"][0])


def test_label_noise_relabels_train_source_only(tiny_dataset):
  data_dir, arrays = tiny_dataset
  noise = {"kind": "symmetric", "rate": 100, "seed": 3}
  data = load_dataset(data_config("tiny_tfds", data_dir, label_noise=noise))
  noisy = np.asarray([data.train[i]["label"] for i in range(40)])
  assert data.label_noise["kind"] == "symmetric" and data.label_noise["rate"] == 100
  assert data.label_noise["changed_fraction"] == np.mean(noisy != arrays["y_train"]) > 0.4
  np.testing.assert_array_equal(data.train[5]["image"], arrays["x_train"][5])
  assert [data.test[i]["label"] for i in range(20)] == arrays["y_test"].tolist()
  again = load_dataset(data_config("tiny_tfds", data_dir, label_noise=noise))
  np.testing.assert_array_equal([again.train[i]["label"] for i in range(40)], noisy)


def test_grain_batches_from_a_tfds_source(tiny_dataset):
  data_dir, arrays = tiny_dataset
  data = load_dataset(data_config("tiny_tfds", data_dir, augment="strong"))
  augment = make_augment("strong", data.info)
  batches = list(
    train_batches(data.train, data.info, global_batch_size=8, seed=0, epoch=0, augment=augment)
  )
  assert len(batches) == 5 and batches[0]["image"].shape == (8, 8, 8, 3)
  assert batches[0]["image"].dtype == np.float32
  assert sorted(np.concatenate([b["label"] for b in batches]).tolist()) == sorted(
    arrays["y_train"].tolist()
  )
  evals = list(eval_batches(data.test, data.info, global_batch_size=16))
  assert sum(b["mask"].sum() for b in evals) == 20
  labels = np.concatenate([b["label"] for b in evals])[:20]
  np.testing.assert_array_equal(labels, arrays["y_test"])
  mean, std = np.asarray(data.info.mean), np.asarray(data.info.std)
  np.testing.assert_allclose(
    evals[0]["image"][0], (arrays["x_test"][0] - mean) / std, rtol=1e-5, atol=1e-5
  )


def test_loaded_digits_splits_match_their_info():
  data = load_dataset(data_config())
  train, test, info = data.train, data.test, data.info
  assert info.name == "digits" and info.pixel_max == 1.0
  assert len(train.labels) == info.num_train and len(test.labels) == info.num_test


def test_bad_config_values_fail_early():
  config = tiny_config()
  config.data.augment = "flip"
  with pytest.raises(ValueError, match="data.augment='flip' must be one of"):
    validate_config(config)
  with pytest.raises(ValueError, match="kind='none'"):
    load_dataset(data_config(label_noise={"kind": "none", "rate": 20}))
