"""Train state, the one-program train step, the eval step and the training loop.

``make_train_step`` sums every block's local loss and takes one
``jax.value_and_grad`` inside one ``jax.jit``, so XLA compiles all blocks into a
single program and schedules them together.  Because the stack cuts gradients
at block boundaries this is the same update as training the blocks one after
another.  Under a data mesh the batch is sharded over ``data`` and the state is
replicated (see ``parallel``); the loss statistics cover the global batch.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from deinforeg_jax import checkpoint, grad_norms, growth, inference, optim, parallel, rules, stack
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data import (
  eval_batches,
  glove,
  load_dataset,
  make_augment,
  steps_per_epoch,
  train_batches,
)
from deinforeg_jax.reporting import ProgressBar, RunLog

Batch = dict[str, jax.Array]


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
  model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array, input_shape: tuple[int, ...]
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


def make_train_step(
  model: nn.Module,
  objective: rules.Objective,
  tx: optax.GradientTransformation,
  num_classes: int,
  loss_cfg,
  log_grad_norms: bool = False,
  seed: int = 0,
  frozen: frozenset[str] = frozenset(),
) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """``(state, {"image", "label"}) -> (state, metrics)``; metrics are ``[num_exits]`` arrays.

  With ``log_grad_norms`` the metrics add ``grad_norm``: the ``[num_layers]``
  per-layer gradient norms of ``grad_norms.layer_grad_norms`` (before the update).
  Dropout (text Transformer) draws from ``fold_in(key(seed), state.step)``.
  Blocks named in ``frozen`` get no gradient and keep their parameters, BatchNorm
  statistics and optimizer state bit for bit (``growth.keep_frozen``).
  """

  def train_step(state: TrainState, batch: Batch):

    def loss_fn(params):
      outputs, updated = model.apply(
        {"params": growth.stop_frozen(params, frozen), "batch_stats": state.batch_stats},
        model_inputs(batch),
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.fold_in(jax.random.key(seed), state.step)},
      )
      total, metrics = objective(outputs, batch["label"], num_classes, loss_cfg)
      return total, (metrics, updated["batch_stats"])

    (total, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module) -> Callable[[TrainState, Batch], dict[str, jax.Array]]:
  """``(state, {"image", "label", "mask"}) -> {"predictions": [K, B], "correct": [K]}``.

  ``correct`` counts masked-in examples whose prediction equals the label.
  """

  def eval_step(state: TrainState, batch: Batch):
    outputs = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, model_inputs(batch), train=False
    )
    predictions = jnp.stack([jnp.argmax(logits, axis=-1) for logits in outputs["logits"]])
    hits = (predictions == batch["label"][None]).astype(jnp.float32) * batch["mask"][None]
    return {"predictions": predictions.astype(jnp.int32), "correct": jnp.sum(hits, axis=1)}

  return eval_step


def compile_steps(
  model,
  objective,
  tx,
  num_classes,
  loss_cfg,
  mesh,
  log_grad_norms=False,
  seed: int = 0,
  frozen: frozenset[str] = frozenset(),
):
  """Jitted train and eval steps: state replicated, batch sharded over ``data``."""
  state_sharding = parallel.replicated(mesh)
  data_sharding = parallel.batch_sharding(mesh)
  train_step = jax.jit(
    make_train_step(model, objective, tx, num_classes, loss_cfg, log_grad_norms, seed, frozen),
    in_shardings=(state_sharding, data_sharding),
    out_shardings=(state_sharding, state_sharding),
    donate_argnums=0,
  )
  eval_step = jax.jit(
    make_eval_step(model),
    in_shardings=(state_sharding, data_sharding),
    out_shardings=state_sharding,
  )
  return train_step, eval_step


def evaluate(eval_step, state: TrainState, batches, mesh) -> np.ndarray:
  """Per-exit accuracy over every example the iterator yields (``[K]`` fractions)."""
  correct, count = None, 0.0
  for batch in batches:
    sharded = parallel.shard_batch(batch, mesh)
    out = eval_step(state, sharded)
    correct = out["correct"] if correct is None else correct + out["correct"]
    count += float(jnp.sum(sharded["mask"]))  # global: every process's rows
  return np.asarray(correct) / max(count, 1.0)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Train ``config``, checkpointing to ``workdir``; resume if it holds a checkpoint.

  Writes ``metrics.jsonl``, ``checkpoints/`` and ``results.json`` to ``workdir``
  and returns the results dict.  A run interrupted at any point and started
  again with the same command continues exactly where its last checkpoint was.
  """
  validate_config(config)
  data = load_dataset(config.data, workdir=workdir)
  info = data.info
  augment = make_augment(config.data.augment, info)
  mesh = parallel.make_data_mesh(config.parallel.num_devices)
  parallel.check_batch_divisible(config.data.batch_size, mesh, "data.batch_size")
  parallel.check_batch_divisible(config.data.eval_batch_size, mesh, "data.eval_batch_size")

  model = stack.build_model(config, info.num_classes)
  model = growth.wrap_model(config, model)  # config.grow: new-feature blocks
  objective = rules.get_objective(config.rule)
  steps = steps_per_epoch(info.num_train, config.data.batch_size)
  total_steps = steps * config.train.num_epochs
  schedule = optim.make_schedule(config.optim, total_steps, steps)
  tx = optim.make_optimizer(config.optim, schedule)

  init = functools.partial(create_train_state, model, tx, input_shape=info.input_shape)
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.key(config.seed))
  state, glove_note = _init_glove(config, state, data.vocabulary, mesh)
  log = RunLog(workdir, config)
  if glove_note:
    log.info(glove_note)
  checkpointer = checkpoint.RunCheckpointer(
    workdir, keep=config.checkpoint.keep, use_async=config.checkpoint.use_async
  )
  try:
    num_old = 0  # blocks restored from config.grow.from_workdir
    if config.grow.from_workdir:
      state, num_old = growth.restore_old_blocks(state, config.grow.from_workdir)
    if checkpointer.latest_step() is not None:  # checked before the slow compile
      state, saved = checkpointer.restore(state, checkpoint.make_metadata(config, state, info))
      log.resume(saved)

    @functools.cache
    def compile_phase(num_active: int, frozen: tuple[int, ...]):
      """Steps for the blocks that run and train in one phase of config.grow."""
      return compile_steps(
        growth.phase_model(model, num_active, frozen),
        objective,
        tx,
        info.num_classes,
        config.loss,
        mesh,
        log_grad_norms=config.train.log_grad_norms,
        seed=config.seed,
        frozen=growth.block_names(frozen),
      )

    def phase_steps(epoch: int):
      return compile_phase(*growth.phase(config, model, epoch, num_old))

    train_step, eval_step = phase_steps(int(state.step) // steps)
    compile_start = time.perf_counter()
    train_step = train_step.lower(state, _batch_spec(config.data.batch_size, info, mesh)).compile()
    compile_s = time.perf_counter() - compile_start
    if data.label_noise:
      log.set_label_noise(data.label_noise)
    log.info(
      f"{config.rule} on {info.name}: {info.num_train} train / {info.num_test} test, "
      f"input {info.input_shape}, {info.num_classes} classes, "
      f"{parameter_count(state.params):,} parameters, "
      f"{mesh.shape[parallel.DATA_AXIS]} device(s), from step {int(state.step)}; "
      f"train step compiled in {compile_s:.1f} s"
    )
    state, test_accuracy = _train_epochs(
      config,
      state,
      train_step,
      eval_step,
      schedule,
      log,
      checkpointer,
      mesh,
      data,
      augment,
      steps,
      phase_steps if growth.parse_schedule(config.grow.schedule) else None,
    )
    checkpointer.wait()
    if jax.process_count() == 1:
      final_model = growth.phase_model(
        model, *growth.phase(config, model, config.train.num_epochs, num_old)
      )
      log.set_adaptive_inference(
        inference.adaptive_report(
          final_model,
          {"params": state.params, "batch_stats": state.batch_stats},
          eval_batches(data.test, info, global_batch_size=config.data.eval_batch_size),
          model_inputs,
          config.inference,
        )
      )
  finally:
    checkpointer.close()
  return log.finish(test_accuracy, int(state.step), info)


def _train_epochs(
  config,
  state,
  train_step,
  eval_step,
  schedule,
  log,
  checkpointer,
  mesh,
  data,
  augment,
  steps,
  phases=None,
):
  """The epoch loop from ``state.step`` on; returns the final state and test accuracy.

  ``phases(epoch) -> (train_step, eval_step)`` switches steps when config.grow.schedule
  adds blocks.
  """
  train_split, test_split, info = data.train, data.test, data.info
  step = int(state.step)
  every = config.checkpoint.every_steps

  def test(state):
    batches = eval_batches(
      test_split, info, global_batch_size=config.data.eval_batch_size, **_this_process()
    )
    return evaluate(eval_step, state, batches, mesh)

  test_accuracy = None
  if step == steps * config.train.num_epochs:  # finished before: evaluate only
    test_accuracy = test(state)
  phase = phases(step // steps) if phases else None
  for epoch in range(step // steps, config.train.num_epochs):
    if phases and phases(epoch) is not phase:  # config.grow.schedule added a block
      phase = phases(epoch)
      train_step, eval_step = phase
    bar = ProgressBar(steps, f"epoch {epoch + 1}/{config.train.num_epochs}", initial=step % steps)
    epoch_metrics = []
    start = time.perf_counter()
    for batch in train_batches(
      train_split,
      info,
      global_batch_size=config.data.batch_size,
      seed=config.seed,
      epoch=epoch,
      start_step=step % steps,
      augment=augment,
      **_this_process(),
    ):
      state, metrics = train_step(state, parallel.shard_batch(batch, mesh))
      step += 1
      if step == 1 and "grad_norm" in metrics:  # the gradient at initialisation
        log.grad_norms_at_init(grad_norms.layer_paths(state.params), metrics["grad_norm"])
      epoch_metrics.append(metrics)
      bar.update(metrics)
      if every and step % every == 0 and step % steps:
        log.check_finite(_mean_metrics(epoch_metrics), epoch)  # never save a NaN state
        log.add_train_time(time.perf_counter() - start)
        start = time.perf_counter()
        checkpointer.save(state, checkpoint.make_metadata(config, state, info, **log.bookkeeping()))
    bar.close()
    summary = log.check_finite(_mean_metrics(epoch_metrics), epoch)
    jax.block_until_ready(state)
    log.add_train_time(time.perf_counter() - start)
    test_accuracy = test(state)
    log.epoch(epoch, step, summary, test_accuracy, schedule(step))
    checkpointer.save(state, checkpoint.make_metadata(config, state, info, **log.bookkeeping()))
  return state, test_accuracy


def _this_process() -> dict[str, int]:
  """This process's share of every global batch (multi-host data parallelism)."""
  return {"process_index": jax.process_index(), "process_count": jax.process_count()}


def _init_glove(config, state: TrainState, vocabulary, mesh) -> tuple[TrainState, str]:
  """Text: the embedding table set from ``config.model.glove`` (if any) after init."""
  path = config.model.get("glove", "") if vocabulary is not None else ""
  if not path:
    return state, ""
  matrix, found = glove.embedding_matrix(
    vocabulary, path, config.model.emb_dim, rows=config.data.vocab_size, seed=config.seed
  )
  params = glove.with_embedding(state.params, jax.device_put(matrix, parallel.replicated(mesh)))
  note = f"GloVe {path}: {found} of {len(vocabulary)} vocabulary words found, the rest U[0, 1)"
  return state.replace(params=params), note


def _batch_spec(global_batch_size: int, info, mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """Abstract sharded train batch, for compiling the step before the clock starts."""
  sharding = parallel.batch_sharding(mesh)
  if info.kind == "text":
    return {
      "tokens": jax.ShapeDtypeStruct(
        (global_batch_size, *info.input_shape), jnp.int32, sharding=sharding
      ),
      "label": jax.ShapeDtypeStruct((global_batch_size,), jnp.int32, sharding=sharding),
    }
  return {
    "image": jax.ShapeDtypeStruct(
      (global_batch_size, *info.input_shape), jnp.float32, sharding=sharding
    ),
    "label": jax.ShapeDtypeStruct((global_batch_size,), jnp.int32, sharding=sharding),
  }


def _mean_metrics(metrics: list[dict[str, jax.Array]]) -> dict[str, np.ndarray]:
  """Average a list of per-step metric dicts on the host."""
  stacked = jax.device_get(metrics)
  return {k: np.mean([m[k] for m in stacked], axis=0) for k in stacked[0]}


def parameter_count(params) -> int:
  """Total number of scalars in a parameter tree."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
