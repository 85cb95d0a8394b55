"""Adaptive inference path: early exit when consecutive classifiers agree.

The DeInfoReg paper's adaptive inference (arXiv 2506.18193); the reference
code's rule is ``VGG_DeInfoReg_Adaptive.AdaptiveCondition`` in
``vision/model/VGG.py``.

Every block classifier of a decoupled stack is an *exit*.  Exits ``e = 0..K-1``
give logits ``y_e`` ``[B, C]``; for ``e >= 1`` exits ``e-1`` and ``e`` agree on
sample ``b`` when

    argmax(y_{e-1,b}) == argmax(y_{e,b})  and  cos(y_{e-1,b}, y_{e,b}) > τ,

with ``cos(a, b) = a·b / (max(‖a‖, ε)·max(‖b‖, ε))``, ε = 1e-8, on raw logits.
A patience counter adds the agreements; a sample exits at the first ``e`` whose
counter reaches ``patience`` (so never before exit 1), else at exit ``K-1``,
and its prediction is ``argmax(y_e)``.

* ``mode="sample"`` (default): the rule above, per sample.
* ``mode="batch"`` (the reference, whose ``torch.argmax`` has no ``dim``):
  ``argmax`` of the flattened ``[B, C]`` logits (one position per batch) and the
  batch-mean cosine decide one exit for the whole batch; padded rows
  (``mask == 0``) are ignored.
* ``reset=True`` (default): the counter restarts at 0 on a disagreement, so it
  counts *consecutive* agreements (PABEE, Zhou et al., arXiv 2006.04152);
  ``reset=False`` is the reference's never-resetting counter.  With
  ``patience=1`` both are the same rule.

Compute is counted per sample in FLOPs of the matrix products and
convolutions (2 per multiply-add; element-wise ops, BatchNorm, pooling and
activations are not counted): exit ``e`` costs what its logits *and those of
every earlier exit* need (the rule reads them all), found by dead-code
elimination on the model's jaxpr, so a block's projector counts only when its
classifier reads it (merge mode).  ``compute_fraction`` = cost of the exits
used / cost of running every exit (full depth).

``make_predict`` computes every exit and then applies the rule (exits are
counted, not skipped); ``make_skipping_predict`` runs a decoupled stack exit by
exit and stops a batch as soon as the rule has fired for all of its rows, with
the same exits and predictions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from deinforeg_jax import stack
from deinforeg_jax.config_error import ConfigError

EXIT_MODES = ("sample", "batch")
_EPS = 1e-8


def exit_blocks(params, num_exits: int | None = None) -> list[int]:
  """Block index of each exit: the ``block_XX`` that hold a ``classifier``, in order.

  ``[0, 1, 2, 3]`` for a vision stack; ``[1, 2, ...]`` for a text stack whose
  ``block_00`` (the embedding) has no classifier.  Given ``num_exits`` (the length
  of ``outputs["logits"]``) for a model without ``classifier`` scopes (the AL
  baseline), every block is an exit when the counts match, else exit ``e`` is ``e``.
  """
  blocks = sorted(k for k in params if k.startswith("block_"))
  with_classifier = [k for k in blocks if "classifier" in params[k]]
  if num_exits is not None and len(with_classifier) != num_exits:
    if len(blocks) != num_exits:
      return list(range(num_exits))
    with_classifier = blocks
  return [int(name.removeprefix("block_")) for name in with_classifier]


def _cosine(a: jax.Array, b: jax.Array) -> jax.Array:
  norm = lambda x: jnp.maximum(jnp.linalg.norm(x, axis=-1), _EPS)
  return jnp.sum(a * b, axis=-1) / (norm(a) * norm(b))


def _agree(
  prev: jax.Array, cur: jax.Array, mask: jax.Array, cosine_threshold, mode: str
) -> jax.Array:
  """Whether consecutive exits agree: ``prev``, ``cur`` ``[..., B, C]`` -> bool ``[..., B]``.

  "sample": per row, same argmax and cosine > τ.  "batch": one decision per
  ``[B, C]`` slice (same argmax of the flattened real rows, batch-mean cosine
  over real rows > τ), broadcast to every row; ``mask`` ``[B]`` float.
  """
  cosines = _cosine(prev, cur)  # [..., B]
  if mode == "sample":
    return (jnp.argmax(prev, -1) == jnp.argmax(cur, -1)) & (cosines > cosine_threshold)
  flat = lambda y: jnp.argmax(
    jnp.reshape(jnp.where(mask[:, None] > 0, y, -jnp.inf), (*y.shape[:-2], -1)), axis=-1
  )
  mean_cos = jnp.sum(cosines * mask, axis=-1) / jnp.maximum(jnp.sum(mask), 1.0)
  agree = (flat(prev) == flat(cur)) & (mean_cos > cosine_threshold)
  return jnp.broadcast_to(agree[..., None], cosines.shape)


def _count(counter: jax.Array, agreed: jax.Array, reset: bool) -> jax.Array:
  """The patience counter after one more comparison."""
  return jnp.where(agreed, counter + 1, 0 if reset else counter)


def _check_mode(mode: str) -> None:
  if mode not in EXIT_MODES:
    raise ConfigError(
      f"config.inference.exit_mode={mode!r} is unknown; choose one of {EXIT_MODES}."
    )


def decide_exits(
  logits: jax.Array,
  patience: jax.Array | int,
  cosine_threshold: jax.Array | float,
  mask: jax.Array | None = None,
  *,
  mode: str = "sample",
  reset: bool = True,
) -> dict[str, jax.Array]:
  """Exit index and prediction per sample.

  Args:
    logits: ``[K, B, C]`` stacked exit logits.
    patience: agreements needed to exit (>= 1).
    cosine_threshold: τ; agreement needs cosine strictly above it.
    mask: ``[B]`` 1 for real rows, 0 for padding (batch mode ignores padding).
    mode: "sample" or "batch" (see the module docstring).
    reset: restart the counter on a disagreement.

  Returns:
    ``{"exit": int32 [B], "prediction": int32 [B]}``.
  """
  _check_mode(mode)
  num_exits, batch, _ = logits.shape
  mask = jnp.ones((batch,), jnp.float32) if mask is None else mask.astype(jnp.float32)
  agree = _agree(logits[:-1], logits[1:], mask, cosine_threshold, mode)  # [K-1, B]

  def count(counter, agreed):
    counter = _count(counter, agreed, reset)
    return counter, counter

  _, counters = jax.lax.scan(count, jnp.zeros((batch,), jnp.int32), agree)  # [K-1, B]
  done = counters >= patience
  exits = jnp.where(jnp.any(done, axis=0), jnp.argmax(done, axis=0) + 1, num_exits - 1)
  exits = exits.astype(jnp.int32)
  predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [K, B]
  prediction = jnp.take_along_axis(predictions, exits[None], axis=0)[0]
  return {"exit": exits, "prediction": prediction}


# ------------------------------------------------------------------ FLOP accounting


def _jaxpr_flops(jaxpr, keep: set | None = None) -> float:
  """Matmul/convolution FLOPs of ``jaxpr``'s equations (all of them, or those in ``keep``)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if keep is not None and id(eqn) not in keep:
      continue
    total += _eqn_flops(eqn)
  return total


def _eqn_flops(eqn) -> float:
  name = eqn.primitive.name
  if name == "dot_general":
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    depth = math.prod(lhs[d] for d in lhs_contract)
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * depth
  if name == "conv_general_dilated":
    rhs = eqn.invars[1].aval.shape
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
    per_output = rhs[rhs_spec[1]] * math.prod(rhs[d] for d in rhs_spec[2:])
    return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
  inner = 0.0
  for value in eqn.params.values():
    for sub in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(sub, jax.extend.core.ClosedJaxpr):
        sub = sub.jaxpr
      if isinstance(sub, jax.extend.core.Jaxpr):
        flops = _jaxpr_flops(sub)
        inner = max(inner, flops) if name == "cond" else inner + flops
  return inner * eqn.params.get("length", 1)  # scan bodies run ``length`` times


def _live_equations(jaxpr, outputs: Iterable) -> set:
  """Ids of the equations the given outputs depend on (backward liveness)."""
  needed = {v for v in outputs if isinstance(v, jax.extend.core.Var)}
  keep = set()
  for eqn in reversed(jaxpr.eqns):
    if any(v in needed for v in eqn.outvars):
      keep.add(id(eqn))
      needed.update(v for v in eqn.invars if isinstance(v, jax.extend.core.Var))
  return keep


def exit_flops(model, variables, input_spec: jax.ShapeDtypeStruct) -> dict[str, np.ndarray]:
  """Per-sample inference FLOPs of each exit.

  Args:
    model: a Flax module returning ``{"logits": [K x [B, C]]}``.
    variables: its variables (arrays or ``ShapeDtypeStruct``).
    input_spec: one sample's input, e.g. ``ShapeDtypeStruct((1, 8, 8, 1), float32)``.

  Returns:
    ``{"adaptive": [K], "single": [K]}``: ``adaptive[e]`` the cost of exits
    ``0..e`` together (what the exit rule needs to stop at ``e``), ``single[e]``
    the cost of exit ``e`` alone (a fixed-depth model cut after that exit).
  """
  spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), variables)
  closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False)["logits"])(spec, input_spec)
  jaxpr, outs = closed.jaxpr, closed.jaxpr.outvars
  scale = 1.0 / input_spec.shape[0]
  adaptive = [_jaxpr_flops(jaxpr, _live_equations(jaxpr, outs[: e + 1])) for e in range(len(outs))]
  single = [_jaxpr_flops(jaxpr, _live_equations(jaxpr, outs[e : e + 1])) for e in range(len(outs))]
  return {"adaptive": np.array(adaptive) * scale, "single": np.array(single) * scale}


# ------------------------------------------------------------------ jitted prediction


def make_predict(
  model, *, mode: str = "sample", reset: bool = True
) -> Callable[..., dict[str, jax.Array]]:
  """Jitted ``(variables, x, mask, patience, cosine_threshold) -> {"exit", "prediction"}``.

  One program runs every exit and applies ``decide_exits``; ``patience`` and
  ``cosine_threshold`` are traced, so a threshold sweep compiles once.
  """

  def predict(variables, x, mask, patience, cosine_threshold):
    logits = jnp.stack(model.apply(variables, x, train=False)["logits"])
    return decide_exits(logits, patience, cosine_threshold, mask, mode=mode, reset=reset)

  return jax.jit(predict)


# ------------------------------------------------------------------ skipping prediction

SKIP_METHODS = ("host", "cond")


def _stages(model) -> list[list[tuple[str, Any]]]:
  """``stages[e]``: the ``(block name, stack.Block)`` run after exit ``e-1`` to give exit ``e``.

  A block without classifier (a text stack's embedding block) joins the next exit's stage.
  """
  if not isinstance(model, stack.DecoupledStack):
    raise ConfigError(
      f"skipping inference runs a decoupled stack block by block; a {type(model).__name__} "
      "(config.rule other than 'deinforeg', or config.grow.side_split set) is not supported."
    )
  stages, pending = [], []
  for i, spec in enumerate(model.blocks):
    pending.append((stack.block_name(model.first_block + i), stack.Block(spec, model.num_classes)))
    if spec.has_classifier:
      stages.append(pending)
      pending = []
  return stages


def _stage_variables(variables, stage) -> list[dict]:
  """Each block's own variables (``{collection: variables[collection][name]}``)."""
  return [{c: tree[name] for c, tree in variables.items() if name in tree} for name, _ in stage]


def _run_stage(stage, stage_variables: list[dict], h):
  """``(h, logits [B, C])`` after the stage's blocks, in inference mode."""
  for (_, block), block_variables in zip(stage, stage_variables):
    h, _, logits = block.apply(block_variables, h, False)
  return h, logits


def _initial_state(batch: int) -> dict[str, jax.Array]:
  zeros = jnp.zeros((batch,), jnp.int32)
  return {"counter": zeros, "exit": zeros, "prediction": zeros, "done": jnp.zeros((batch,), bool)}


def _step(e, prev, logits, state, mask, patience, cosine_threshold, mode, reset):
  """The rule's state after comparing exit ``e``'s logits with exit ``e-1``'s (``[B, C]`` each).

  A row whose counter first reaches ``patience`` exits at ``e`` with ``argmax(logits)``.
  """
  agreed = _agree(prev, logits, mask, cosine_threshold, mode)
  counter = _count(state["counter"], agreed, reset)
  fire = (counter >= patience) & ~state["done"]
  return {
    "counter": counter,
    "exit": jnp.where(fire, e, state["exit"]).astype(jnp.int32),
    "prediction": jnp.where(fire, jnp.argmax(logits, -1), state["prediction"]).astype(jnp.int32),
    "done": state["done"] | fire,
  }


def _all_done(state, mask) -> jax.Array:
  """Scalar bool: every real row (``mask > 0``) has exited."""
  return jnp.all(state["done"] | (mask <= 0))


def _finish(e, logits, state) -> dict[str, jax.Array]:
  """Outputs when the batch stops after exit ``e``: rows not yet exited take exit ``e``."""
  return {
    "exit": jnp.where(state["done"], state["exit"], e).astype(jnp.int32),
    "prediction": jnp.where(state["done"], state["prediction"], jnp.argmax(logits, -1)).astype(
      jnp.int32
    ),
    "stop_exit": jnp.asarray(e, jnp.int32),
  }


def make_skipping_predict(
  model, *, mode: str = "sample", reset: bool = True, method: str = "cond"
) -> Callable[..., dict[str, jax.Array]]:
  """``(variables, x, mask, patience, cosine_threshold) -> {"exit", "prediction", "stop_exit"}``
  that runs a ``stack.DecoupledStack`` exit by exit and stops once every real row has exited.

  Exit ``e`` runs only the blocks after exit ``e-1``'s block and exit ``e``'s head;
  after each exit ``e >= 1`` the rule of ``decide_exits`` is advanced one step
  (counter ``c_b ← c_b + 1`` on agreement, else ``0`` with ``reset``), and the batch
  stops at the first ``e`` where every row with ``mask > 0`` has reached
  ``patience`` (``mode="batch"``: all rows at once, the reference's rule), else at
  ``K-1``.  ``exit`` and ``prediction`` (int32 ``[B]``) equal ``decide_exits`` on
  the full-depth logits for every real row; padded rows that had not exited take
  ``stop_exit`` (int32 scalar: the last exit computed).  Batch size 1 is per-sample
  inference, where both modes are the same rule.

  ``method="cond"`` (default): one jitted program, exit ``e+1`` nested in the
  false branch of ``lax.cond(stop after e)``.  ``method="host"``: one jitted
  program per exit, the stop test read on the host between them (a dispatch and
  a device sync per exit).  ``patience`` and ``cosine_threshold`` are traced in
  both.  On CPU ``cond`` was faster than ``host``, or within noise, at every
  batch size measured (``benchmarks/adaptive_inference.py``; docs/results.md).
  """
  _check_mode(mode)
  if method not in SKIP_METHODS:
    raise ValueError(f"method={method!r} is unknown; choose one of {SKIP_METHODS}.")
  stages = _stages(model)
  last = len(stages) - 1
  step = lambda e, prev, logits, state, mask, p, tau: _step(
    e, prev, logits, state, mask, p, tau, mode, reset
  )

  if method == "cond":

    def predict(variables, x, mask, patience, cosine_threshold):
      mask = mask.astype(jnp.float32)

      def from_exit(e, h, prev, state):
        h, logits = _run_stage(stages[e], _stage_variables(variables, stages[e]), h)
        state = step(e, prev, logits, state, mask, patience, cosine_threshold)
        if e == last:
          return _finish(e, logits, state)
        return jax.lax.cond(
          _all_done(state, mask),
          lambda: _finish(e, logits, state),
          lambda: from_exit(e + 1, h, logits, state),
        )

      h, logits = _run_stage(stages[0], _stage_variables(variables, stages[0]), x)
      state = _initial_state(x.shape[0])
      return from_exit(1, h, logits, state) if last else _finish(0, logits, state)

    return jax.jit(predict)

  def first(stage_variables, x):
    h, logits = _run_stage(stages[0], stage_variables, x)
    return h, logits, _initial_state(x.shape[0])

  def make_next(e):
    def next_exit(stage_variables, h, prev, state, mask, patience, cosine_threshold):
      h, logits = _run_stage(stages[e], stage_variables, h)
      state = step(e, prev, logits, state, mask, patience, cosine_threshold)
      return h, logits, state, _all_done(state, mask)

    return jax.jit(next_exit)

  first, rest, finish = jax.jit(first), [make_next(e) for e in range(1, last + 1)], jax.jit(_finish)

  def predict(variables, x, mask, patience, cosine_threshold):
    mask = jnp.asarray(mask, jnp.float32)
    h, logits, state = first(_stage_variables(variables, stages[0]), x)
    e = 0
    for e in range(1, last + 1):
      h, logits, state, stop = rest[e - 1](
        _stage_variables(variables, stages[e]), h, logits, state, mask, patience, cosine_threshold
      )
      if e < last and bool(stop):
        break
    return finish(e, logits, state)

  return predict


def exit_logits(
  model, variables, batches: Iterable[dict], inputs: Callable, kept: dict | None = None
) -> list[dict]:
  """Every test batch's stacked exit logits ``[K, B, C]`` (host), label and mask.

  ``kept``: a dict the caller keeps for ``model`` (or an equal model) between calls; the
  jitted program is kept there, so later calls skip tracing it.
  """
  kept = {} if kept is None else kept
  if "exit logits" not in kept:
    kept["exit logits"] = jax.jit(lambda v, x: jnp.stack(model.apply(v, x, train=False)["logits"]))
  apply = kept["exit logits"]
  return [
    {
      "logits": np.asarray(apply(variables, inputs(batch))),
      "label": np.asarray(batch["label"]),
      "mask": np.asarray(batch["mask"], np.float32),
    }
    for batch in batches
  ]


_decide = jax.jit(decide_exits, static_argnames=("mode", "reset"))


def summarize(
  cached: list[dict],
  flops: dict[str, np.ndarray],
  blocks: list[int],
  patience: int,
  cosine_threshold: float,
  *,
  mode: str = "sample",
  reset: bool = True,
) -> dict[str, Any]:
  """Accuracy, mean exit block and compute fraction of the rule over cached exit logits.

  Batch mode decides per cached batch (the evaluation batch), as the reference.
  ``mean_exit_block`` is the mean 0-based block index (``block_XX``) of the exits taken.
  """
  correct = count = block_sum = cost = 0.0
  exit_counts = np.zeros(len(blocks))
  block_ids = np.asarray(blocks, np.float64)
  for item in cached:
    out = _decide(item["logits"], patience, cosine_threshold, item["mask"], mode=mode, reset=reset)
    exits, mask = np.asarray(out["exit"]), item["mask"]
    correct += float(np.sum((np.asarray(out["prediction"]) == item["label"]) * mask))
    count += float(np.sum(mask))
    block_sum += float(np.sum(block_ids[exits] * mask))
    cost += float(np.sum(flops["adaptive"][exits] * mask))
    exit_counts += np.bincount(exits, weights=mask, minlength=len(blocks))
  count = max(count, 1.0)
  return {
    "accuracy": correct / count,
    "mean_exit_block": block_sum / count,
    "compute_fraction": cost / count / float(flops["adaptive"][-1]),
    "patience": int(patience),
    "cosine_threshold": float(cosine_threshold),
    "exit_mode": mode,
    "patience_reset": bool(reset),
    "exit_fractions": (exit_counts / count).tolist(),
    "exit_blocks": list(blocks),
  }


def static_exits(cached: list[dict], flops: dict[str, np.ndarray], blocks: list[int]) -> list[dict]:
  """Accuracy and compute fraction of always exiting at exit ``e`` (no rule)."""
  rows = []
  for e, block in enumerate(blocks):
    hits = sum(
      float(np.sum((np.argmax(c["logits"][e], -1) == c["label"]) * c["mask"])) for c in cached
    )
    count = max(sum(float(np.sum(c["mask"])) for c in cached), 1.0)
    rows.append(
      {
        "exit_block": block,
        "accuracy": hits / count,
        "compute_fraction": float(flops["single"][e] / flops["adaptive"][-1]),
      }
    )
  return rows


def exit_accuracy(cached: list[dict]) -> np.ndarray:
  """Per-exit accuracy ``[K]`` over cached exit logits (``exit_logits``)."""
  hits = sum(
    np.sum((np.argmax(c["logits"], -1) == c["label"][None]) * c["mask"][None], axis=1)
    for c in cached
  )
  return np.asarray(hits, np.float64) / max(sum(float(np.sum(c["mask"])) for c in cached), 1.0)


def adaptive_report(
  model,
  variables,
  batches: Iterable[dict],
  inputs: Callable,
  inference_cfg,
  cached=None,
  kept: dict | None = None,
) -> dict[str, Any] | None:
  """``results.json``'s ``adaptive_inference`` for ``config.inference``; None for < 2 exits.

  ``inputs(batch)`` is the model input of a batch (``train.model_inputs``).  ``cached``:
  the ``exit_logits`` of those batches when already computed (the run's last test pass),
  so the test set is not run twice.  ``kept``: as in ``exit_logits``; the exit FLOPs
  are kept there too.
  """
  kept = {} if kept is None else kept
  variables = flax.core.unfreeze(variables)
  batches = iter(batches)
  first = next(batches)
  if cached is None:
    cached = exit_logits(model, variables, itertools.chain([first], batches), inputs, kept)
  num_exits = cached[0]["logits"].shape[0]
  if num_exits < 2:
    return None
  blocks = exit_blocks(variables["params"], num_exits)
  x = np.asarray(inputs(first))
  if "exit flops" not in kept:
    spec = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    kept["exit flops"] = exit_flops(model, variables, spec)
  flops = kept["exit flops"]
  return summarize(
    cached,
    flops,
    blocks,
    inference_cfg.patience,
    inference_cfg.cosine_threshold,
    mode=inference_cfg.exit_mode,
    reset=inference_cfg.patience_reset,
  )
