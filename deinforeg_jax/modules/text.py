"""Text blocks: embedding, bidirectional LSTM, Transformer encoder.

As ``LSTM_DeInfoReg`` (``nlp/model/LSTM.py``) and ``Transformer_DeInfoReg``
(``nlp/model/Transformer.py``, ``nlp/model/transformer/``) in the reference code,
github.com/ianzih/Decoupled-Supervised-Learning-for-Information-Regularization.

Pure linen encoders, no training logic.  Tokens are ``int32 [B, T]`` with the pad
id 0 (right padding); the padding mask is ``tokens != 0``.  Every encoder returns
a *text state* dict that the next block reads::

  {"h": [B, T, D] sequence, "mask": bool [B, T], "pooled": [B, D'] local-loss input}

and the LSTM adds ``"carry": (c, h)``, each ``[2, B, H]`` (forward, backward).
``pooled`` is what the block's projector (identity for text) and classifier see.  Under
``conventions.dtype="bfloat16"`` ``h`` is bf16 and ``pooled`` float32 (a float32 mean):

* embedding: the masked mean over real tokens (``pool="masked"``, the default) or
  the reference's plain mean over all ``T`` positions, padding included
  (``pool="all"``);
* BiLSTM: ``(h_fwd + h_bwd) / 2`` of the final hidden states, ``[B, H]``;
* Transformer: the masked mean over real tokens.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from deinforeg_jax import precision
from deinforeg_jax.modules.layers import DEFAULT_CONVENTIONS, Conventions
from deinforeg_jax.config_error import ConfigError

PAD_ID = 0
EMBEDDING_POOLS = ("masked", "all")
LSTM_PADDING = ("masked", "read")
LSTM_BIASES = (2, 1)  # PyTorch's b_ih and b_hh | one gate bias (runs saved before 2026-12-07)
LSTM_REMATS = ("auto", "on", "off")
LAYER_NORMS = ("unbiased_std", "flax")  # the reference's | Flax's (runs before 2026-12-07)

TextState = dict[str, jax.Array]


def resolve_lstm_remat(name: str, platform: str | None = None) -> bool:
  """Whether the BiLSTM's scan step is rematerialised: ``name``, with ``"auto"`` on for GPU/TPU
  (where memory binds: ``imdb_lstm``'s train step on v5e:2x2 keeps 1.06 instead of 2.78 GiB of
  temporaries) and off on the CPU (where the recomputed recurrent matmul costs step time and
  memory rarely binds).  ``platform``: default the default backend's."""
  if name != "auto":
    return name == "on"
  return (platform or jax.default_backend()) != "cpu"


def masked_mean(h: jax.Array, mask: jax.Array) -> jax.Array:
  """``Σ_t mask_t h_t / max(Σ_t mask_t, 1)``: ``[B, T, D]``, ``[B, T]`` -> ``[B, D]``.

  An all-padding row pools to zeros.  Summed in float32 whatever ``h``'s dtype.
  """
  h = precision.at_least_float32(h)
  weights = mask.astype(h.dtype)[..., None]
  count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)
  return jnp.sum(h * weights, axis=1) / count


def pooled(state: TextState) -> jax.Array:
  """The local-loss input of a text block (the ``pool`` of its ``BlockSpec``)."""
  return state["pooled"]


class Embedding(nn.Module):
  """Token embedding, its own block ("block 0": the reference gives it a local loss too).

  ``tokens [B, T]`` (any dtype holding integer ids; cast to int32) -> text state
  with ``h = E[tokens]`` ``[B, T, emb_dim]``.  The table is the parameter
  ``embedding`` ``[vocab_size, emb_dim]``, initialised ``N(0, 1)`` (as
  ``torch.nn.Embedding``) and usually replaced by GloVe vectors after init
  (``data.glove``).  ``freeze`` stops its gradient, so no loss trains it.  ``h`` is
  cast to the compute dtype; ``pooled`` is pooled from the float32 rows.
  """

  vocab_size: int
  emb_dim: int
  pool: str = "masked"
  freeze: bool = False
  conventions: Conventions = DEFAULT_CONVENTIONS

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool) -> TextState:
    del train
    if self.pool not in EMBEDDING_POOLS:
      raise ConfigError(
        f"config.model.embedding_pool={self.pool!r} is unknown; choose one of {EMBEDDING_POOLS}."
      )
    tokens = jnp.asarray(tokens).astype(jnp.int32)
    mask = tokens != PAD_ID
    table = self.param(
      "embedding", nn.initializers.normal(1.0), (self.vocab_size, self.emb_dim), jnp.float32
    )
    if self.freeze:
      table = jax.lax.stop_gradient(table)
    h = jnp.take(table, tokens, axis=0)
    u = masked_mean(h, mask) if self.pool == "masked" else jnp.mean(h, axis=1)
    return {"h": self.conventions.cast(h), "mask": mask, "pooled": u}


def reverse_within_length(x: jax.Array, lengths: jax.Array) -> jax.Array:
  """Reverses each row's first ``lengths[b]`` steps and leaves the rest in place.

  ``x [B, T, ...]``, ``lengths [B]``; applying it twice is the identity.
  """
  t = jnp.arange(x.shape[1])[None, :]
  index = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


class BiLSTM(nn.Module):
  """One bidirectional LSTM layer, as ``torch.nn.LSTM(bidirectional=True)``.

  Input: a text state with ``h [B, T, D]``.  Output ``h [B, T, 2H]`` is
  ``[forward ; backward]`` at each position in the original order, ``pooled`` is
  ``(h_fwd + h_bwd) / 2`` of the final hidden states and ``carry`` the final
  ``(c, h)`` ``[2, B, H]`` each.  The initial ``(c, h)`` is the input state's
  ``initial`` when it has one (a grown side block: the old top block's
  ``carry``), else zero.  Gates ``i, f, g, o`` and parameters as in PyTorch: ``input_kernel``
  (``W_ih``), ``recurrent_kernel`` (``W_hh``) and two biases, ``bias`` (``b_ih``)
  and ``recurrent_bias`` (``b_hh``), each ``U(-1/sqrt(H), 1/sqrt(H))``: their sum
  enters the gates, and each takes its own optimizer step, so an Adam or SGD
  update moves the sum twice as far as one bias would.  The input projection of
  every step is one matmul before the scan, and both directions run in one
  ``lax.scan`` over time with stacked ``[2, ...]`` weights.  ``biases=1`` keeps one
  gate bias (``bias``), as runs saved before 2026-12-07 have.  Both matmuls take the
  compute dtype and ``conventions``' precision (``Conventions.einsum``: the kernels' gradients
  float32; the biases are added in float32), and the gates, their sigmoid/tanh and ``h`` are
  in the compute dtype (as Flax's LSTM cells with ``dtype=bfloat16``), while the carry
  ``(c, h)`` is float32: ``c_t = f_t c_{t-1} + i_t g_t``, a running sum over time, is updated in
  float32 so that bf16 rounding does not accumulate over the steps.  With ``remat``
  (``config.model.lstm_remat``, ``resolve_lstm_remat``) the scan's step is rematerialised
  (``jax.checkpoint``; the same values): the backward pass recomputes each step's gates from the
  saved carry, so the train step keeps two float32 ``[T, 2, B, H]`` arrays per layer for the
  gradient instead of every gate and activation (docs/results.md, "bfloat16").

  ``padding``:
    * ``"masked"`` (default): each direction reads only the row's real tokens
      (the first ``Σ mask`` positions; padding is on the right).  The backward
      direction starts at the last real token, the state stops updating at the
      padding, and outputs at padded positions are 0 (``pack_padded_sequence``
      semantics).
    * ``"read"``: the reference (no packing): both directions read all ``T``
      positions, so the backward direction first reads the padding.
  """

  hidden: int
  padding: str = "masked"
  biases: int = 2
  conventions: Conventions = DEFAULT_CONVENTIONS
  remat: bool = True

  @nn.compact
  def __call__(self, x: TextState, train: bool) -> TextState:
    del train
    if self.padding not in LSTM_PADDING:
      raise ConfigError(
        f"config.model.lstm_padding={self.padding!r} is unknown; choose one of {LSTM_PADDING}."
      )
    inputs, mask = x["h"], x["mask"]
    batch, steps, features = inputs.shape
    size = self.hidden
    bound = 1.0 / math.sqrt(size)  # PyTorch's LSTM init: U(-1/sqrt(H), 1/sqrt(H))
    init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    w_input = self.param("input_kernel", init, (2, features, 4 * size))
    w_recurrent = self.param("recurrent_kernel", init, (2, size, 4 * size))
    bias = self.param("bias", init, (2, 4 * size))
    if self.biases == 2:
      bias = bias + self.param("recurrent_bias", init, (2, 4 * size))

    if self.padding == "masked":
      lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
    else:
      lengths = jnp.full((batch,), steps, jnp.int32)
    c = self.conventions
    state_dtype = jnp.promote_types(inputs.dtype, jnp.float32)  # the carry (c, h): >= float32
    valid = jnp.arange(steps)[None, :] < lengths[:, None]  # [B, T]
    both = jnp.stack([inputs, reverse_within_length(inputs, lengths)])  # [2, B, T, D]
    gates_in = c.cast(c.einsum("nbtd,ndg->tnbg", both, w_input) + bias[None, :, None, :])

    def step(carry, xs):
      cell, h = carry  # [2, B, H], float32
      gates, keep = xs  # [2, B, 4H] in the compute dtype, [B]
      # the float32 kernel is cast in the step: its gradient sums over the steps in float32
      gates = gates + c.einsum("nbh,nhg->nbg", h, w_recurrent)
      i, f, g, o = jnp.split(gates, 4, axis=-1)
      c_new = nn.sigmoid(f) * cell + nn.sigmoid(i) * jnp.tanh(g)  # float32: f * cell promotes
      h_new = nn.sigmoid(o) * jnp.tanh(c.cast(c_new))
      keep = keep[None, :, None]
      out = jnp.where(keep, h_new, 0.0)
      return (jnp.where(keep, c_new, cell), jnp.where(keep, h_new, h)), out

    zeros = jnp.zeros((2, batch, size), state_dtype)
    initial = jax.tree.map(lambda a: a.astype(state_dtype), x.get("initial", (zeros, zeros)))
    (cell, h), outputs = jax.lax.scan(
      jax.checkpoint(step) if self.remat else step, initial, (gates_in, valid.T)
    )
    forward = jnp.transpose(outputs[:, 0], (1, 0, 2))  # [B, T, H]
    backward = reverse_within_length(jnp.transpose(outputs[:, 1], (1, 0, 2)), lengths)
    return {
      "h": jnp.concatenate([forward, backward], axis=-1),
      "mask": mask,
      "pooled": (h[0] + h[1]) / 2.0,
      "carry": (cell, h),
    }


def sinusoidal_positions(steps: int, dim: int) -> jax.Array:
  """``[T, D]`` sinusoidal position codes (Vaswani et al. 2017)."""
  position = jnp.arange(steps, dtype=jnp.float32)[:, None]
  rates = jnp.exp(-math.log(10000.0) * jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = position * rates[None, :]
  codes = jnp.zeros((steps, dim), jnp.float32)
  codes = codes.at[:, 0::2].set(jnp.sin(angles))
  return codes.at[:, 1::2].set(jnp.cos(angles[:, : dim // 2]))


class LayerNorm(nn.Module):
  """The reference encoder's LayerNorm: ``a (x - mean) / (std + eps) + b`` over the last axis.

  ``std`` is the *unbiased* standard deviation and ``eps`` (1e-6) is added to it, not to the
  variance (``nlp/model/transformer/layer_norm.py`` of the reference code); parameters
  ``scale`` (``a``, ones) and ``bias`` (``b``, zeros), named as ``flax.linen.LayerNorm``'s.
  Computed in float32; the result has ``x``'s dtype.
  """

  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones_init(), (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros_init(), (features,), jnp.float32)
    y = precision.at_least_float32(x)
    mean = jnp.mean(y, axis=-1, keepdims=True)
    std = jnp.std(y, axis=-1, keepdims=True, ddof=1)
    return (scale * (y - mean) / (std + self.epsilon) + bias).astype(x.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention with ``nn.MultiHeadDotProductAttention``'s parameters (``query``,
  ``key``, ``value`` kernels ``[D, heads, D/heads]``, ``out`` ``[heads, D/heads, D]``, biases)
  whose projections are ``Conventions.dense_general``, so that under bf16 their kernels' gradients
  are float32.  ``h [B, T, D]``, ``mask [B, 1, 1, T]`` (True: attend) -> ``[B, T, D]``:
  ``softmax(q k^T / sqrt(D/heads))`` (float32 under bf16) with dropout on the weights, then ``v``.
  """

  heads: int
  dropout: float
  conventions: Conventions

  @nn.compact
  def __call__(self, h: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
    c = self.conventions
    d_model = h.shape[-1]
    kernel_init = nn.initializers.xavier_uniform()
    project = lambda name: c.dense_general(
      h, (self.heads, d_model // self.heads), -1, kernel_init=kernel_init,
      bias_init=c.bias_init(d_model), name=name,
    )
    query, key, value = project("query"), project("key"), project("value")
    dropout = self.dropout > 0.0 and train
    y = nn.dot_product_attention(
      query, key, value, mask=mask, dropout_rng=self.make_rng("dropout") if dropout else None,
      dropout_rate=self.dropout, deterministic=not dropout, dtype=c.compute_dtype,
      precision=c.lax_precision, force_fp32_for_softmax=c.compute_dtype is not None,
    )
    return c.dense_general(
      y, d_model, (-2, -1), kernel_init=kernel_init, bias_init=c.bias_init(d_model), name="out"
    )


class TransformerEncoder(nn.Module):
  """One pre-LayerNorm Transformer encoder layer with a final LayerNorm (reference encoder).

  ``h [B, T, D]`` -> ``h [B, T, D]`` (``d_model = D``, the input width):
  ``h += Drop(MHA(LN(h), mask))``, ``h += Drop(W2 Drop(ReLU(W1 LN(h))))``,
  ``h = LN(h)``; padded keys are masked out of the attention, weight matrices
  are Xavier-uniform.  ``pooled`` is the masked mean of ``h``.  With
  ``positional`` (off in the reference) sinusoidal codes are added to the input.
  ``LN`` is the reference's ``LayerNorm`` (above: unbiased std + 1e-6), or with
  ``layer_norm="flax"`` Flax's (biased variance + 1e-6 inside the square root), as runs
  saved before 2026-12-07 have; the parameters are the same either way.  Biases are
  0, or with ``conventions.init="torch"`` ``U(+-1/sqrt(fan_in))`` as the
  reference's ``nn.Linear`` layers (their weights are Xavier-uniform either way).
  Attention and Dense layers compute in the conventions' dtype and precision (the softmax in
  float32); LayerNorm statistics are float32.
  """

  heads: int
  ff_dim: int
  dropout: float = 0.1
  positional: bool = False
  conventions: Conventions = DEFAULT_CONVENTIONS
  layer_norm: str = "unbiased_std"

  @nn.compact
  def __call__(self, x: TextState, train: bool) -> TextState:
    h, mask = x["h"], x["mask"]
    d_model = h.shape[-1]
    if self.heads <= 0 or d_model % self.heads:
      raise ConfigError(
        f"config.model.heads={self.heads} must divide d_model={d_model} (the embedding "
        "width config.model.emb_dim); change one of them."
      )
    if self.positional:
      h = h + sinusoidal_positions(h.shape[1], d_model)[None].astype(h.dtype)
    c = self.conventions
    xavier = nn.initializers.xavier_uniform()
    drop = lambda y: nn.Dropout(self.dropout)(y, deterministic=not train)
    if self.layer_norm == "unbiased_std":
      norm = LayerNorm
    else:  # parameters named as LayerNorm's: LayerNorm_0/scale, ...
      norm = functools.partial(nn.LayerNorm, epsilon=1e-6, dtype=c.compute_dtype)
    h = c.cast(h)
    y = norm()(h)
    y = SelfAttention(
      self.heads, self.dropout, c, name="MultiHeadDotProductAttention_0"
    )(y, mask[:, None, None, :], train)
    h = h + drop(y)
    y = norm()(h)
    # named as when Flax numbered them: the outer (second) layer was created first
    hidden = c.dense(y, self.ff_dim, kernel_init=xavier, bias_init=c.bias_init(d_model),
                     name="Dense_1")
    y = c.dense(drop(nn.relu(hidden)), d_model, kernel_init=xavier,
                bias_init=c.bias_init(self.ff_dim), name="Dense_0")
    h = norm()(h + drop(y))
    return {"h": h, "mask": mask, "pooled": masked_mean(h, mask)}


class TextHead(nn.Module):
  """The reference BP text head: ``Tanh -> Dense(C)`` on the last block's ``pooled`` vector."""

  num_classes: int
  conventions: Conventions = DEFAULT_CONVENTIONS

  @nn.compact
  def __call__(self, x: TextState, train: bool) -> jax.Array:
    del train
    return self.conventions.logits(jnp.tanh(x["pooled"]), self.num_classes)
