"""The train state and the one train-step / eval-step builder of every engine.

``make_train_step`` sums every local loss of the model it is given and takes one
``jax.value_and_grad``: for the whole stack (data-parallel engine, one XLA
program for all blocks) or for a pipeline stage's blocks (``stack.DecoupledStack``
with ``first_block`` and ``with_carry``).  Because the stack cuts gradients at
block boundaries both give the same update as training the blocks one after
another.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from deinforeg_jax import grad_norms, growth, rules

Batch = dict[str, jax.Array]
TrainStep = Callable[..., tuple["TrainState", dict[str, jax.Array], Any]]


def model_inputs(batch: Batch) -> jax.Array:
  """The model's input in ``batch``: ``tokens`` ``[B, T]`` int32 for text, else ``image``."""
  return batch["tokens"] if "tokens" in batch else batch["image"]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: optax.OptState


def create_train_state(
  model: nn.Module,
  tx: optax.GradientTransformation,
  rng: jax.Array,
  input_shape: tuple[int, ...],
) -> TrainState:
  """Initialise parameters with a dummy ``[2, *input_shape]`` batch."""
  variables = model.init(rng, jnp.zeros((2, *input_shape), jnp.float32), train=False)
  params = variables["params"]
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get("batch_stats", {}),
    opt_state=tx.init(params),
  )


def _make_loss(model, objective, num_classes: int, loss_cfg, seed: int, frozen: frozenset[str]):
  """``loss(params, state, inputs, labels) -> (total, (metrics, batch_stats, carry))``: the
  summed local losses of ``model`` in training mode (BatchNorm on the batch statistics)."""

  def loss(params, state: TrainState, inputs, labels):
    outputs, updated = model.apply(
      {"params": growth.stop_frozen(params, frozen), "batch_stats": state.batch_stats},
      inputs,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": jax.random.fold_in(jax.random.key(seed), state.step)},
    )
    carry = outputs.pop("carry", None)
    total, metrics = objective(outputs, labels, num_classes, loss_cfg)
    return total, (metrics, updated["batch_stats"], carry)

  return loss


def make_train_step(
  model: nn.Module,
  objective: rules.Objective,
  tx: optax.GradientTransformation,
  num_classes: int,
  loss_cfg,
  *,
  log_grad_norms: bool = False,
  seed: int = 0,
  frozen: frozenset[str] = frozenset(),
) -> TrainStep:
  """``(state, inputs [B, ...], labels [B]) -> (state, metrics, carry)``.

  ``metrics`` holds ``[num_exits]`` arrays per loss term and the scalar
  ``total_loss``; with ``log_grad_norms`` also ``grad_norm``, the ``[num_layers]``
  per-layer gradient norms of ``grad_norms.layer_grad_norms`` (before the update).
  ``carry`` is the model's ``outputs["carry"]`` (a pipeline stage's detached output,
  the next stage's input), else None.  Dropout (text Transformer) draws from
  ``fold_in(key(seed), state.step)``.  Blocks named in ``frozen`` get no gradient
  and keep their parameters, BatchNorm statistics and optimizer state bit for bit
  (``growth.keep_frozen``).
  """
  loss = _make_loss(model, objective, num_classes, loss_cfg, seed, frozen)

  def train_step(state: TrainState, inputs, labels):
    (total, (metrics, batch_stats, carry)), grads = jax.value_and_grad(loss, has_aux=True)(
      state.params, state, inputs, labels
    )
    if log_grad_norms:
      metrics["grad_norm"] = grad_norms.layer_grad_norms(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params, batch_stats, opt_state = growth.keep_frozen(
      tx, frozen, state, params, batch_stats, opt_state
    )
    metrics["total_loss"] = total
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics, carry

  return train_step


# Arrays of at most this many elements are checked as one concatenated vector (``all_finite``).
_SMALL_ELEMENTS = 4096


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value in ``tree`` is finite (a scalar bool array).

  ``x·0`` is 0 for finite ``x`` and NaN for ±inf and NaN, so the tree is finite iff
  ``Σ x·0 = 0`` (a plain ``Σ x`` could overflow).  Written so because XLA:CPU compiles a
  float sum several times faster than an ``all(isfinite(x))`` reduction (~9 vs ~50 ms
  per distinct shape); the small arrays are summed as one concatenated vector.
  """
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  small = [x.reshape(-1) for x in leaves if x.size <= _SMALL_ELEMENTS]
  terms = [jnp.sum(x * 0) for x in leaves if x.size > _SMALL_ELEMENTS]
  if small:
    terms.append(jnp.sum(jnp.concatenate(small) * 0))
  return jnp.sum(jnp.stack(terms)) == 0 if terms else jnp.array(True)


def make_check_step(
  model: nn.Module,
  objective: rules.Objective,
  num_classes: int,
  loss_cfg,
  *,
  seed: int = 0,
  frozen: frozenset[str] = frozenset(),
) -> Callable[..., tuple[dict[str, jax.Array], Any]]:
  """``(state, inputs, labels) -> ({"total_loss", "finite"}, carry)``: is ``state`` good to save?

  ``total_loss`` is the summed loss of the state's own parameters on a batch (a
  forward pass, no update): an exploding update leaves finite parameters whose next
  loss is not.  ``finite`` maps every top-level parameter entry (``block_00``, ...,
  ``head``) and ``"optimizer state"`` to whether all its values are finite.
  """
  loss = _make_loss(model, objective, num_classes, loss_cfg, seed, frozen)

  def check_step(state: TrainState, inputs, labels):
    total, (_, _, carry) = loss(state.params, state, inputs, labels)
    finite = {name: all_finite(tree) for name, tree in state.params.items()}
    finite["optimizer state"] = all_finite(state.opt_state)
    return {"total_loss": total, "finite": finite}, carry

  return check_step


def state_problem(check: dict[str, Any]) -> str:
  """What makes a checked state unfit to save (``make_check_step``'s host output), or ""."""
  bad = [name for name, ok in check["finite"].items() if not ok]
  if bad:
    return f"non-finite values in {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
  if not np.isfinite(check["total_loss"]):
    return f"the loss of the updated parameters is {float(check['total_loss'])} (an exploding update)"
  return ""


def make_eval_step(model: nn.Module) -> Callable[..., tuple[dict[str, jax.Array], Any]]:
  """``(state, inputs, labels, mask) -> ({"predictions": [K, B], "correct": [K]}, carry)``.

  ``correct`` counts masked-in examples whose prediction equals the label; ``carry``
  as in ``make_train_step``.
  """

  def eval_step(state: TrainState, inputs, labels, mask):
    outputs = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, inputs, train=False
    )
    carry = outputs.pop("carry", None)
    predictions = jnp.stack([jnp.argmax(logits, axis=-1) for logits in outputs["logits"]])
    hits = (predictions == labels[None]).astype(jnp.float32) * mask[None]
    return {"predictions": predictions.astype(jnp.int32), "correct": jnp.sum(hits, axis=1)}, carry

  return eval_step


def accuracy(batches, count_correct: Callable[[Batch], tuple[Any, Any]]) -> np.ndarray:
  """Per-exit accuracy ``[K]`` over ``batches``; ``count_correct(batch) -> (correct [K], count)``.

  Sums stay on the device until the end, so evaluation never waits per batch.
  """
  correct, count = None, 0.0
  for batch in batches:
    hits, n = count_correct(batch)
    correct, count = (hits, n) if correct is None else (correct + hits, count + n)
  correct, count = jax.device_get((correct, count))
  return np.asarray(correct) / max(float(count), 1.0)
