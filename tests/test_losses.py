"""Tests of ``deinforeg_jax.losses`` (the DeInfoReg local loss, arXiv 2506.18193).

Values are checked against ``tests/reference_losses.py``, an independent float64 NumPy
implementation of the reference code's loss, and against properties that follow from its
formulas (symmetry, label-similarity closed form, invariances, finite gradients).

Out-of-range labels are not tested: ``deinforeg_loss`` is pure ``jnp`` and the range
check lives elsewhere. For the record, ``jax.nn.one_hot`` maps a label outside
``[0, C)`` to an all-zero row, so S(onehot) has a zero row and column for that sample
(diagonal entry 0 instead of 1): the sample is pushed to be uncorrelated with every
sample, itself included. No error is raised.
"""

from __future__ import annotations

import functools

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np

from deinforeg_jax import losses

try:  # tests/ is not a package: pytest's default import mode puts tests/ on sys.path.
  import reference_losses as ref
except ImportError:  # pragma: no cover - e.g. --import-mode=importlib from the repo root
  from tests import reference_losses as ref

TERMS = ("invariance", "variance", "covariance")
RTOL = 1e-5
# Absolute floor for entries that are ~0 in exact arithmetic (float32 rounding noise).
ATOL = 1e-7

# Non-default (weights, variance_batch_scaling) configurations checked against the
# reference (the default ((1, 1, 1), True) is checked on the full shape grid).
LOSS_CONFIGS = (
  ((0.5, 2.0, 3.0), True),
  ((1.7, 0.3, 25.0), False),
)


def _random_batch(seed: int, batch: int, dim: int, num_classes: int):
  """Random projector output with per-feature offsets, varying row scales, labels."""
  rng = np.random.default_rng(seed)
  offsets = rng.uniform(-1.0, 1.0, size=(1, dim))
  scales = rng.uniform(0.2, 3.0, size=(batch, 1))
  z = (rng.normal(size=(batch, dim)) + offsets) * scales
  labels = rng.integers(0, num_classes, size=(batch,))
  return z.astype(np.float32), labels.astype(np.int32)


def _loss_fn(num_classes, weights=(1.0, 1.0, 1.0), variance_batch_scaling=True):
  """``deinforeg_loss`` with its static arguments bound, as a function of (z, labels)."""
  return _cached_loss_fn(
    int(num_classes), tuple(float(w) for w in weights), bool(variance_batch_scaling)
  )


@functools.lru_cache(maxsize=None)
def _cached_loss_fn(num_classes, weights, variance_batch_scaling):
  # Every test asking for the same configuration gets the same function object, so
  # jax.jit reuses its compilation across tests (keeps the file fast).
  return functools.partial(
    losses.deinforeg_loss,
    num_classes=num_classes,
    weights=weights,
    variance_batch_scaling=variance_batch_scaling,
  )


def _as_floats(total, terms):
  return float(total), {k: float(terms[k]) for k in TERMS}


def _pearson_structure(labels, num_classes, dim, seed):
  """Rows R[y] whose Pearson similarity equals that of onehot(y), in ``dim`` features.

  R[c] = (e_c - 1/C) padded with zeros to ``dim`` features (already row-centred, and
  corr(R[c], R[c']) = -1/(C-1)), then multiplied by an orthogonal Q that fixes the
  all-ones vector, so row centring commutes with Q and inner products are kept.
  """
  rng = np.random.default_rng(seed)
  base = np.zeros((num_classes, dim))
  base[:, :num_classes] = np.eye(num_classes) - 1.0 / num_classes
  # Orthonormal basis whose first vector is 1/sqrt(dim); rotate only its complement.
  basis, _ = np.linalg.qr(
    np.concatenate([np.ones((dim, 1)), rng.normal(size=(dim, dim - 1))], axis=1)
  )
  inner, _ = np.linalg.qr(rng.normal(size=(dim - 1, dim - 1)))
  block = np.eye(dim)
  block[1:, 1:] = inner
  q = basis @ block @ basis.T
  np.testing.assert_allclose(q @ np.ones(dim), np.ones(dim), atol=1e-10)
  return (base @ q)[np.asarray(labels)]


class DeinforegLossReferenceTest(chex.TestCase):
  """Total and every term equal the float64 reference."""

  def _check_against_reference(self, fn, batch, dim, num_classes, weights, scaling, seeds):
    for seed in seeds:
      z, labels = _random_batch(1000 * seed + batch + dim + num_classes, batch, dim, num_classes)
      total, terms = _as_floats(*fn(jnp.asarray(z), jnp.asarray(labels)))
      ref_total, ref_terms = ref.ref_deinforeg_loss(
        z, labels, num_classes, weights=weights, variance_batch_scaling=scaling
      )
      msg = f"seed={seed} B={batch} D={dim} C={num_classes} w={weights} scaling={scaling}"
      for name in TERMS:
        self.assertGreater(ref_terms[name], 0.0, msg)  # non-vacuous comparison
        np.testing.assert_allclose(
          terms[name], ref_terms[name], rtol=RTOL, atol=ATOL, err_msg=f"{name}: {msg}"
        )
      np.testing.assert_allclose(total, ref_total, rtol=RTOL, atol=ATOL, err_msg=f"total: {msg}")
      # total is the weighted sum of the (unweighted) returned terms.
      np.testing.assert_allclose(
        total, sum(w * terms[k] for w, k in zip(weights, TERMS)), rtol=1e-6, err_msg=msg
      )

  # Full shape grid under jit; eager (op-by-op, compiled per shape) on two corners
  # only, to keep the file fast.
  @chex.variants(with_jit=True)
  @parameterized.product(batch=(8, 33), dim=(16, 64), num_classes=(2, 10))
  def test_matches_reference(self, batch, dim, num_classes):
    fn = self.variant(_loss_fn(num_classes))
    self._check_against_reference(
      fn, batch, dim, num_classes, (1.0, 1.0, 1.0), True, seeds=range(3)
    )

  @chex.variants(without_jit=True)
  @parameterized.parameters((8, 16, 2), (33, 64, 10))
  def test_matches_reference_eager(self, batch, dim, num_classes):
    fn = self.variant(_loss_fn(num_classes))
    self._check_against_reference(
      fn, batch, dim, num_classes, (1.0, 1.0, 1.0), True, seeds=range(3)
    )

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((8, 16, 2), (33, 64, 10))
  def test_weights_and_scaling_match_reference(self, batch, dim, num_classes):
    for weights, scaling in LOSS_CONFIGS:
      fn = self.variant(_loss_fn(num_classes, weights, scaling))
      self._check_against_reference(fn, batch, dim, num_classes, weights, scaling, seeds=range(2))

  @chex.variants(with_jit=True, without_jit=True)
  def test_zero_row_matches_reference(self):
    # A zero row stays exactly 0 through 3.1 and 3.2 (0 / (1e-8 + 0)), so S has a zero
    # row and column for it.  (A constant non-zero row is *not* tested at loss level:
    # after normalisation its row mean is only 0 up to float32 rounding, and under jit
    # the ~4e-9 residual is blown up by the 1e-8 guard, an ill-conditioned input.)
    z, labels = _random_batch(7, 8, 16, 10)
    z[3] = 0.0
    fn = self.variant(_loss_fn(10))
    total, terms = _as_floats(*fn(jnp.asarray(z), jnp.asarray(labels)))
    ref_total, ref_terms = ref.ref_deinforeg_loss(z, labels, 10)
    for name in TERMS:
      np.testing.assert_allclose(terms[name], ref_terms[name], rtol=RTOL, atol=ATOL, err_msg=name)
    np.testing.assert_allclose(total, ref_total, rtol=RTOL, atol=ATOL)

  @chex.variants(with_jit=True, without_jit=True)
  def test_variance_batch_scaling_divides_by_batch(self):
    z, labels = _random_batch(11, 33, 64, 10)
    scaled = self.variant(_loss_fn(10, variance_batch_scaling=True))
    unscaled = self.variant(_loss_fn(10, variance_batch_scaling=False))
    _, terms_s = _as_floats(*scaled(jnp.asarray(z), jnp.asarray(labels)))
    _, terms_u = _as_floats(*unscaled(jnp.asarray(z), jnp.asarray(labels)))
    np.testing.assert_allclose(terms_u["variance"], 33 * terms_s["variance"], rtol=1e-6)
    for name in ("invariance", "covariance"):
      np.testing.assert_allclose(terms_u[name], terms_s[name], rtol=1e-6)
    # Rows have unit norm, so sigma_d ~ 1/sqrt(D) and the hinge is active.
    self.assertGreater(terms_u["variance"], 0.5)
    self.assertLess(terms_u["variance"], 1.0)


class SimilarityMatrixTest(chex.TestCase):
  """S(A) is the clamped row-Pearson-correlation matrix."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((8, 16), (33, 64))
  def test_matches_reference_and_properties(self, batch, dim):
    fn = self.variant(losses.similarity_matrix)
    for seed in range(3):
      x, _ = _random_batch(seed + 17, batch, dim, 2)
      s = np.asarray(fn(jnp.asarray(x)))
      self.assertEqual(s.shape, (batch, batch))
      self.assertEqual(s.dtype, np.float32)
      np.testing.assert_allclose(s, ref.ref_similarity_matrix(x), rtol=RTOL, atol=1e-6)
      np.testing.assert_allclose(s, s.T, atol=1e-6)
      np.testing.assert_allclose(np.diag(s), np.ones(batch), atol=1e-6)
      self.assertTrue(np.all(s <= 1.0) and np.all(s >= -1.0))

  @chex.variants(with_jit=True, without_jit=True)
  def test_clamped_to_unit_interval(self):
    # Identical / opposite rows: exact correlation +-1, float32 may overshoot before
    # the clamp; afterwards every entry must be inside [-1, 1].
    rng = np.random.default_rng(3)
    row = rng.normal(size=(1, 16)).astype(np.float32) * 123.0
    x = np.concatenate(
      [row, row, -row, 7.0 * row, row + 5.0, 0.01 * row, -3.0 * row + 2.0, row], axis=0
    )
    s = np.asarray(self.variant(losses.similarity_matrix)(jnp.asarray(x)))
    self.assertTrue(np.all(np.abs(s) <= 1.0))
    signs = np.array([1, 1, -1, 1, 1, 1, -1, 1], dtype=np.float64)
    expected = np.outer(signs, signs)
    np.testing.assert_allclose(s, expected, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_constant_row_gives_zero_row(self):
    x, _ = _random_batch(5, 8, 16, 2)
    x[2] = -4.0
    s = np.asarray(self.variant(losses.similarity_matrix)(jnp.asarray(x)))
    np.testing.assert_allclose(s[2], np.zeros(8), atol=1e-6)
    np.testing.assert_allclose(s[:, 2], np.zeros(8), atol=1e-6)
    np.testing.assert_allclose(s, ref.ref_similarity_matrix(x), atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(2, 10)
  def test_one_hot_similarity_closed_form(self, num_classes):
    rng = np.random.default_rng(num_classes)
    labels = np.concatenate(
      [np.arange(num_classes), rng.integers(0, num_classes, size=33 - num_classes)]
    )
    one_hot = jax.nn.one_hot(jnp.asarray(labels), num_classes)
    s = np.asarray(self.variant(losses.similarity_matrix)(one_hot))
    same = labels[:, None] == labels[None, :]
    expected = np.where(same, 1.0, -1.0 / (num_classes - 1))
    np.testing.assert_allclose(s, expected, atol=1e-6)
    np.testing.assert_allclose(
      s, ref.ref_similarity_matrix(ref.ref_one_hot(labels, num_classes)), atol=1e-6
    )


class L2NormalizeTest(chex.TestCase):
  """Rows divided by max(||row||, 1e-12)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_l2_normalize(self):
    x, _ = _random_batch(2, 8, 16, 2)
    x[4] = 0.0
    x[6] = 0.0
    x[6, 0] = 1e-13  # norm below eps: divided by eps, not by the norm
    out = np.asarray(self.variant(losses.l2_normalize)(jnp.asarray(x)))
    np.testing.assert_allclose(out, ref.ref_l2_normalize(x), rtol=RTOL, atol=1e-7)
    norms = np.linalg.norm(out, axis=1)
    np.testing.assert_allclose(np.delete(norms, [4, 6]), np.ones(6), rtol=1e-6)
    np.testing.assert_array_equal(out[4], np.zeros(16))
    np.testing.assert_allclose(out[6, 0], 0.1, rtol=1e-5)


class InvarianceStructureTest(chex.TestCase):
  """The invariance term vanishes when S(zhat) reproduces S(onehot)."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((8, 16, 2), (33, 64, 10))
  def test_invariance_zero_for_label_structure(self, batch, dim, num_classes):
    rng = np.random.default_rng(num_classes * 100 + dim)
    labels = np.concatenate(
      [np.arange(num_classes), rng.integers(0, num_classes, size=batch - num_classes)]
    ).astype(np.int32)
    fn = self.variant(_loss_fn(num_classes))
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    # Per-row positive scale a_i and per-row offset b_i: zhat_i is a positive multiple
    # of R[y_i] + c_i * 1, and the row centring of S removes the constant.
    a = rng.uniform(0.5, 2.0, size=(batch, 1))
    b = rng.uniform(-2.0, 2.0, size=(batch, 1))
    structured = _pearson_structure(labels, num_classes, dim, seed=dim)
    candidates = {
      "onehot": onehot,
      "a*onehot+b": (3.0 * onehot + 0.7).astype(np.float32),
      "per-row a_i*onehot+b_i": (a * onehot + b).astype(np.float32),
      "rotated centred onehot": (a * structured + b).astype(np.float32),
    }
    for name, z in candidates.items():
      _, terms = fn(jnp.asarray(z), jnp.asarray(labels))
      self.assertLess(float(terms["invariance"]), 1e-6, name)
      self.assertLess(ref.ref_invariance(z, labels, num_classes), 1e-12, name)
    # Non-vacuous: the same embeddings with shuffled labels do not match.
    shuffled = np.roll(labels, 1)
    _, terms = fn(jnp.asarray(candidates["rotated centred onehot"]), jnp.asarray(shuffled))
    self.assertGreater(float(terms["invariance"]), 1e-2)


class InvarianceUnderTransformsTest(chex.TestCase):
  """Joint batch permutation and positive per-row scaling leave the loss unchanged."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((8, 16, 2), (33, 64, 10))
  def test_batch_permutation(self, batch, dim, num_classes):
    fn = self.variant(_loss_fn(num_classes, (0.5, 2.0, 3.0)))
    for seed in range(2):
      z, labels = _random_batch(seed + 31, batch, dim, num_classes)
      perm = np.random.default_rng(seed).permutation(batch)
      total, terms = _as_floats(*fn(jnp.asarray(z), jnp.asarray(labels)))
      total_p, terms_p = _as_floats(*fn(jnp.asarray(z[perm]), jnp.asarray(labels[perm])))
      np.testing.assert_allclose(total_p, total, rtol=RTOL)
      for name in TERMS:
        np.testing.assert_allclose(terms_p[name], terms[name], rtol=RTOL, atol=ATOL, err_msg=name)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((8, 16, 2), (33, 64, 10))
  def test_positive_row_scaling(self, batch, dim, num_classes):
    fn = self.variant(_loss_fn(num_classes, (0.5, 2.0, 3.0)))
    for seed in range(2):
      z, labels = _random_batch(seed + 41, batch, dim, num_classes)
      rng = np.random.default_rng(seed)
      factors = np.exp(rng.uniform(np.log(0.1), np.log(10.0), size=(batch, 1)))
      factors[0], factors[-1] = 0.1, 10.0
      total, terms = _as_floats(*fn(jnp.asarray(z), jnp.asarray(labels)))
      total_s, terms_s = _as_floats(
        *fn(jnp.asarray((z * factors).astype(np.float32)), jnp.asarray(labels))
      )
      np.testing.assert_allclose(total_s, total, rtol=RTOL)
      for name in TERMS:
        np.testing.assert_allclose(terms_s[name], terms[name], rtol=RTOL, atol=ATOL, err_msg=name)


@functools.lru_cache(maxsize=None)
def _value_and_grad(loss_fn):
  return jax.value_and_grad(lambda z, labels: loss_fn(z, labels)[0])


class GradientTest(chex.TestCase):
  """Gradients are finite in the degenerate cases that occur in training."""

  def _check_grad(self, fn, z, labels):
    value_and_grad = self.variant(_value_and_grad(fn))
    value, grad = value_and_grad(jnp.asarray(z), jnp.asarray(labels))
    grad = np.asarray(grad)
    self.assertEqual(grad.shape, z.shape)
    self.assertEqual(grad.dtype, np.float32)
    self.assertTrue(np.isfinite(float(value)))
    self.assertTrue(np.all(np.isfinite(grad)), f"non-finite grad: {grad}")
    self.assertGreater(float(np.abs(grad).max()), 0.0)  # the loss does depend on z
    return float(value), grad

  @chex.variants(with_jit=True, without_jit=True)
  def test_zero_row(self):
    z, labels = _random_batch(3, 8, 16, 10)
    z[4] = 0.0
    value, grad = self._check_grad(_loss_fn(10), z, labels)
    np.testing.assert_allclose(value, ref.ref_deinforeg_loss(z, labels, 10)[0], rtol=RTOL)
    self.assertGreater(float(np.abs(np.delete(grad, 4, axis=0)).max()), 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_all_labels_equal(self):
    z, _ = _random_batch(4, 8, 16, 10)
    labels = np.full((8,), 2, dtype=np.int32)
    value, _ = self._check_grad(_loss_fn(10), z, labels)
    # S(onehot) is all ones here.
    np.testing.assert_allclose(value, ref.ref_deinforeg_loss(z, labels, 10)[0], rtol=RTOL)

  @chex.variants(with_jit=True, without_jit=True)
  def test_zero_row_and_all_labels_equal(self):
    z, _ = _random_batch(5, 8, 16, 2)
    z[0] = 0.0
    labels = np.zeros((8,), dtype=np.int32)
    self._check_grad(_loss_fn(2, (0.5, 2.0, 3.0), False), z, labels)

  @chex.variants(with_jit=True, without_jit=True)
  def test_gradient_matches_finite_differences(self):
    # Directional derivative vs central differences of the float64 reference.
    z, labels = _random_batch(6, 8, 16, 10)
    grad_fn = self.variant(_value_and_grad(_loss_fn(10)))
    grad = np.asarray(grad_fn(jnp.asarray(z), jnp.asarray(labels))[1], np.float64)
    direction = np.random.default_rng(0).normal(size=z.shape)
    h = 1e-5
    z64 = z.astype(np.float64)
    numeric = (
      ref.ref_deinforeg_loss(z64 + h * direction, labels, 10)[0]
      - ref.ref_deinforeg_loss(z64 - h * direction, labels, 10)[0]
    ) / (2 * h)
    np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=1e-3)


class OutputTypeTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_float32_scalars(self):
    z, labels = _random_batch(8, 8, 16, 10)
    total, terms = self.variant(_loss_fn(10))(jnp.asarray(z), jnp.asarray(labels))
    self.assertEqual(set(terms), set(TERMS))
    chex.assert_shape(total, ())
    chex.assert_type(total, jnp.float32)
    for name in TERMS:
      chex.assert_shape(terms[name], ())
      chex.assert_type(terms[name], jnp.float32)
      self.assertTrue(np.isfinite(float(terms[name])))
