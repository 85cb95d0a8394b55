"""Adaptive inference path: exit decisions on hand-made logits, FLOP accounting."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deinforeg_jax import inference, models
from helpers import DIGITS_SHAPE, NUM_CLASSES, init_variables, random_batch, tiny_config

# Logit vectors over 3 classes.  cos(A, A2) = 0.997, cos(A, A_WEAK) = 0.719 (same argmax 0).
A = [3.0, 0.0, 0.0]
A2 = [3.0, 0.2, 0.0]
A_WEAK = [3.0, 2.9, 0.0]
B = [0.0, 3.0, 0.0]
C = [0.0, 0.0, 3.0]


def _decide(rows, patience=1, tau=0.8, **kwargs):
  """``rows[b][e]``: sample ``b``'s logits at exit ``e`` -> (exits, predictions) as lists."""
  logits = jnp.asarray(np.transpose(np.asarray(rows, np.float32), (1, 0, 2)))  # [K, B, C]
  out = inference.decide_exits(logits, patience, tau, **kwargs)
  return out["exit"].tolist(), out["prediction"].tolist()


def test_per_sample_exit_at_first_agreement():
  rows = [
    [A, A2, B, C],  # exits 0, 1 agree -> exit 1, class 0
    [A, B, B, C],  # 1, 2 agree -> exit 2, class 1
    [A, B, C, A],  # never agree -> the last exit, class 0
    [A, A_WEAK, A_WEAK, B],  # same argmax at 1, cosine 0.72 < 0.8; 1, 2 agree -> exit 2
  ]
  assert _decide(rows) == ([1, 2, 3, 2], [0, 1, 0, 0])
  assert _decide(rows, tau=0.7) == ([1, 2, 3, 1], [0, 1, 0, 0])  # 0.719 > 0.7 now agrees


def test_patience_counter_resets_or_accumulates():
  rows = [
    [A, A, B, B, C],  # agreements 1, 0, 1, 0
    [A, A, B, B, B],  # agreements 1, 0, 1, 1
    [A, A, A, B, B],  # agreements 1, 1, 0, 1
  ]
  # Consecutive agreements (default): two in a row only for sample 1 (exit 4) and 2 (exit 2).
  assert _decide(rows, patience=2) == ([4, 4, 2], [2, 1, 0])
  # The reference's counter never resets: the second agreement anywhere exits.
  assert _decide(rows, patience=2, reset=False) == ([3, 3, 2], [1, 1, 0])


def test_batch_mode_follows_the_flat_argmax_and_the_mean_cosine():
  # Per sample, exits 0 and 1 agree for both rows; the batch-wide largest logit moves
  # from (row 0, class 0) to (row 1, class 1), so the reference's batch rule does not exit.
  rows = [[[3.0, 0, 0], [3.0, 0, 0], [3.0, 0, 0]], [[0, 2.0, 0], [0, 4.0, 0], [0, 4.0, 0]]]
  assert _decide(rows) == ([1, 1], [0, 1])
  assert _decide(rows, mode="batch") == ([2, 2], [0, 1])
  # Mean cosine: row 0 agrees (1.0), row 1 has cosine 0.0 at exits 0/1 -> mean 0.5 < 0.8.
  rows = [[[5.0, 0, 0], [5.0, 0, 0], [5.0, 0, 0]], [[0, 0, 1.0], [0, 1.0, 0], [0, 1.0, 0]]]
  assert _decide(rows, mode="batch") == ([2, 2], [0, 1])
  assert _decide(rows, mode="batch", tau=0.4) == ([1, 1], [0, 1])


def test_batch_mode_ignores_padded_rows():
  # Row 1 is padding with a huge logit that would move the flat argmax and the mean cosine.
  rows = [[A, A, B], [[0, 0, 9.0], [0, 9.0, 0], [0, 9.0, 0]]]
  mask = jnp.array([1.0, 0.0])
  assert _decide(rows, mode="batch", mask=mask)[0] == [1, 1]
  assert _decide(rows, mode="batch")[0] == [2, 2]


def test_unknown_exit_mode_names_the_field():
  with pytest.raises(ValueError, match=r"config.inference.exit_mode='layer' is unknown"):
    _decide([[A, A]], mode="layer")


def _toy(classifier_mode="merge"):
  config = tiny_config(vgg_blocks="4,M;8", num_blocks=2, width=1.0, projector="16-16")
  config.model.classifier_mode = classifier_mode
  model = models.create_model(config, NUM_CLASSES)
  return model, init_variables(model, DIGITS_SHAPE)


@pytest.mark.parametrize("batch", [1, 3])
def test_exit_flops_match_a_hand_count(batch):
  """Block 0: conv 3x3 1->4 on 8x8, pool, projector 64->16->16, classifier 16->10.
  Block 1: conv 3x3 4->8 on 4x4, projector 128->16->16, classifier 16->10.  2 FLOPs/MAC."""
  model, variables = _toy()
  spec = jax.ShapeDtypeStruct((batch, *DIGITS_SHAPE), jnp.float32)
  flops = inference.exit_flops(model, variables, spec)
  block0_encoder = 2 * 8 * 8 * 9 * 1 * 4
  block1_encoder = 2 * 4 * 4 * 9 * 4 * 8
  head0 = 2 * (64 * 16 + 16 * 16 + 16 * 10)
  head1 = 2 * (128 * 16 + 16 * 16 + 16 * 10)
  np.testing.assert_array_equal(
    flops["adaptive"], [block0_encoder + head0, block0_encoder + head0 + block1_encoder + head1]
  )
  np.testing.assert_array_equal(
    flops["single"], [block0_encoder + head0, block0_encoder + block1_encoder + head1]
  )


def test_unmerged_classifier_needs_no_projector():
  """'unmerge': the classifier MLP (16, 10) reads the flattened block output directly."""
  model, variables = _toy("unmerge")
  flops = inference.exit_flops(model, variables, jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))
  assert flops["single"][0] == 2 * 8 * 8 * 9 * 4 + 2 * (64 * 16 + 16 * 10)


def test_summary_counts_accuracy_exit_blocks_and_compute():
  cached = [
    {
      "logits": np.transpose(np.array([[A, A2, B], [A, B, B], [A, B, C]], np.float32), (1, 0, 2)),
      "label": np.array([0, 1, 1]),
      "mask": np.array([1.0, 1.0, 0.0]),  # the third row is padding
    }
  ]
  flops = {"adaptive": np.array([10.0, 30.0, 40.0]), "single": np.array([10.0, 25.0, 30.0])}
  summary = inference.summarize(cached, flops, [1, 2, 3], patience=1, cosine_threshold=0.8)
  assert summary["accuracy"] == 1.0
  assert summary["mean_exit_block"] == (2 + 3) / 2  # exits 1 and 2 are blocks 2 and 3
  assert summary["compute_fraction"] == pytest.approx((30 + 40) / 2 / 40)
  assert summary["exit_fractions"] == [0.0, 0.5, 0.5]
  rows = inference.static_exits(cached, flops, [1, 2, 3])
  assert [r["accuracy"] for r in rows] == [0.5, 1.0, 0.5]
  assert [r["compute_fraction"] for r in rows] == [0.25, 0.625, 0.75]


def test_exit_blocks_skip_blocks_without_classifier():
  params = {
    "block_00": {"encoder": {}},
    "block_01": {"classifier": {}},
    "block_02": {"classifier": {}},
  }
  assert inference.exit_blocks(params) == [1, 2]
  assert inference.exit_blocks(params, num_exits=2) == [1, 2]
  no_classifiers = {"block_00": {}, "block_01": {}, "head": {}}  # the AL baseline's layout
  assert inference.exit_blocks(no_classifiers, num_exits=2) == [0, 1]
  assert inference.exit_blocks(no_classifiers, num_exits=1) == [0]


def test_jitted_predict_matches_the_rule_on_the_model_logits():
  model, variables = _toy()
  x = jnp.asarray(random_batch(16)["image"])
  mask = jnp.ones(16)
  for mode in inference.EXIT_MODES:
    out = inference.make_predict(model, mode=mode)(variables, x, mask, 1, 0.0)
    logits = jnp.stack(model.apply(variables, x, train=False)["logits"])
    expected = inference.decide_exits(logits, 1, 0.0, mask, mode=mode)
    np.testing.assert_array_equal(out["exit"], expected["exit"])
    np.testing.assert_array_equal(
      out["prediction"], jnp.argmax(logits, -1)[out["exit"], jnp.arange(16)]
    )
