"""Offline tooling: writing local data as TFDS array_record datasets.

Run by ``launch.prepare_data``; the runtime path (``deinforeg_jax.data``) never imports
this package. Every dataset goes through the one builder in ``builder``:

- ``images``: ``.npz`` arrays (and the image-writing path shared with folders);
- ``image_folder``: ``<root>/{train,test}/<class>/*`` image files, decoded with Pillow
  (and the writing path of every layout of image files);
- ``tiny_imagenet``: the ``tiny-imagenet-200/`` folder (``wnids.txt``, train, val);
- ``text``: JSON Lines files with ``text`` and ``label`` (a train and a test file, or one
  file split by label, seeded);
- ``source``: ``LocalSource``, the one source ``launch.prepare_data``'s flags name, prepared.
"""

from deinforeg_jax.data.prepare.builder import LocalDataset, Prepared, SplitData, write_dataset
from deinforeg_jax.data.prepare.image_folder import prepare_image_folder, read_image
from deinforeg_jax.data.prepare.images import PreparedImages, prepare_npz
from deinforeg_jax.data.prepare.source import LocalSource
from deinforeg_jax.data.prepare.text import (
  prepare_jsonl,
  prepare_jsonl_split,
  read_jsonl,
  stratified_split,
)
from deinforeg_jax.data.prepare.tiny_imagenet import prepare_tiny_imagenet

__all__ = [
  "LocalDataset",
  "LocalSource",
  "Prepared",
  "PreparedImages",
  "SplitData",
  "prepare_image_folder",
  "prepare_jsonl",
  "prepare_jsonl_split",
  "prepare_npz",
  "prepare_tiny_imagenet",
  "read_image",
  "read_jsonl",
  "stratified_split",
  "write_dataset",
]
