"""The original's adaptive inference (``*_DeInfoReg_Adaptive.inference``) on an oracle's eval set.

Used by ``make_oracle.py --adaptive`` after the trajectory is recorded: the trained
``state_dict`` (float32, and its float64 twin) is loaded into the original's
``VGG_DeInfoReg_Adaptive`` (made small like ``VGG_DeInfoReg``, ``oracle_vision``) or
``LSTM_DeInfoReg_Adaptive`` (``record_lstm``), whose ``inference`` runs
unchanged in eval mode on the eval set cut into batches of ``--adaptive_batch``.  Its rule (one
decision per batch: ``torch.argmax`` of the whole ``[B, C]`` logits, the batch-mean cosine,
a counter that never resets; exit ``e`` when the counter reaches ``--patience``, else the last)
is the original's; this module only reads which exit it took: forward hooks count the
``classifier[k]`` calls of one ``inference`` (exit = calls - 1), and the logits it returned must
be that classifier's output.

Arrays: ``adaptive_exit [NB]`` (int32, 0-based exit of eval batch ``b`` = rows
``[b * batch, (b + 1) * batch)``), ``adaptive_pred [X]`` (int32, argmax of the returned
logits), ``adaptive_accuracy`` (float64, correct / X, the original's ``accuracy`` weighted by
batch size), and the float64 run's ``f64_adaptive_exit`` / ``f64_adaptive_pred``.
"""

from __future__ import annotations

import numpy as np


def add_arguments(parser) -> None:
  parser.add_argument("--adaptive", action="store_true",
                      help="also record the original's *_DeInfoReg_Adaptive exits (rule deinforeg)")
  parser.add_argument("--patience", type=int, default=1,
                      help="the original's --patiencethreshold (adaptive)")
  parser.add_argument("--cosine_threshold", type=float, default=0.8,
                      help="the original's --cosinesimthreshold (adaptive)")
  parser.add_argument("--adaptive_batch", type=int, default=8,
                      help="eval batch size of the adaptive inference (one decision per batch)")


def meta(a) -> dict:
  """The adaptive settings for the oracle's ``meta``."""
  return dict(adaptive=dict(patience=a.patience, cosine_threshold=a.cosine_threshold,
                            batch=a.adaptive_batch, exit_mode="batch", patience_reset=False))


def _run(model, x_eval, y_eval, batch, torch):
  """``(exits [NB], predictions [X])`` of ``model.inference`` batch by batch."""
  called = []
  for k, classifier in enumerate(model.classifier):
    classifier.register_forward_hook(
      lambda module, inputs, output, k=k: called.append((k, output)))
  model.eval()
  exits, predictions = [], []
  with torch.no_grad():
    for start in range(0, len(x_eval), batch):
      called.clear()
      out = model(x_eval[start:start + batch], y_eval[start:start + batch])
      logits = out[0] if isinstance(out, tuple) else out
      exit_index, exit_logits = called[-1]
      if [k for k, _ in called] != list(range(exit_index + 1)) or logits is not exit_logits:
        raise RuntimeError("the adaptive inference did not return its last classifier's output")
      exits.append(exit_index)
      predictions.append(torch.argmax(logits, dim=1).numpy())
  return np.array(exits, np.int32), np.concatenate(predictions).astype(np.int32)


def record_lstm(a, arrays) -> dict:
  """The adaptive arrays of an LSTM DeInfoReg oracle (``oracle_text``'s ``arrays``): the
  original's ``LSTM_DeInfoReg_Adaptive``, built by its ``set_model`` with ``oracle_text``'s
  small arguments, on the oracle's eval token ids (collated as one batch, so padded to the
  longest eval text) cut into batches; its ``inference`` returns ``(logits, exit)``."""
  import oracle_text  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from nlp import setting  # pylint: disable=import-outside-toplevel

  name = "LSTM_DeInfoReg_Adaptive"
  args = oracle_text._model_args(a, name, 4)  # pylint: disable=protected-access
  args.patiencethreshold, args.cosinesimthreshold = a.patience, a.cosine_threshold
  final = lambda prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
  x_eval = torch.from_numpy(arrays["x_eval"].astype(np.int64))
  y_eval = torch.from_numpy(arrays["y_eval"])
  return record(lambda: setting.set_model(name, args), final("final/"), final("f64_final/"),
                x_eval, y_eval, a, torch)


def record(make_adaptive, final32, final64, x_eval, y_eval, a, torch) -> dict:
  """The adaptive arrays (module docstring) of the trained ``state_dict``s ``final32`` /
  ``final64`` (numpy) in ``make_adaptive()``'s model; ``x_eval``/``y_eval`` torch tensors."""
  arrays = {}
  for prefix, final, dtype in (("", final32, torch.float32), ("f64_", final64, torch.float64)):
    model = make_adaptive().to(dtype)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in final.items()})
    x = x_eval.to(dtype) if x_eval.is_floating_point() else x_eval
    exits, predictions = _run(model, x, y_eval, a.adaptive_batch, torch)
    arrays[f"{prefix}adaptive_exit"] = exits
    arrays[f"{prefix}adaptive_pred"] = predictions
  arrays["adaptive_accuracy"] = np.float64(np.mean(arrays["adaptive_pred"] == y_eval.numpy()))
  return arrays
