"""Adaptive inference decisions equal the original's ``VGG_DeInfoReg_Adaptive``.

``tests/oracles/adaptive/*.npz`` (``benchmarks/make_oracle.py --adaptive``) hold the original's
trained small VGG DeInfoReg and the exit that its ``VGG_DeInfoReg_Adaptive.inference`` chose for
every eval batch, each row's prediction and the accuracy.  ``benchmarks.trajectory_parity``
replays the training, then runs our ``inference`` code (the reference preset:
``exit_mode="batch"``, ``patience_reset=False``) over the same batches; decisions, predictions
and accuracy must be equal.  Each oracle's settings make the rule stop at several blocks:

* ``vgg_batch_mode.npz``: eval batches of 2, patience 1, cosine > 0: the whole batch's flattened
  argmax and mean cosine decide (our per-sample default gives other exits);
* ``vgg_counter.npz`` (other seed, batch, offset, 5 blocks): batches of 1, patience 2,
  cosine > -1: the counter that never resets stops at exit 3 after agree, disagree, agree
  (our resetting default goes on);
* ``lstm.npz``: the original's ``LSTM_DeInfoReg_Adaptive`` (AG News token ids, 80 Adam steps at
  5e-3), batches of 1, patience 1, cosine > 0.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks import oracle_data
from benchmarks import trajectory_parity as tp

ADAPTIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "oracles", "adaptive")


def _oracle(name: str) -> str:
  path = os.path.join(ADAPTIVE, name)
  with np.load(path) as npz:
    meta = json.loads(str(npz["meta"]))
  if "data" in meta and not os.path.exists(os.path.join(oracle_data.default_data_dir(),
                                                        meta["data"])):
    pytest.skip(f"{name} indexes {meta['data']}, absent from ../shared/data")
  return path


@pytest.mark.parametrize(
  "name, exit_counts",
  [
    ("vgg_batch_mode.npz", [0, 2, 2, 76]),
    ("vgg_counter.npz", [0, 0, 0, 18, 182]),
    ("lstm.npz", [0, 5, 24, 67]),
  ],
)
def test_adaptive_decisions_equal_the_originals(name, exit_counts):
  """Every eval batch's exit, every prediction and the accuracy equal the original's, and the
  original stopped at several blocks (a rule that always ran to the end would prove nothing)."""
  assert os.path.getsize(os.path.join(ADAPTIVE, name)) < 2 * 2**20
  row = tp.replay(_oracle(name))
  assert row["within_limits"] and row["failed"] == [], (row["failed"], row)
  assert row["adaptive_settings"]["exit_mode"] == "batch"
  assert row["adaptive_settings"]["patience_reset"] is False
  assert row["adaptive_exit_counts"] == exit_counts
  assert len(set(row["adaptive_exit"])) >= 2
  assert row["adaptive_exit_ours"] == row["adaptive_exit"]
  assert row["adaptive_exit_mismatches"] == row["adaptive_pred_mismatches"] == 0
  assert row["adaptive_f64_exit_mismatches"] == 0  # the decisions are not float32 accidents
  assert row["adaptive_accuracy_ours"] == row["adaptive_accuracy"]
  assert row["adaptive_match"]


def test_departure_adaptive_exit_mode_reference_batch_vs_our_sample():
  """Our default decides per sample; the original decides once per batch (``torch.argmax``
  without ``dim``): with per-sample exits the batch-mode oracle's decisions no longer match."""
  from launch.configs import default, reference  # pylint: disable=import-outside-toplevel

  assert default.get_config().inference.exit_mode == "sample"
  assert reference.get_config("vgg").inference.exit_mode == "batch"
  row = tp.replay(_oracle("vgg_batch_mode.npz"), overrides={"inference.exit_mode": "sample"})
  assert not row["within_limits"] and row["failed"] == ["adaptive"]
  assert row["adaptive_pred_mismatches"] > 0
  assert row["adaptive_accuracy_ours"] != row["adaptive_accuracy"]


def test_departure_adaptive_patience_reset_reference_never_vs_our_reset():
  """Our default restarts the counter on a disagreement (PABEE); the original's never resets:
  with the reset, the counter oracle's early exits at block 3 go on to block 4."""
  from launch.configs import default, reference  # pylint: disable=import-outside-toplevel

  assert default.get_config().inference.patience_reset is True
  assert reference.get_config("vgg").inference.patience_reset is False
  row = tp.replay(_oracle("vgg_counter.npz"), overrides={"inference.patience_reset": True})
  assert row["failed"] == ["adaptive"]
  ours, original = np.array(row["adaptive_exit_ours"]), np.array(row["adaptive_exit"])
  assert np.sum(ours != original) > 0
  assert set(original[ours != original]) == {3} and set(ours[ours != original]) == {4}
