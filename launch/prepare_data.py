"""Turn local image or text data into a TFDS dataset that ``launch.train`` reads by name.

  python -m launch.prepare_data --name=my_data --data_dir=~/tensorflow_datasets \
      --npz=data.npz                 # x_train, y_train, x_test, y_test [, class_names]
  python -m launch.prepare_data --name=my_data --data_dir=DIR \
      --image_folder=FOLDER          # FOLDER/{train,test}/<class>/*.png|jpg
  python -m launch.prepare_data --name=ag_news_local --data_dir=DIR \
      --jsonl_train=train.jsonl.gz --jsonl_test=test.jsonl.gz   # {"text": ..., "label": int}

Writes the array_record dataset ``<data_dir>/<name>/1.0.0`` and prints the command
that trains on it. Labels must be 0-based class ids. The train split's per-channel
pixel mean/std are stored with the dataset; ``--mean``/``--std`` (in [0, 1] units,
as for torchvision's Normalize) replace them, e.g. with the reference code's CIFAR-10
constants (vision/setting.py; ``config.data.name=cifar10`` uses them):
  --mean=0.4914,0.4822,0.4465 --std=0.2023,0.1994,0.2010
Names of TFDS catalogue datasets (cifar10, mnist, ...) are refused: TFDS would read
them with its own builder; use e.g. cifar10_local.
"""

import sys

from absl import app, flags

_NAME = flags.DEFINE_string(
  "name", None, "Dataset name (snake_case), e.g. cifar10_20k.", required=True
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory to write to.", required=True)
_NPZ = flags.DEFINE_string(
  "npz", None, "An .npz with x_train, y_train, x_test, y_test (optional class_names)."
)
_IMAGE_FOLDER = flags.DEFINE_string(
  "image_folder", None, "A folder with train/<class>/* and test/<class>/* images."
)
_JSONL_TRAIN = flags.DEFINE_string(
  "jsonl_train", None, "Text: JSON Lines (optionally .gz) train records with 'text' and 'label'."
)
_JSONL_TEST = flags.DEFINE_string("jsonl_test", None, "Text: JSON Lines test records, as above.")
_NUM_CLASSES = flags.DEFINE_integer(
  "num_classes",
  None,
  "Number of classes for --npz without class_names (default: largest label + 1).",
)
_MEAN = flags.DEFINE_list(
  "mean", None, "Per-channel pixel mean in [0, 1] units (default: computed from the train split)."
)
_STD = flags.DEFINE_list(
  "std", None, "Per-channel pixel std in [0, 1] units (default: computed from the train split)."
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing prepared dataset.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if (_JSONL_TRAIN.value is None) != (_JSONL_TEST.value is None):
    raise app.UsageError("give both --jsonl_train and --jsonl_test")
  given = [_NPZ.value, _IMAGE_FOLDER.value, _JSONL_TRAIN.value]
  if sum(v is not None for v in given) != 1:
    raise app.UsageError("give exactly one of --npz, --image_folder and --jsonl_train/--jsonl_test")
  if _JSONL_TRAIN.value is not None:
    _prepare_text()
    return
  if (_MEAN.value is None) != (_STD.value is None):
    raise app.UsageError("give both --mean and --std, or neither")
  # Imported here so that --help and flag errors need no TFDS import.
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from deinforeg_jax.data import prepare  # pylint: disable=import-outside-toplevel

  tfds.disable_progress_bar()
  stats = {}
  if _MEAN.value is not None:
    # [0, 1] units -> raw uint8 units (the loader normalises raw stored values).
    stats = dict(
      mean=[255.0 * float(m) for m in _MEAN.value],
      std=[255.0 * float(s) for s in _STD.value],
      stats_source="given (--mean/--std)",
    )
  try:
    if _NPZ.value is not None:
      if stats:
        import numpy as np  # pylint: disable=import-outside-toplevel

        with np.load(_NPZ.value) as data:
          if data["x_train"].dtype != np.uint8:  # float data: [0, 1] units are raw units
            stats.update(
              mean=[m / 255.0 for m in stats["mean"]], std=[s / 255.0 for s in stats["std"]]
            )
      prepared = prepare.prepare_npz(
        _NAME.value,
        _DATA_DIR.value,
        _NPZ.value,
        num_classes=_NUM_CLASSES.value,
        overwrite=_OVERWRITE.value,
        **stats,
      )
    else:
      prepared = prepare.prepare_image_folder(
        _NAME.value, _DATA_DIR.value, _IMAGE_FOLDER.value, overwrite=_OVERWRITE.value, **stats
      )
  except (ValueError, OSError) as error:  # OSError: missing file, existing dataset
    print(f"prepare_data: error: {error}", file=sys.stderr)
    sys.exit(1)

  counts = ", ".join(f"{n} {split}" for split, n in prepared.num_examples.items())
  fmt = lambda values: "(" + ", ".join(f"{v:.2f}" for v in values) + ")"  # noqa: E731
  print(
    f"Prepared {prepared.name} in {prepared.seconds:.1f} s: {counts} images of shape "
    f"{prepared.image_shape}, {prepared.num_classes} classes, pixel mean {fmt(prepared.mean)} "
    f"std {fmt(prepared.std)}\n  -> {prepared.dataset_dir}"
  )
  print(
    "Train on it with:\n"
    f"  python -m launch.train --config=launch/configs/default.py "
    f"--config.data.name={prepared.name} --config.data.data_dir={prepared.data_dir} "
    "--workdir=W"
  )


def _prepare_text():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  from deinforeg_jax.data import prepare  # pylint: disable=import-outside-toplevel

  tfds.disable_progress_bar()
  try:
    prepared = prepare.prepare_jsonl(
      _NAME.value,
      _DATA_DIR.value,
      _JSONL_TRAIN.value,
      _JSONL_TEST.value,
      num_classes=_NUM_CLASSES.value,
      overwrite=_OVERWRITE.value,
    )
  except (ValueError, OSError) as error:
    print(f"prepare_data: error: {error}", file=sys.stderr)
    sys.exit(1)
  counts = ", ".join(f"{n} {split}" for split, n in prepared.num_examples.items())
  print(
    f"Prepared {prepared.name} in {prepared.seconds:.1f} s: {counts} texts, "
    f"{prepared.num_classes} classes\n  -> {prepared.dataset_dir}"
  )
  print(
    "Train on it with a text config, e.g.:\n"
    f"  python -m launch.train --config=launch/configs/agnews_lstm.py "
    f"--config.data.name={prepared.name} --config.data.data_dir={prepared.data_dir} "
    "--config.data.max_len=60 --workdir=W"
  )


if __name__ == "__main__":
  app.run(main)
