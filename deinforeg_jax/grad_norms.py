"""Per-layer gradient norms, ordered by depth (``config.train.log_grad_norms``).

A *layer* is a kernel (a parameter with more than one dimension) inside a
block's ``encoder``: the backbone's conv, dense or embedding weights, not the
projectors, classifiers or heads.  Layers are ordered by block and then by
their module path with numbers compared as numbers (``ConvBNReLU_10`` after
``ConvBNReLU_9``), which is the order of depth for the VGG and text encoders.
For each layer ``l`` the norm is ``‖∂L/∂W_l‖₂`` (Frobenius) of the summed loss
that the train step differentiates.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp


def _natural_key(path: str) -> list:
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _layers(tree) -> list[tuple[str, jax.Array]]:
  """``(path, leaf)`` of every encoder kernel of ``tree``, in depth order."""
  found = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    if "encoder" in keys and keys[0].startswith("block_") and jnp.ndim(leaf) > 1:
      found.append(("/".join(keys), leaf))
  return sorted(found, key=lambda item: _natural_key(item[0]))


def layer_paths(params) -> list[str]:
  """Names of the layers whose gradient norms ``layer_grad_norms`` returns, in order."""
  return [path for path, _ in _layers(params)]


def layer_grad_norms(grads) -> jax.Array:
  """``[num_layers]`` float32: ``‖g_l‖₂`` per encoder kernel, in ``layer_paths`` order."""
  layers = _layers(grads)
  if not layers:
    return jnp.zeros((0,), jnp.float32)
  return jnp.stack([jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)))) for _, g in layers])
