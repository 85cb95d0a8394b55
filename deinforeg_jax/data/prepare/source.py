"""``LocalSource``: the one local data source that ``launch.prepare_data`` names, prepared.

Exactly one of its fields is a path (the launcher refuses other combinations): an ``.npz``,
an image folder, the ``tiny-imagenet-200`` folder, one JSON Lines file split here by label
(``test_fraction``, ``split_seed``), or a JSON Lines train file and test file.  ``prepare`` calls
the ``prepare_*`` function of that source; their refusals of bad input (``ValueError``) become
``UserError``, one line.  ``summary`` says what was written and the command that trains on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from deinforeg_jax.data.prepare.builder import Prepared
from deinforeg_jax.data.prepare.image_folder import prepare_image_folder
from deinforeg_jax.data.prepare.images import prepare_npz
from deinforeg_jax.data.prepare.text import prepare_jsonl, prepare_jsonl_split
from deinforeg_jax.data.prepare.tiny_imagenet import prepare_tiny_imagenet
from deinforeg_jax.user_errors import UserError


@dataclasses.dataclass(frozen=True)
class LocalSource:
  """One source (the path fields: exactly one set, or both ``jsonl_*``) and how to read it."""

  npz: str | None = None
  image_folder: str | None = None
  tiny_imagenet: str | None = None
  jsonl: str | None = None
  jsonl_train: str | None = None
  jsonl_test: str | None = None
  resize: int | None = None  # image files: resize each to resize x resize
  test_fraction: float = 0.2  # jsonl: each class's share in the test split
  split_seed: int = 0  # jsonl: seed of the split

  @property
  def is_text(self) -> bool:
    return self.jsonl is not None or self.jsonl_train is not None

  def prepare(
    self,
    name: str,
    data_dir: str,
    *,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    overwrite: bool = False,
    allow_one_class: bool = False,
  ) -> Prepared:
    """The dataset ``<data_dir>/<name>/1.0.0`` written from this source; ``mean``/``std``
    (images only) in [0, 1] units, scaled to the stored pixel range."""
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

    tfds.disable_progress_bar()
    options = dict(overwrite=overwrite, allow_one_class=allow_one_class)
    if mean is not None:
      options.update(mean=mean, std=std, stats_units="unit", stats_source="given (--mean/--std)")
    try:
      if self.jsonl is not None:
        return prepare_jsonl_split(
          name, data_dir, self.jsonl, test_fraction=self.test_fraction,
          split_seed=self.split_seed, num_classes=num_classes, **options,
        )
      if self.jsonl_train is not None:
        return prepare_jsonl(
          name, data_dir, self.jsonl_train, self.jsonl_test, num_classes=num_classes, **options
        )
      if self.npz is not None:
        return prepare_npz(name, data_dir, self.npz, num_classes=num_classes, **options)
      if self.image_folder is not None:
        return prepare_image_folder(
          name, data_dir, self.image_folder, resize=self.resize, **options
        )
      return prepare_tiny_imagenet(
        name, data_dir, self.tiny_imagenet, resize=self.resize, **options
      )
    except ValueError as error:  # the prepare functions' refusals of bad input data
      raise UserError(str(error)) from error

  def summary(self, prepared: Prepared) -> str:
    """What was prepared (counts, shape, classes, pixel statistics) and how to train on it."""
    counts = ", ".join(f"{n} {split}" for split, n in prepared.num_examples.items())
    data_flags = f"--config.data.name={prepared.name} --config.data.data_dir={prepared.data_dir}"
    if self.is_text:
      split = (
        f" (split of {self.jsonl} by label: test fraction {self.test_fraction}, seed "
        f"{self.split_seed})"
        if self.jsonl is not None
        else ""
      )
      return (
        f"Prepared {prepared.name} in {prepared.seconds:.1f} s: {counts} texts, "
        f"{prepared.num_classes} classes{split}\n  -> {prepared.dataset_dir}\n"
        "Train on it with a text config, e.g.:\n"
        f"  python -m launch.train --config=launch/configs/agnews_lstm.py {data_flags} "
        "--config.data.max_len=60 --workdir=W"
      )
    fmt = lambda values: "(" + ", ".join(f"{v:.2f}" for v in values) + ")"  # noqa: E731
    config = "tinyimagenet_vgg" if self.tiny_imagenet is not None else "default"
    return (
      f"Prepared {prepared.name} in {prepared.seconds:.1f} s: {counts} images of shape "
      f"{prepared.image_shape}, {prepared.num_classes} classes, pixel range "
      f"[0, {prepared.metadata['pixel_max']:g}], mean {fmt(prepared.mean)} std "
      f"{fmt(prepared.std)}\n  -> {prepared.dataset_dir}\n"
      "Train on it with:\n"
      f"  python -m launch.train --config=launch/configs/{config}.py {data_flags} --workdir=W"
    )
