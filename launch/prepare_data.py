"""Turn local image or text data into a TFDS dataset that ``launch.train`` reads by name.

  python -m launch.prepare_data --name=my_data --data_dir=~/tensorflow_datasets \
      --npz=data.npz                 # x_train, y_train, x_test, y_test [, class_names]
  python -m launch.prepare_data --name=my_data --data_dir=DIR \
      --image_folder=FOLDER          # FOLDER/{train,test}/<class>/*.png|jpg
  python -m launch.prepare_data --name=tiny_imagenet --data_dir=DIR \
      --tiny_imagenet=tiny-imagenet-200 --resize=32   # val is the test split
  python -m launch.prepare_data --name=ag_news_local --data_dir=DIR \
      --jsonl_train=train.jsonl.gz --jsonl_test=test.jsonl.gz   # {"text": ..., "label": int}
  python -m launch.prepare_data --name=dbpedia_10k --data_dir=DIR \
      --jsonl=all.jsonl.gz --test_fraction=0.2 --split_seed=0   # one file, split here

Writes the array_record dataset ``<data_dir>/<name>/1.0.0`` and prints the command that trains
on it (``deinforeg_jax.data.prepare.LocalSource``; each source's module says what it may hold).
The dataset is renamed into place only when complete, so a failed run (or ``--overwrite`` with
bad input) leaves an existing dataset as it was.  Labels are 0-based class ids and the train
split needs two classes or more (``--allow_one_class`` accepts one); without ``--num_classes``
the classes of an image folder or of JSON Lines text are those of its train split.
``--resize=N`` resizes each image file to NxN (bilinear, as torchvision's Resize).  ``--jsonl``
sends a seeded ``--test_fraction`` of each class's records to the test split.

The train split's per-channel pixel mean/std are stored with an image dataset; ``--mean``/
``--std`` (in [0, 1] units, as for torchvision's Normalize) replace them, e.g. with the
reference code's constants (vision/setting.py):
  --mean=0.4914,0.4822,0.4465 --std=0.2023,0.1994,0.2010   # CIFAR-10
  --mean=0.4802,0.4481,0.3975 --std=0.2770,0.2691,0.2821   # Tiny-ImageNet
Names of TFDS catalogue datasets (cifar10, mnist, ...) are refused: use e.g. cifar10_local.
"""

from absl import app, flags

from launch import cli

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
_TINY_IMAGENET = flags.DEFINE_string(
  "tiny_imagenet",
  None,
  "The tiny-imagenet-200 folder (wnids.txt, train/<wnid>/images, val/images, "
  "val/val_annotations.txt); val becomes the test split.",
)
_RESIZE = flags.DEFINE_integer(
  "resize", None, "Resize every image to NxN (--image_folder, --tiny_imagenet), e.g. 32."
)
_JSONL_TRAIN = flags.DEFINE_string(
  "jsonl_train", None, "Text: JSON Lines (optionally .gz) train records with 'text' and 'label'."
)
_JSONL_TEST = flags.DEFINE_string("jsonl_test", None, "Text: JSON Lines test records, as above.")
_JSONL = flags.DEFINE_string(
  "jsonl", None, "Text: one JSON Lines file, split here into train and test (stratified by label)."
)
_TEST_FRACTION = flags.DEFINE_float(
  "test_fraction", 0.2, "--jsonl: the share of each class's records put in the test split."
)
_SPLIT_SEED = flags.DEFINE_integer("split_seed", 0, "--jsonl: seed of the split (>= 0).")
_NUM_CLASSES = flags.DEFINE_integer(
  "num_classes",
  None,
  "Number of classes (--npz without class_names: default largest label + 1; --jsonl*: default "
  "the train classes, whose labels must then be 0..K-1).",
)
_MEAN = flags.DEFINE_list(
  "mean", None, "Per-channel pixel mean in [0, 1] units (default: computed from the train split)."
)
_STD = flags.DEFINE_list(
  "std", None, "Per-channel pixel std in [0, 1] units (default: computed from the train split)."
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Replace an existing prepared dataset (only once the new one is written)."
)
_ALLOW_ONE_CLASS = flags.DEFINE_bool(
  "allow_one_class", False, "Accept a train split whose labels are all one class."
)


def _floats(flag) -> list[float] | None:
  """The values of a list flag as floats; a value that is not a number is a usage error."""
  if flag.value is None:
    return None
  try:
    return [float(v) for v in flag.value]
  except ValueError as error:
    raise app.UsageError(f"--{flag.name}={','.join(flag.value)}: {error}") from error


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _JSONL.value is not None and (_JSONL_TRAIN.value, _JSONL_TEST.value) != (None, None):
    raise app.UsageError(
      "give --jsonl (one file, split here) or --jsonl_train/--jsonl_test (already split), "
      "not both"
    )
  if _JSONL.value is None and (_TEST_FRACTION.present or _SPLIT_SEED.present):
    raise app.UsageError("--test_fraction/--split_seed apply to --jsonl (one file to split)")
  if (_JSONL_TRAIN.value is None) != (_JSONL_TEST.value is None):
    raise app.UsageError("give both --jsonl_train and --jsonl_test")
  text = _JSONL.value or _JSONL_TRAIN.value
  given = [_NPZ.value, _IMAGE_FOLDER.value, _TINY_IMAGENET.value, text]
  if sum(v is not None for v in given) != 1:
    raise app.UsageError(
      "give exactly one of --npz, --image_folder, --tiny_imagenet, --jsonl and "
      "--jsonl_train/--jsonl_test"
    )
  if _RESIZE.value is not None and _IMAGE_FOLDER.value is None and _TINY_IMAGENET.value is None:
    raise app.UsageError("--resize applies to image files (--image_folder, --tiny_imagenet)")
  if text is not None and (_MEAN.value is not None or _STD.value is not None):
    raise app.UsageError(
      "--mean/--std apply to images (--npz, --image_folder, --tiny_imagenet), not text"
    )
  if (_MEAN.value is None) != (_STD.value is None):
    raise app.UsageError("give both --mean and --std, or neither")
  mean, std = _floats(_MEAN), _floats(_STD)
  # Imported here so that --help and flag errors need no JAX import.
  from deinforeg_jax.data.prepare import LocalSource  # pylint: disable=import-outside-toplevel

  source = LocalSource(
    npz=_NPZ.value, image_folder=_IMAGE_FOLDER.value, tiny_imagenet=_TINY_IMAGENET.value,
    jsonl=_JSONL.value, jsonl_train=_JSONL_TRAIN.value, jsonl_test=_JSONL_TEST.value,
    resize=_RESIZE.value, test_fraction=_TEST_FRACTION.value, split_seed=_SPLIT_SEED.value,
  )
  prepared = source.prepare(
    _NAME.value, _DATA_DIR.value, num_classes=_NUM_CLASSES.value, mean=mean, std=std,
    overwrite=_OVERWRITE.value, allow_one_class=_ALLOW_ONE_CLASS.value,
  )
  print(source.summary(prepared))


def run():
  """Entry point of the ``deinforeg-prepare-data`` console script (exit codes: ``launch.cli``;
  SIGTERM/SIGINT remove the incomplete dataset and exit 75)."""
  cli.run(
    main,
    stopped_note="the incomplete dataset was removed and an existing one is unchanged",
  )


if __name__ == "__main__":
  run()
