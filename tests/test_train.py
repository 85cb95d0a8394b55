"""Tests of ``deinforeg_jax.train``.

* One step on the summed loss equals K separate per-block updates.
* Data parallelism over 8 fake CPU devices equals one device (global-batch semantics).
* ``train_and_evaluate`` is deterministic for a seed, also on programs reused from an
  earlier run; what keys that reuse.
"""

from __future__ import annotations

import dataclasses
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deinforeg_jax import (
  checkpoint, models, optim, parallel, program_cache, rules, steps, train, xla_cpu
)
from deinforeg_jax.data import DatasetInfo
from deinforeg_jax.run import build_run
from helpers import (
  DIGITS_SHAPE,
  NUM_CLASSES,
  block_names,
  init_variables,
  optimized_compiles,
  random_batch,
  tiny_config,
  to_host,
)


DIGITS_INFO = DatasetInfo("digits", DIGITS_SHAPE, NUM_CLASSES, 1437, 360, (0.0,), (1.0,))


def _model(config):
  model = models.create_model(config, NUM_CLASSES)
  return model, init_variables(model, DIGITS_SHAPE)


def _state(tx, variables) -> steps.TrainState:
  params = variables["params"]
  return steps.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(params),
  )


# ------------------------------------------------- summed loss == per-block updates

OPTIMIZERS = {
  # LARS with the paper's hyper-parameters and a cosine LR that changes every step.
  "lars": lambda: optim.lars(optim.cosine_schedule(0.2, 0.002, total_steps=3)),
  "adam": lambda: optax.adam(optim.cosine_schedule(1e-3, 1e-4, total_steps=3)),
}


@functools.lru_cache(maxsize=None)
def _per_block_setup():
  """Tiny model plus ``block_grad(params, batch_stats, batch, k)``: the value and
  gradient of block ``k``'s loss alone (``k`` traced: one compilation for all blocks),
  shared by both optimizers."""
  config = tiny_config()
  model, variables = _model(config)

  def block_loss(params, batch_stats, batch, k):
    outputs, updated = model.apply(
      {"params": params, "batch_stats": batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
    )
    _, metrics = rules.deinforeg_objective(outputs, batch["label"], NUM_CLASSES, config.loss)
    return metrics["loss"][k], updated["batch_stats"]

  return config, model, variables, jax.jit(jax.value_and_grad(block_loss, has_aux=True))


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_summed_loss_step_equals_per_block_updates(optimizer):
  """``make_train_step`` (one value_and_grad of Σ_k L_k) == K optimisers, optimiser k
  fed only ∂L_k/∂θ_k and updating only block k, for two consecutive steps."""
  config, model, variables, block_grad = _per_block_setup()
  tx = OPTIMIZERS[optimizer]()
  batches = [random_batch(16, seed=s) for s in (0, 1)]

  # (a) The library's one-program step.
  step = jax.jit(
    steps.make_train_step(model, rules.deinforeg_objective, tx, NUM_CLASSES, config.loss)
  )
  state = _state(tx, variables)
  summed_metrics = []
  for batch in batches:
    state, metrics, _ = step(state, batch["image"], batch["label"])
    summed_metrics.append(jax.device_get(metrics))
  summed = to_host(state)

  # (b) Block after block: block k's own loss, own gradient, own optimiser state.
  @jax.jit
  def update_blocks(grads_by_block, opt_states, params):
    # K independent optimiser updates (one compilation; no state is shared).
    new_params, new_states = {}, {}
    for name in params:
      updates, new_states[name] = tx.update(grads_by_block[name], opt_states[name], params[name])
      new_params[name] = optax.apply_updates(params[name], updates)
    return new_params, new_states

  names = block_names(variables["params"])
  params = dict(variables["params"])
  batch_stats = variables["batch_stats"]
  opt_states = {name: tx.init(params[name]) for name in names}
  own_grads = []
  for t, batch in enumerate(batches):
    grads_by_block = {}
    for k, name in enumerate(names):  # every forward sees the same pre-step parameters
      (loss_k, new_stats), grads = block_grad(params, batch_stats, batch, k)
      np.testing.assert_allclose(loss_k, summed_metrics[t]["loss"][k], rtol=1e-5)
      grads_by_block[name] = grads[name]
    own_grads.append(jax.device_get(grads_by_block))
    params, opt_states = update_blocks(grads_by_block, opt_states, params)
    batch_stats = new_stats

  assert int(summed.step) == len(batches)
  sequential = to_host(params)
  # The projector's first Dense feeds a BatchNorm, so its bias has an exactly-zero
  # gradient in exact arithmetic; float32 leaves ~1e-9 noise that differs between the
  # two programs, and Adam's g/sqrt(v) turns noise into a step of size ~lr.  Those
  # biases are compared to Adam's bound Σ_t lr_t (they cannot change the output: the
  # BatchNorm removes any shift); every other parameter to rtol=1e-5.
  pre_bn = [f"Dense_{i}" for i in range(len(config.model.projector.split("-")) - 1)]
  bound = 2 * 1e-3 if optimizer == "adam" else 1e-6
  for name in names:
    for layer in pre_bn:
      bias_grads = [g[name]["projector"][layer]["bias"] for g in own_grads]
      kernel_grads = [g[name]["projector"][layer]["kernel"] for g in own_grads]
      assert max(np.max(np.abs(g)) for g in bias_grads) < 1e-4 * max(
        np.max(np.abs(g)) for g in kernel_grads
      )
      np.testing.assert_allclose(
        summed.params[name]["projector"][layer]["bias"],
        sequential[name]["projector"][layer]["bias"],
        atol=bound,
      )
      for tree in (summed.params, sequential):
        tree[name]["projector"][layer]["bias"] = np.zeros(())
  chex.assert_trees_all_close(summed.params, sequential, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(summed.batch_stats, to_host(batch_stats), rtol=1e-5, atol=1e-6)
  # The steps did change every block (the comparison is not between two copies of θ0).
  for name in names:
    moved = jax.tree.map(
      lambda a, b: np.max(np.abs(a - b)), sequential[name], variables["params"][name]
    )
    assert max(jax.tree.leaves(moved)) > 1e-5, name


# ------------------------------------------------- data parallel: 1 vs 8 devices


def test_eight_fake_devices(eight_devices):
  assert jax.device_count() == 8
  assert len(eight_devices) == 8
  assert parallel.make_data_mesh(0).shape[parallel.DATA_AXIS] == 8


def _run_on_mesh(num_devices, config, model, tx, variables, batches, eval_batch):
  mesh = parallel.make_data_mesh(num_devices)
  run = dataclasses.replace(build_run(config, DIGITS_INFO), model=model, tx=tx)
  programs = run.jit_steps(run.plan.final, mesh)
  train_step, eval_step = programs.train, programs.eval
  state = parallel.replicate(_state(tx, variables), mesh)
  history = []
  for batch in batches:
    sharded = parallel.shard_batch(batch, mesh)
    assert len(sharded["image"].sharding.device_set) == num_devices
    state, metrics, _ = train_step(state, sharded["image"], sharded["label"])
    history.append(jax.device_get(metrics))
  sharded = parallel.shard_batch(eval_batch, mesh)
  evaluated, _ = jax.device_get(eval_step(state, sharded["image"], sharded["label"], sharded["mask"]))
  return to_host(state), history, evaluated


def test_data_parallel_over_eight_devices_equals_one_device(eight_devices):
  """Global-batch semantics: the B x B similarity, variance/covariance and BatchNorm
  statistics are reductions over the whole batch whether it lives on 1 or 8 devices.

  Tolerance: the only difference is the order of float32 sums (per-device partial
  sums + all-reduce), ~1e-7 relative per reduction; after three LARS steps (relative
  step size ≤ lr·eta ≈ 2e-4) the measured gaps were ≤ 1.2e-7 in the parameters and
  ≤ 5e-7 in metrics and BatchNorm statistics, so rtol=1e-5 / atol=1e-6 leaves margin,
  while per-device (local-batch) statistics would miss by > 1e-2 (next test).
  """
  del eight_devices
  config = tiny_config()
  model, variables = _model(config)
  tx = optim.lars(optim.cosine_schedule(0.2, 0.002, total_steps=3))
  batches = [random_batch(32, seed=s) for s in (0, 1, 2)]
  eval_batch = dict(random_batch(32, seed=3), mask=(np.arange(32) < 27).astype(np.float32))

  one = _run_on_mesh(1, config, model, tx, variables, batches, eval_batch)
  eight = _run_on_mesh(8, config, model, tx, variables, batches, eval_batch)

  (state_1, history_1, eval_1), (state_8, history_8, eval_8) = one, eight
  for metrics_1, metrics_8 in zip(history_1, history_8):
    chex.assert_trees_all_close(metrics_8, metrics_1, rtol=1e-5, atol=1e-6)
  assert int(state_8.step) == int(state_1.step) == 3
  chex.assert_trees_all_close(state_8.params, state_1.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(state_8.batch_stats, state_1.batch_stats, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(state_8.opt_state, state_1.opt_state, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(eval_8["predictions"], eval_1["predictions"])
  np.testing.assert_array_equal(eval_8["correct"], eval_1["correct"])
  chex.assert_shape(eval_1["predictions"], (4, 32))
  # correct counts only the 27 masked-in rows.
  hits = (eval_1["predictions"] == eval_batch["label"][None])[:, :27].sum(axis=1)
  np.testing.assert_array_equal(eval_1["correct"], hits)


def test_local_batch_statistics_would_differ():
  """Sanity check of the tolerance above: the loss of the 8 per-device sub-batches
  (what a per-device statistic would compute) differs from the global-batch loss."""
  config = tiny_config()
  model, variables = _model(config)
  batch = random_batch(32)

  @jax.jit
  def losses(image, label):
    outputs, _ = model.apply(variables, image, train=True, mutable=["batch_stats"])
    return rules.deinforeg_objective(outputs, label, NUM_CLASSES, config.loss)[1]["loss"]

  whole = losses(batch["image"], batch["label"])
  parts = np.mean(
    [losses(batch["image"][i : i + 4], batch["label"][i : i + 4]) for i in range(0, 32, 4)], axis=0
  )
  assert np.max(np.abs(parts - whole) / np.abs(whole)) > 1e-2


# ------------------------------------------------- determinism of a whole run


_ORIGINAL_SAVE = checkpoint.RunCheckpointer.save


def _capture_final_state(monkeypatch):
  """Record (a host copy of) the state saved at the end of each epoch."""
  seen = []

  def recording(checkpointer, state, metadata):
    seen.append(to_host(state))
    return _ORIGINAL_SAVE(checkpointer, state, metadata)

  monkeypatch.setattr(checkpoint.RunCheckpointer, "save", recording)
  return seen


def test_train_and_evaluate_is_deterministic(tmp_path, monkeypatch, capsys):
  """Two runs of one config, the second on the programs the first built
  (``program_cache.shared_programs``): the same metrics and states, bit for bit."""
  config = tiny_config(num_blocks=2)
  config.train.num_epochs = 2
  config.data.batch_size = 128
  config.parallel.num_devices = 1
  config.checkpoint.use_async = False
  config.seed = 3  # programs no other test builds: the first run compiles
  runs, compiled = [], []
  for name in ("first", "second"):
    states = _capture_final_state(monkeypatch)
    results = train.train_and_evaluate(config, str(tmp_path / name))
    compiled.append("train step compiled in" in capsys.readouterr().out)
    with open(tmp_path / name / "metrics.jsonl") as f:
      lines = [json.loads(line) for line in f]
    runs.append((results, lines, states))
  assert compiled == [True, False]

  (results_a, lines_a, states_a), (results_b, lines_b, states_b) = runs
  assert len(states_a) == len(states_b) == 2  # one save per epoch
  assert results_a["steps"] == results_b["steps"] == 2 * (1437 // 128)
  assert results_a["per_block_test_accuracy"] == results_b["per_block_test_accuracy"]
  assert len(results_a["per_block_test_accuracy"]) == 2
  assert results_a["best_block"] == results_b["best_block"]
  assert len(lines_a) == len(lines_b) == 2
  for line_a, line_b in zip(lines_a, lines_b):
    assert line_a == line_b  # every train loss term and test accuracy, bit for bit
  chex.assert_trees_all_equal(states_a[-1].params, states_b[-1].params)
  chex.assert_trees_all_equal(states_a[-1].batch_stats, states_b[-1].batch_stats)
  chex.assert_trees_all_equal(states_a[-1].opt_state, states_b[-1].opt_state)
  # Training moved the parameters between the two epochs.
  gaps = jax.tree.map(
    lambda a, b: float(np.max(np.abs(a - b))), states_a[0].params, states_a[1].params
  )
  assert max(jax.tree.leaves(gaps)) > 0


def test_program_key_changes_with_the_programs_only():
  info = DIGITS_INFO
  key = program_cache.program_key(tiny_config(), info)
  loop_only = {
    "checkpoint.every_steps": 3,
    "checkpoint.keep": 5,
    "train.max_steps": 7,
    "grow.from_workdir": "/elsewhere",
    "inference.patience": 3,
  }
  for field, value in loop_only.items():
    config = tiny_config()
    section, name = field.split(".")
    config[section][name] = value
    assert program_cache.program_key(config, info) == key, field
  program = {
    "model.width": 0.25,
    "optim.base_lr": 0.1,
    "train.num_epochs": 3,  # the cosine schedule's length
    "data.batch_size": 32,
    "loss.ce_weight": 0.5,
    "parallel.num_devices": 2,
  }
  for field, value in program.items():
    config = tiny_config()
    section, name = field.split(".")
    config[section][name] = value
    assert program_cache.program_key(config, info) != key, field
  seeded = tiny_config()
  seeded.seed = 1  # dropout's key
  assert program_cache.program_key(seeded, info) != key
  bigger = dataclasses.replace(info, num_train=2000)  # steps per epoch: the schedule
  assert program_cache.program_key(tiny_config(), bigger) != key
  with optimized_compiles():
    assert program_cache.program_key(tiny_config(), info) != key
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(parallel, "SHARD_MIN_ELEMENTS", 256)
    assert program_cache.program_key(tiny_config(), info) != key


def test_initial_state_program_at_the_lower_cpu_level_draws_the_same_bits():
  """The engines compile ``create_train_state`` at ``xla_cpu.INIT_OPTIMIZATION_LEVEL`` on the
  CPU (quicker); outside this test session's quick compiles it must draw XLA's default level's
  bits (a two-block stack, little to compile optimised; at level 0 some differ in the last
  place).  ``model.init="torch"`` was checked too (uniform draws), and every architecture and
  rule at its default width, outside the suite (4-12 s per optimised compile)."""
  config = tiny_config(vgg_blocks="8,M;8", num_blocks=2, projector="16")
  model = models.create_model(config, NUM_CLASSES)
  tx = optim.make_optimizer(config.optim, 0.1)
  create = functools.partial(steps.create_train_state, model, tx, input_shape=DIGITS_SHAPE)
  assert xla_cpu.init_options("cpu") == {"xla_backend_optimization_level": 0}  # quick compiles
  assert xla_cpu.init_options("tpu") is None
  with optimized_compiles():
    options = xla_cpu.init_options("cpu")
    assert options == {"xla_backend_optimization_level": xla_cpu.INIT_OPTIMIZATION_LEVEL}
    key = jax.random.key(3)
    quick = jax.jit(create, compiler_options=options).lower(key).compile()
    default = jax.jit(create).lower(key).compile()
    chex.assert_trees_all_equal(quick(key), default(key))


@pytest.mark.pins_implementation
def test_train_step_with_region_analysis_copies_less_and_updates_the_same():
  """``xla_cpu.train_step_options``: the donated step, compiled with and without region-analysis
  copy insertion, gives the same bits over two steps, with fewer copies in the program."""
  config = tiny_config(projector="64-64")
  model, variables = _model(config)
  tx = optim.make_optimizer(config.optim, 0.1)
  objective = rules.get_objective("deinforeg")
  step = steps.make_train_step(model, objective, tx, NUM_CLASSES, config.loss)
  options = xla_cpu.train_step_options("cpu")
  assert options == {xla_cpu.REGION_ANALYSIS: True} and xla_cpu.train_step_options("gpu") is None
  batch = random_batch(32)
  states, copies = [], []
  for compiler_options in (options, None):
    state = jax.tree.map(jnp.copy, _state(tx, variables))  # fresh buffers: the step donates
    compiled = jax.jit(step, donate_argnums=0, compiler_options=compiler_options).lower(
      state, batch["image"], batch["label"]
    ).compile()
    copies.append(compiled.as_text().count(" copy("))
    for _ in range(2):
      state, _, _ = compiled(state, batch["image"], batch["label"])
    states.append(to_host(state))
  chex.assert_trees_all_equal(*states)
  assert copies[0] < copies[1], copies
