"""Stage programs: a run of consecutive blocks and its train/eval steps on one device.

A stage holds blocks ``[first_block, first_block + len(blocks))`` of a
``DecoupledStack``, named ``block_XX`` exactly as in the full stack, so stage
states convert losslessly to and from the one-program ``TrainState``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from deinforeg_jax import rules, stack, train

LOCAL_RULES = ("deinforeg",)  # rules whose loss is a sum of per-block local losses


class StageStack(nn.Module):
  """Blocks ``first_block ...`` of a ``DecoupledStack``, named ``block_XX`` as in the full stack.

  Returns ``({"z": [...], "logits": [...]}, stop_gradient(h_last))``.
  """

  blocks: Sequence[stack.BlockSpec]
  num_classes: int
  first_block: int = 0

  @nn.compact
  def __call__(self, x: Any, train: bool) -> tuple[dict[str, list[jax.Array]], Any]:
    outputs: dict[str, list[jax.Array]] = {"z": [], "logits": []}
    for i, spec in enumerate(self.blocks):
      block = stack.Block(spec, self.num_classes, name=stack.block_name(self.first_block + i))
      h, z, logits = block(x, train)
      outputs["z"].append(z)
      outputs["logits"].append(logits)
      x = jax.lax.stop_gradient(h)
    return outputs, x


def make_stage_train_step(
  stage: StageStack,
  objective: rules.Objective,
  tx: optax.GradientTransformation,
  num_classes: int,
  loss_cfg,
):
  """``(state, x, labels) -> (state, stop_gradient(h), metrics)``.

  ``metrics`` holds ``[blocks]`` arrays per loss term and the stage's scalar ``total``.
  """

  def step(state: train.TrainState, x, labels):

    def loss_fn(params):
      (outputs, h), updated = stage.apply(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      total, metrics = objective(outputs, labels, num_classes, loss_cfg)
      return total, (metrics, updated["batch_stats"], h)

    (total, (metrics, batch_stats, h)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics["total"] = total
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, h, metrics

  return step


def make_stage_eval_step(stage: StageStack):
  """``(state, x, labels, mask) -> (h, correct [blocks])``."""

  def step(state: train.TrainState, x, labels, mask):
    outputs, h = stage.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, x, train=False
    )
    predictions = jnp.stack([jnp.argmax(logits, axis=-1) for logits in outputs["logits"]])
    hits = (predictions == labels[None]).astype(jnp.float32) * mask[None]
    return h, jnp.sum(hits, axis=1)

  return step


def stage_input_shapes(
  stages: Sequence[StageStack], input_shape: tuple[int, ...]
) -> list[tuple[int, ...]]:
  """One example's input shape for each stage (the previous stage's output shape)."""
  shapes, shape = [], tuple(input_shape)
  for stage in stages:
    shapes.append(shape)
    (_, h), _ = jax.eval_shape(
      functools.partial(stage.init_with_output, train=False),
      jax.random.key(0),
      jax.ShapeDtypeStruct((2, *shape), jnp.float32),
    )
    shape = tuple(h.shape[1:])
  return shapes
