"""``build_run(config, info) -> Run``: the one place a run is set up.

A ``Run`` holds what a config builds before any array exists: the model
(``models.create_model``), its growth plan (``growth.make_plan``), the rule's objective
(``rules.get_objective``), the learning-rate schedule and the optimizer (``optim``) and the
epoch arithmetic.  Training (``train``), the TPU fit check (``aot``), both engines
(``data_parallel``, ``pipeline``) and the trained-model loader (``trained.load``) all build
from it, so they cannot drift apart.

``Run.jit_steps`` gives a phase's jitted train / eval / check programs over a device mesh
(the batch sharded over ``data``, the state placed as asked); ``Run.abstract_state`` the
shapes and dtypes of the one-program ``steps.TrainState`` that checkpoints hold.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from deinforeg_jax import growth, models, optim, parallel, rules, steps, xla_cpu
from deinforeg_jax.config_error import ConfigError
from deinforeg_jax.data.loader import DatasetInfo, steps_per_epoch
from deinforeg_jax.modules import layers, text


@dataclasses.dataclass(frozen=True)
class DatasetShape:
  """What a run reads of its dataset, for a run that does not read it (the fit check, the
  trained-model loader, the benchmarks); training passes the full ``data.DatasetInfo``,
  which has these fields too.

  ``input_shape``: one example, ``(H, W, C)`` pixels or ``(max_len,)`` token ids;
  ``num_train``: the training split's size (with ``data.batch_size``, the epoch's steps and so
  the schedule's length); ``kind``: ``"image"`` or ``"text"``.
  """

  input_shape: tuple[int, ...]
  num_classes: int
  num_train: int
  kind: str = "image"

  @property
  def dtype(self):
    """The inputs' dtype (``input_dtype``)."""
    return input_dtype(self.kind)


def input_dtype(kind: str):
  """A batch's input dtype for a dataset of ``kind``: int32 token ids (``"text"``) or float32
  pixels."""
  return jnp.int32 if kind == "text" else jnp.float32


@dataclasses.dataclass(frozen=True)
class StepPrograms:
  """A phase's jitted programs (``steps.make_train_step`` / ``make_eval_step`` /
  ``make_check_step``), not yet lowered: call them, or ``.lower(...).compile()`` them."""

  train: Any  # (state, inputs [B, ...], labels [B]) -> (state, metrics, carry); donates state
  eval: Any  # (state, inputs, labels, mask [B]) -> ({"predictions", "correct"}, carry)
  check: Any  # (state, inputs, labels) -> ({"total_loss", "finite"}, carry)


@dataclasses.dataclass(frozen=True)
class Run:
  """Everything ``config`` builds for ``info``'s dataset (``build_run``)."""

  config: Any
  info: DatasetShape | DatasetInfo
  model: nn.Module
  plan: growth.GrowthPlan
  objective: rules.Objective
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  steps_per_epoch: int

  @property
  def total_steps(self) -> int:
    """Steps the run trains in all: ``num_epochs`` epochs, cut at ``train.max_steps`` if set."""
    total = self.steps_per_epoch * self.config.train.num_epochs
    max_steps = self.config.train.max_steps
    return min(total, max_steps) if max_steps else total

  def phase_at(self, step: int) -> growth.Phase:
    """The growth phase that trains step ``step`` (0-based: the step after ``step`` done)."""
    return self.plan.at(step // self.steps_per_epoch)

  def create_state(self, rng: jax.Array) -> steps.TrainState:
    """The initial one-program ``TrainState`` (traceable: engines jit it with a placement)."""
    return steps.create_train_state(self.model, self.tx, rng, self.info.input_shape)

  def abstract_state(self) -> steps.TrainState:
    """``create_state``'s shapes and dtypes (``jax.eval_shape``: nothing is built)."""
    return jax.eval_shape(self.create_state, jax.random.key(0))

  def jit_steps(
    self, phase: growth.Phase, mesh: jax.sharding.Mesh, state_sharding=None
  ) -> StepPrograms:
    """``phase``'s programs over ``mesh``: the state placed by ``state_sharding`` (a pytree of
    shardings, ``parallel.state_shardings``; default replicated), inputs, labels and masks
    sharded over ``data``, outputs other than the state replicated; the train step donates
    the state."""
    config, num_classes = self.config, self.info.num_classes
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    state_sharding = replicated if state_sharding is None else state_sharding
    same = dict(seed=config.seed, frozen=phase.frozen)
    train = steps.make_train_step(
      phase.model, self.objective, self.tx, num_classes, config.loss,
      log_grad_norms=config.train.log_grad_norms, **same,
    )
    check = steps.make_check_step(phase.model, self.objective, num_classes, config.loss, **same)
    return StepPrograms(
      train=jax.jit(
        train,
        in_shardings=(state_sharding, sharded, sharded),
        out_shardings=(state_sharding, replicated, replicated),
        donate_argnums=0,
        compiler_options=xla_cpu.train_step_options(mesh.devices.flat[0].platform),
      ),
      eval=jax.jit(
        steps.make_eval_step(phase.model),
        in_shardings=(state_sharding, sharded, sharded, sharded),
        out_shardings=replicated,
      ),
      check=jax.jit(
        check, in_shardings=(state_sharding, sharded, sharded), out_shardings=replicated
      ),
    )


def build_run(
  config,
  info: DatasetShape | DatasetInfo,
  *,
  platform: str | None = None,
  num_old: int | None = None,
) -> Run:
  """The ``Run`` of ``config`` (checked first by ``configuration.validate_config``) on ``info``'s
  dataset.

  ``platform``: resolve ``config.model.conv_impl`` and ``lstm_remat`` ``"auto"`` for this
  platform instead of the default backend (the fit check compiles for ``"tpu"`` on a CPU host).
  ``num_old``: the restored blocks a ``config.grow.from_workdir`` run freezes (default: read
  from that run's checkpoint metadata, ``growth.make_plan``; 0 builds the plan without reading
  it).

  Raises:
    ConfigError: the training split holds fewer examples than one global batch.
  """
  if platform is not None:
    config = config.copy_and_resolve_references()
    config.model.conv_impl = layers.resolve_conv_impl(config.model.conv_impl, platform)
    remat = text.resolve_lstm_remat(config.model.lstm_remat, platform)
    config.model.lstm_remat = "on" if remat else "off"
  model = models.create_model(config, info.num_classes)
  if info.num_train < config.data.batch_size:
    raise ConfigError(
      f"config.data.batch_size={config.data.batch_size} exceeds the {info.num_train} training "
      "examples, so an epoch would have no batch; lower config.data.batch_size."
    )
  per_epoch = steps_per_epoch(info.num_train, config.data.batch_size)
  schedule = optim.make_schedule(config.optim, per_epoch * config.train.num_epochs, per_epoch)
  return Run(
    config=config,
    info=info,
    model=model,
    plan=growth.make_plan(config, model, num_old),
    objective=rules.get_objective(config.rule),
    schedule=schedule,
    tx=optim.make_optimizer(config.optim, schedule),
    steps_per_epoch=per_epoch,
  )

