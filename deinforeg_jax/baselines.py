"""The decoupled baselines SCPL and AL on the same encoders as DeInfoReg (modules only).

``SCPLStack`` (supervised contrastive parallel learning): block ``k`` runs
``h_k = E_k(sg(h_{k-1}))`` and a contrastive head ``c_k = H_k(pool(h_k))``
(vision: ``Dense(512)-ReLU-Dense(1024)``; text: identity) trained by the
supervised contrastive loss; a final head on ``sg(h_{K-1})`` is trained by
cross-entropy.  Its only exit is that head.

``ALStack`` (associated learning, Kao & Chen 2021): block ``k`` has the encoder
``f_k``, a bridge ``b_k``, a label encoder ``g_k`` and its decoder ``inv_k``::

    s_k = f_k(sg(s_{k-1}))      t_k = g_k(sg(t_{k-1})),  t_0 = one-hot(y)
    L_k = MSE(b_k(s_k), sg(t_k)) + MSE(inv_k(t_k), t_{k-1})

Exit ``k`` predicts ``inv_0(inv_1(... inv_k(b_k(s_k))))``; the last exit is the
reference's inference path.  The label side depends on the label only, so it is
computed once per class (``t_k`` for the rows of the identity) and the
objective picks the rows of the batch's labels: the same loss, without passing
labels to the model.

Text stacks make every text encoder a block, the embedding block included, and
use the reference code's NLP heads (``models.create_model`` builds both kinds).

Parameters sit under ``block_XX/encoder`` like the other stacks (plus
``projector`` for SCPL, ``bridge``/``label_encoder``/``decoder`` for AL, and
``head`` for SCPL's final head).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from deinforeg_jax import precision, stack
from deinforeg_jax.modules import vision
from deinforeg_jax.modules.layers import DEFAULT_CONVENTIONS, Conventions

ACTIVATIONS = {"sigmoid": nn.sigmoid, "tanh": nn.tanh, "relu": nn.relu}
BASELINE_RULES = ("scpl", "al")


class DenseStack(nn.Module):
  """``Dense(w)`` for each width with ``activation`` after every layer but, unless
  ``activate_last``, the last.  ``[B, Din]`` -> ``[B, widths[-1]]``; identity if empty."""

  widths: Sequence[int]
  activation: str = "relu"
  activate_last: bool = False
  conventions: Conventions = DEFAULT_CONVENTIONS

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.widths):
      x = self.conventions.dense(x, width)
      if self.activate_last or i < len(self.widths) - 1:
        x = ACTIVATIONS[self.activation](x)
    return x


class SCPLStack(nn.Module):
  """Encoders with contrastive heads and cut gradients, plus a CE-trained final head.

  Returns ``{"logits": [final head], "contrastive": [c_0 .. c_{K-1}]}`` (``[B, C]``
  and ``[B, D]``).
  """

  encoders: Sequence[stack.EncoderFactory]
  head: Callable[..., nn.Module]
  projector: tuple[int, ...]
  pool: Callable[[Any], jax.Array] = vision.flatten
  conventions: Conventions = DEFAULT_CONVENTIONS

  @nn.compact
  def __call__(self, x: Any, train: bool) -> dict[str, list[jax.Array]]:
    contrastive = []
    for k, make_encoder in enumerate(self.encoders):
      block = _SCPLBlock(
        make_encoder, self.projector, self.pool, self.conventions, name=stack.block_name(k)
      )
      h, c = block(x, train)
      contrastive.append(c)
      x = jax.lax.stop_gradient(h)
    return {"logits": [self.head(name="head")(x, train)], "contrastive": contrastive}


class _SCPLBlock(nn.Module):
  make_encoder: stack.EncoderFactory
  projector: tuple[int, ...]
  pool: Callable[[Any], jax.Array]
  conventions: Conventions

  @nn.compact
  def __call__(self, x: Any, train: bool) -> tuple[Any, jax.Array]:
    h = self.make_encoder(name="encoder")(x, train)
    projector = DenseStack(self.projector, "relu", conventions=self.conventions, name="projector")
    return h, projector(self.pool(h))


class ALBlock(nn.Module):
  """``f`` (encoder), ``b`` (bridge), ``g`` (label encoder), ``inv`` (decoder) of one block."""

  make_encoder: stack.EncoderFactory
  label_dim: int  # width of t_{k-1}: C for the first block, else hidden
  hidden: int
  bridge_hidden: tuple[int, ...]
  activation: str
  pool: Callable[[Any], jax.Array] = vision.flatten
  conventions: Conventions = DEFAULT_CONVENTIONS

  def setup(self):
    c = self.conventions
    self.encoder = self.make_encoder()
    self.bridge = DenseStack((*self.bridge_hidden, self.hidden), self.activation, True, c)
    self.label_encoder = DenseStack((self.hidden,), self.activation, True, c)
    self.decoder = DenseStack((self.label_dim,), self.activation, True, c)

  def __call__(self, x: Any, previous_code: jax.Array, train: bool):
    """``(s, b(pool(s)), t = g(t_prev), inv(t))`` for input ``x`` and label code ``t_prev``."""
    s = self.encoder(x, train)
    code = self.label_encoder(previous_code)
    return s, self.bridge(self.pool(s)), code, self.decoder(code)

  def decode(self, code: jax.Array) -> jax.Array:
    return self.decoder(code)


class ALStack(nn.Module):
  """Associated-learning stack (module docstring).

  Returns ``logits`` (exit ``k``: ``[B, C]`` decoded scores), ``al_bridge``
  (``b_k(s_k)``, ``[B, H]``), ``al_code`` (``t_k`` per class, ``[C, H]``),
  ``al_decoded`` (``inv_k(t_k)`` per class) and ``al_previous`` (``t_{k-1}`` per
  class, the identity for block 0), one entry per block each.
  """

  encoders: Sequence[stack.EncoderFactory]
  num_classes: int
  hidden: int = 500
  bridge_hidden: tuple[int, ...] = (2500,)
  activation: str = "sigmoid"
  pool: Callable[[Any], jax.Array] = vision.flatten
  conventions: Conventions = DEFAULT_CONVENTIONS

  @nn.compact
  def __call__(self, x: Any, train: bool) -> dict[str, list[jax.Array]]:
    blocks = [
      ALBlock(
        make_encoder,
        self.num_classes if k == 0 else self.hidden,
        self.hidden,
        self.bridge_hidden,
        self.activation,
        self.pool,
        self.conventions,
        name=stack.block_name(k),
      )
      for k, make_encoder in enumerate(self.encoders)
    ]
    outputs = {key: [] for key in ("logits", "al_bridge", "al_code", "al_decoded", "al_previous")}
    previous = jnp.eye(self.num_classes, dtype=jnp.float32)
    for k, block in enumerate(blocks):
      s, bridge, code, decoded = block(x, jax.lax.stop_gradient(previous), train)
      scores = bridge
      for j in range(k, -1, -1):
        scores = blocks[j].decode(scores)
      outputs["logits"].append(precision.at_least_float32(scores))
      outputs["al_bridge"].append(bridge)
      outputs["al_code"].append(code)
      outputs["al_decoded"].append(decoded)
      outputs["al_previous"].append(previous)
      x, previous = jax.lax.stop_gradient(s), code
    return outputs
