"""Our adaptive inference against the original's ``*_DeInfoReg_Adaptive`` decisions.

An oracle made with ``make_oracle.py --adaptive`` (``benchmarks/oracle_adaptive.py``) records,
for the original's trained model, the exit of every eval batch of ``meta.adaptive.batch`` rows
(``adaptive_exit [NB]``), every row's prediction (``adaptive_pred [X]``) and the accuracy.
``compare`` runs our replayed model through the code ``results.json`` uses:
``inference.exit_logits`` per eval batch (``config.data.eval_batch_size`` = the oracle's
batch), ``inference.decide_exits`` per batch (``TrainedModel.predict(exit="adaptive")``'s rule)
and ``inference.adaptive_report``'s accuracy, with ``config.inference`` from the reference
preset (``exit_mode="batch"``, ``patience_reset=False``) and only ``patience`` and
``cosine_threshold`` taken from ``meta.adaptive``.  Decisions, predictions and accuracy must be
equal, not close.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _batches(x_eval, y_eval, size: int) -> list[dict]:
  """The eval set cut as the original's loop cuts it: ``size`` rows, the last batch shorter."""
  return [
    {"image": x_eval[s:s + size], "label": np.asarray(y_eval[s:s + size], np.int32),
     "mask": np.ones(len(y_eval[s:s + size]), np.float32)}
    for s in range(0, len(y_eval), size)
  ]


def compare(oracle, meta, config, model, variables, x_eval) -> dict[str, Any]:
  """The adaptive figures of the replay row (module docstring); ``adaptive_match`` is the check."""
  import jax  # pylint: disable=import-outside-toplevel

  from deinforeg_jax import inference  # pylint: disable=import-outside-toplevel

  settings = meta["adaptive"]
  config.inference.patience = int(settings["patience"])
  config.inference.cosine_threshold = float(settings["cosine_threshold"])
  config.data.eval_batch_size = int(settings["batch"])
  rule = config.inference
  batches = _batches(np.asarray(x_eval), oracle["y_eval"], config.data.eval_batch_size)
  inputs = lambda batch: batch["image"]
  cached = inference.exit_logits(model, variables, batches, inputs)
  decide = jax.jit(inference.decide_exits, static_argnames=("mode", "reset"))
  decided = [
    jax.device_get(decide(c["logits"], rule.patience, rule.cosine_threshold, c["mask"],
                          mode=rule.exit_mode, reset=rule.patience_reset))
    for c in cached
  ]
  exits = np.array([int(d["exit"][0]) for d in decided], np.int32)  # batch mode: one per batch
  predictions = np.concatenate([d["prediction"] for d in decided]).astype(np.int32)
  report = inference.adaptive_report(model, variables, batches, inputs, rule, cached=cached)
  reference_exits = np.asarray(oracle["adaptive_exit"])
  reference_predictions = np.asarray(oracle["adaptive_pred"])
  return {
    "adaptive_settings": {"patience": rule.patience, "cosine_threshold": rule.cosine_threshold,
                          "batch": config.data.eval_batch_size, "exit_mode": rule.exit_mode,
                          "patience_reset": rule.patience_reset},
    "adaptive_exit": reference_exits.tolist(),
    "adaptive_exit_ours": exits.tolist(),
    "adaptive_exit_counts": np.bincount(reference_exits, minlength=len(cached[0]["logits"]))
    .tolist(),
    "adaptive_exit_mismatches": int(np.sum(exits != reference_exits)),
    "adaptive_f64_exit_mismatches": int(np.sum(np.asarray(oracle["f64_adaptive_exit"])
                                               != reference_exits)),
    "adaptive_pred_mismatches": int(np.sum(predictions != reference_predictions)),
    "adaptive_accuracy": float(oracle["adaptive_accuracy"]),
    "adaptive_accuracy_ours": float(report["accuracy"]),
    "adaptive_match": bool(
      np.array_equal(exits, reference_exits)
      and np.array_equal(predictions, reference_predictions)
      and report["accuracy"] == float(oracle["adaptive_accuracy"])
    ),
  }
