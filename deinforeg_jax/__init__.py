"""deinforeg-jax: DeInfoReg in JAX/Flax.

A JAX/Flax implementation of DeInfoReg, *Decoupled Supervised Learning with Information
Regularization* (Huang, Lin & Chen, Neurocomputing 651, 2025; arXiv 2506.18193): a network cut
into blocks, each trained only by its own local loss (invariance, variance and covariance terms on
a projected embedding plus a small per-block cross-entropy), with backpropagation and the SCPL and
associated-learning baselines on the same backbones.

Importing the package loads nothing else (it only adds XLA:CPU's fast-convolution flag to
``XLA_FLAGS`` if no JAX backend has started yet: ``deinforeg_jax.xla_cpu``); import the submodules
you need, e.g. ``deinforeg_jax.train``, ``deinforeg_jax.losses``, ``deinforeg_jax.data``.
"""

from deinforeg_jax import xla_cpu as _xla_cpu

__version__ = "0.1.0"

_xla_cpu.configure()


def load(workdir: str, **kwargs):
  """The trained model in ``workdir`` (``deinforeg_jax.trained.load``; imported on first use)."""
  from deinforeg_jax import trained  # pylint: disable=import-outside-toplevel

  return trained.load(workdir, **kwargs)
