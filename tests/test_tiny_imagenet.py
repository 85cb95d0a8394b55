"""Tiny-ImageNet: ``launch.prepare_data --tiny_imagenet=DIR --resize=N`` and its configs.

Every test generates a small ``tiny-imagenet-200`` layout in a tmp dir: three wnids (listed
unsorted, so label order = ``wnids.txt`` order is visible), two training JPEGs a class and
four val JPEGs, each a flat colour (JPEG keeps it within a few levels), in two sizes and
one of them grey, plus the parts the reader must ignore (``test/``, ``words.txt``, boxes).
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from helpers import all_records, data_config, run_launcher
from deinforeg_jax import aot, models
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data import prepare
from deinforeg_jax.data.registry import load_dataset
from launch.configs import tinyimagenet_resnet18, tinyimagenet_vgg

WNIDS = ("n02", "n01", "n03")
VAL = (("val_2.JPEG", "n03"), ("val_10.JPEG", "n02"), ("val_0.JPEG", "n03"), ("val_1.JPEG", "n01"))
SIZES = ((12, 12), (14, 10))  # (width, height), alternating: only --resize makes them one shape


def _save(path, index: int) -> np.ndarray:
  """A flat-colour JPEG at ``path`` (image ``index`` 3 is grey); its colour as RGB ``[3]``."""
  colour = np.asarray([(37 * index) % 256, (90 + 53 * index) % 256, (200 - 29 * index) % 256])
  size = SIZES[index % 2]
  if index == 3:
    Image.new("L", size, int(colour[0])).save(path, quality=95)
    return np.repeat(colour[:1], 3)
  Image.new("RGB", size, tuple(int(c) for c in colour)).save(path, quality=95)
  return colour


def write_tiny_imagenet(root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The layout under ``root``; ``{split: (colours [N, 3], labels [N])}`` in record order."""
  index = 0
  want = {"train": ([], []), "test": ([], [])}
  root.mkdir(parents=True)
  (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
  (root / "words.txt").write_text("n01\tant\nn02\tbee\nn03\tcat\n")
  for label, wnid in enumerate(WNIDS):
    images = root / "train" / wnid / "images"
    images.mkdir(parents=True)
    (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t5\t5\n")
    for k in range(2):
      want["train"][0].append(_save(images / f"{wnid}_{k}.JPEG", index))
      want["train"][1].append(label)
      index += 1
  (root / "val" / "images").mkdir(parents=True)
  lines = []
  for name, wnid in VAL:
    want["test"][0].append(_save(root / "val" / "images" / name, index))
    want["test"][1].append(WNIDS.index(wnid))
    lines.append(f"{name}\t{wnid}\t0\t0\t5\t5")
    index += 1
  (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
  (root / "test" / "images").mkdir(parents=True)
  _save(root / "test" / "images" / "test_0.JPEG", 0)  # unlabelled: never read
  return {split: (np.stack(c), np.asarray(l)) for split, (c, l) in want.items()}


def test_resized_round_trip_keeps_wnid_order_labels_and_splits(tmp_path):
  root = tmp_path / "tiny-imagenet-200"
  want = write_tiny_imagenet(root)
  with pytest.raises(ValueError, match=r"differ in size .*--resize=N"):
    prepare.prepare_tiny_imagenet("tiny_in", str(tmp_path / "tfds"), str(root))
  prepared = prepare.prepare_tiny_imagenet("tiny_in", str(tmp_path / "tfds"), str(root), resize=4)
  assert prepared.image_shape == (4, 4, 3) and prepared.num_classes == 3
  assert prepared.num_examples == {"train": 6, "test": 4}
  data = load_dataset(data_config("tiny_in", tmp_path / "tfds"))
  assert data.info.class_names == WNIDS and data.info.input_shape == (4, 4, 3)
  for split, source in (("train", data.train), ("test", data.test)):
    images, labels = all_records(source)
    colours, want_labels = want[split]
    assert images.shape == (len(want_labels), 4, 4, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, want_labels)
    want_images = np.broadcast_to(colours[:, None, None], images.shape)
    np.testing.assert_allclose(images, want_images, atol=4)


def _break(root, fault: str) -> None:
  """Damages the generated layout under ``root`` in one way."""
  annotations = root / "val" / "val_annotations.txt"
  if fault == "no wnids.txt":
    (root / "wnids.txt").unlink()
  elif fault == "wnid listed twice":
    (root / "wnids.txt").write_text("n02\nn01\nn03\nn01\n")
  elif fault == "wnid folder missing":
    shutil.rmtree(root / "train" / "n03")
  elif fault == "train folder not listed":
    (root / "train" / "n09" / "images").mkdir(parents=True)
  elif fault == "no annotations":
    annotations.unlink()
  elif fault == "val image not annotated":
    _save(root / "val" / "images" / "val_99.JPEG", 0)
  elif fault == "annotated image missing":
    (root / "val" / "images" / "val_0.JPEG").unlink()
  elif fault == "unknown wnid in annotations":
    annotations.write_text(annotations.read_text().replace("val_1.JPEG\tn01", "val_1.JPEG\tn07"))
  elif fault == "line without a tab":
    annotations.write_text(annotations.read_text() + "val_3.JPEG n01\n")
  else:
    raise AssertionError(fault)


@pytest.mark.parametrize(
  "fault, message",
  [
    ("no wnids.txt", r"wnids\.txt: no such file .*pass the tiny-imagenet-200 folder itself"),
    ("wnid listed twice", r"wnids\.txt:4: n01 is listed again \(first on line 2\)"),
    ("wnid folder missing", r"n03/images is not a folder, but .*wnids\.txt lists n03"),
    ("train folder not listed", r"class folder\(s\) \['n09'\] .*wnids\.txt does not list"),
    ("no annotations", r"val_annotations\.txt: no such file"),
    ("val image not annotated", r"val_99\.JPEG \(1 image\(s\) in all\) has no line in"),
    ("annotated image missing", r"val_annotations\.txt:3: val_0\.JPEG is not in"),
    ("unknown wnid in annotations", r"val_annotations\.txt:4: the class n07 of val_1\.JPEG"),
    ("line without a tab", r"val_annotations\.txt:5: expected 'file<TAB>wnid"),
  ],
)
def test_a_malformed_layout_is_refused_naming_the_problem(tmp_path, fault, message):
  root = tmp_path / "tiny-imagenet-200"
  write_tiny_imagenet(root)
  _break(root, fault)
  with pytest.raises(ValueError, match=message):
    prepare.prepare_tiny_imagenet("tiny_bad", str(tmp_path / "tfds"), str(root), resize=4)
  assert not (tmp_path / "tfds").exists()  # refused before anything is written


def test_cli_prepares_tiny_imagenet_and_refuses_bad_input(tmp_path):
  root = tmp_path / "tiny-imagenet-200"
  write_tiny_imagenet(root)
  data_dir = tmp_path / "tfds"
  args = (f"--data_dir={data_dir}", f"--tiny_imagenet={root}")
  result = run_launcher("launch.prepare_data", "--name=tiny_cli", *args, "--resize=4")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "6 train, 4 test images of shape (4, 4, 3), 3 classes" in result.stdout
  assert "--config=launch/configs/tinyimagenet_vgg.py --config.data.name=tiny_cli" in result.stdout
  assert load_dataset(data_config("tiny_cli", data_dir)).info.num_test == 4

  (root / "wnids.txt").unlink()
  result = run_launcher("launch.prepare_data", "--name=tiny_bad", *args)
  assert result.returncode == 1
  assert result.stderr.strip() == (
    f"error: {root}/wnids.txt: no such file (the class ids, one a line); pass "
    "the tiny-imagenet-200 folder itself, which holds wnids.txt, train/<wnid>/images/*.JPEG, "
    "val/images/*.JPEG and val/val_annotations.txt"
  )
  result = run_launcher(
    "launch.prepare_data", "--name=x", f"--data_dir={data_dir}", "--npz=x.npz", "--resize=4"
  )
  assert result.returncode != 0 and "--resize applies to image files" in result.stderr


@pytest.mark.parametrize("module", [tinyimagenet_vgg, tinyimagenet_resnet18])
def test_configs_are_the_paper_settings_for_200_classes_at_32x32(module):
  config = module.get_config()
  validate_config(config)
  assert config.data.name == "tiny_imagenet" and config.model.projector == "2048-2048-2048"
  shapes = aot.run_shapes(config)
  assert (shapes.input_shape, shapes.num_classes) == ((32, 32, 3), 200)
  model = models.create_model(config, shapes.num_classes)
  images = jnp.zeros((2, 32, 32, 3))
  variables = jax.eval_shape(lambda key: model.init(key, images, train=False), jax.random.key(0))
  outputs = jax.eval_shape(lambda v: model.apply(v, images, train=False), variables)
  assert [logits.shape for logits in outputs["logits"]] == [(2, 200)] * 4
