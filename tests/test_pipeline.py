"""Tests of ``deinforeg_jax.pipeline``: stage programs on separate (fake CPU) devices.

Contracts: stage parameters are the ``block_XX`` subtrees of the one-program state;
the synchronous *and* the pipelined schedules reproduce ``steps.make_train_step``
(decoupled blocks exchange no gradients, so pipelining only reorders work);
every stage trains on every batch exactly once per epoch, stage ``k`` on batch ``t``
at tick ``t + k``; block balancing is an exact min-max partition; errors are clear.
"""

from __future__ import annotations

import functools
import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
  DIGITS_SHAPE,
  NUM_CLASSES,
  assert_trees_equal,
  optimized_compiles,
  random_batch,
  tiny_config,
  to_host,
)

from deinforeg_jax import (
  data_parallel, grad_norms, models, optim, pipeline, rules, stack, steps, train
)
from launch.configs import default

BATCH = 32
NUM_STEPS = 3
SPLITS = {"2 uneven stages": ((0, 1), (1, 4)), "4 stages": ((0, 1), (1, 2), (2, 3), (3, 4))}
MODES = (("synchronous", "auto"), ("pipelined", "threads"), ("pipelined", "ticks"))
CLOSE = {"rtol": 1e-5, "atol": 1e-7}  # a pipelined step against the one program's


@pytest.fixture(scope="module")
def setup():
  config = tiny_config()
  model = models.create_model(config, NUM_CLASSES)
  # A decaying schedule, so that a stage applying an update with the wrong count would show.
  tx = optim.make_optimizer(config.optim, optim.make_schedule(config.optim, 6, 2))
  objective = rules.get_objective(config.rule)
  batches = [random_batch(BATCH, seed=i) for i in range(NUM_STEPS)]
  return config, model, tx, objective, batches


@pytest.fixture(scope="module")
def one_program(setup):
  """The reference: ``NUM_STEPS`` one-program steps; initial state, final state, metrics."""
  config, model, tx, objective, batches = setup
  state = jax.jit(functools.partial(steps.create_train_state, model, tx, input_shape=DIGITS_SHAPE))(
    jax.random.key(0)
  )
  initial = to_host(state)
  step = jax.jit(steps.make_train_step(model, objective, tx, NUM_CLASSES, config.loss))
  metrics = []
  for batch in batches:
    state, m, _ = step(state, batch["image"], batch["label"])
    metrics.append(to_host(m))
  return initial, to_host(state), metrics


@functools.cache
def _pipeline(split_name: str) -> pipeline.Pipeline:
  config = tiny_config()
  model = models.create_model(config, NUM_CLASSES)
  tx = optim.make_optimizer(config.optim, optim.make_schedule(config.optim, 6, 2))
  return pipeline.Pipeline(
    model,
    tx,
    rules.get_objective(config.rule),
    config.loss,
    DIGITS_SHAPE,
    SPLITS[split_name],
    jax.devices(),
  )


# ---------------------------------------------------------------- state layout


def test_stage_states_are_the_block_subtrees_of_the_one_program_state(one_program, eight_devices):
  pipe = _pipeline("4 stages")
  states = pipe.init(jax.random.key(0))
  for state, (a, b), device in zip(states, pipe.bounds, eight_devices):
    assert sorted(state.params) == [stack.block_name(i) for i in range(a, b)]
    assert {d for leaf in jax.tree.leaves(state) for d in leaf.devices()} == {device}
  initial, _, _ = one_program
  # Same names => same initial values as the full stack, and the optimizer state lines up.
  assert_trees_equal(to_host(pipe.to_train_state(states)), initial)


@pytest.mark.parametrize("split_name", list(SPLITS))
def test_one_program_state_splits_into_stages_and_back(one_program, split_name):
  initial, final, _ = one_program
  pipe = _pipeline(split_name)
  for state in (initial, final):
    stages = pipe.from_train_state(state)
    assert [next(iter(jax.tree.leaves(s)[0].devices())) for s in stages] == pipe.devices
    assert [sorted(s.params) for s in stages] == [
      [stack.block_name(i) for i in range(a, b)] for a, b in pipe.bounds
    ]
    assert_trees_equal(to_host(pipe.to_train_state(stages)), state)


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("split_name", list(SPLITS))
@pytest.mark.parametrize("schedule,dispatch", MODES)
def test_schedule_reproduces_the_one_program_step(
  setup, one_program, split_name, schedule, dispatch
):
  """Synchronous by construction; pipelined because stage j made batch t's activation
  with the parameters it had after t updates, exactly those the one-program step uses."""
  _, _, _, _, batches = setup
  initial, expected_state, expected_metrics = one_program
  pipe = _pipeline(split_name)
  states, record = pipe.train_epoch(pipe.from_train_state(initial), batches, schedule, dispatch)
  assert_trees_equal(to_host(pipe.to_train_state(states)), expected_state, **CLOSE)
  assert len(record.metrics) == NUM_STEPS
  for got, want in zip(record.metrics, expected_metrics):
    assert set(got) == set(want)
    assert_trees_equal(got, {k: np.asarray(v) for k, v in want.items()}, **CLOSE)


def test_pipeline_logs_the_one_program_gradient_norms(setup, one_program):
  """Per-stage gradient norms, concatenated over stages, are the one-program step's."""
  config, model, tx, objective, batches = setup
  initial = one_program[0]
  step = jax.jit(
    steps.make_train_step(model, objective, tx, NUM_CLASSES, config.loss, log_grad_norms=True)
  )
  _, expected, _ = step(jax.tree.map(jnp.asarray, initial), batches[0]["image"], batches[0]["label"])
  pipe = pipeline.Pipeline(
    model, tx, objective, config.loss, DIGITS_SHAPE, SPLITS["2 uneven stages"], jax.devices(),
    log_grad_norms=True,
  )
  _, record = pipe.train_epoch(pipe.from_train_state(initial), batches[:1], "pipelined", "ticks")
  np.testing.assert_allclose(record.metrics[0]["grad_norm"], expected["grad_norm"], rtol=1e-5)
  assert record.metrics[0]["grad_norm"].shape == (len(grad_norms.layer_paths(initial.params)),)


# ---------------------------------------------------------------- schedule bookkeeping


@pytest.mark.parametrize("schedule,dispatch", MODES)
def test_every_stage_trains_on_every_batch_exactly_once_per_epoch(one_program, schedule, dispatch):
  pipe = _pipeline("4 stages")
  num_batches, epochs = 5, 2
  batches = [random_batch(BATCH, seed=10 + i) for i in range(num_batches)]
  states = pipe.from_train_state(one_program[0])
  for epoch in range(epochs):
    states, record = pipe.train_epoch(states, iter(batches), schedule, dispatch)
    assert record.batch_ids == [list(range(num_batches))] * pipe.num_stages
    assert record.updates == [num_batches] * pipe.num_stages
    assert [int(s.step) for s in states] == [(epoch + 1) * num_batches] * pipe.num_stages
    if dispatch == "ticks":  # fill and drain: stage k trains on batch t at tick t + k
      assert record.ticks == [[t + k for t in range(num_batches)] for k in range(pipe.num_stages)]
    elif schedule == "synchronous":  # stage k trains on batch t at tick t
      assert record.ticks == [list(range(num_batches))] * pipe.num_stages
    assert len(record.metrics) == num_batches
    assert all(np.isfinite(m["total_loss"]) for m in record.metrics)


def test_batch_ids_continue_from_first_batch_and_progress_reports_each_batch_once(one_program):
  pipe = _pipeline("2 uneven stages")
  seen = []
  _, record = pipe.train_epoch(
    pipe.from_train_state(one_program[0]),
    (random_batch(BATCH, seed=i) for i in range(3)),
    on_batch=lambda t, m: seen.append((t, float(m["total_loss"]))),
    first_batch=7,
  )
  assert record.batch_ids == [[7, 8, 9], [7, 8, 9]]
  assert sorted(t for t, _ in seen) == [7, 8, 9]
  np.testing.assert_allclose(
    [loss for _, loss in sorted(seen)], [m["total_loss"] for m in record.metrics], rtol=1e-6
  )


def test_a_failing_stage_stops_the_pipeline_with_its_error(one_program, monkeypatch):
  pipe = _pipeline("4 stages")
  states = pipe.from_train_state(one_program[0])

  def broken(*args):
    raise RuntimeError("stage 2 exploded")

  stage_steps = list(pipe.train_steps)
  monkeypatch.setattr(pipe, "train_steps", stage_steps[:2] + [broken] + stage_steps[3:])
  with pytest.raises(RuntimeError, match="stage 2 exploded"):
    pipe.train_epoch(states, itertools.repeat(random_batch(BATCH), 50), "pipelined", "threads")


# ---------------------------------------------------------------- balancing


def test_partition_is_the_exact_min_max_contiguous_split():
  rng = np.random.default_rng(0)
  for _ in range(30):
    n = int(rng.integers(1, 8))
    stages = int(rng.integers(1, n + 1))
    costs = rng.uniform(0.1, 10.0, n).tolist()
    bounds = pipeline.partition_blocks(costs, stages)
    assert bounds[0][0] == 0 and bounds[-1][1] == n and len(bounds) == stages
    assert all(a < b for a, b in bounds)
    assert all(b == a2 for (_, b), (a2, _) in itertools.pairwise(bounds))
    brute = min(
      max(sum(costs[a:b]) for a, b in zip((0,) + cuts, cuts + (n,)))
      for cuts in itertools.combinations(range(1, n), stages - 1)
    )
    assert max(sum(costs[a:b]) for a, b in bounds) == pytest.approx(brute)
  with pytest.raises(ValueError, match="cannot split 2 blocks into 3 stages"):
    pipeline.partition_blocks([1.0, 1.0], 3)


def test_flop_costs_balance_the_stages_and_give_the_ideal_speedup(setup):
  config, model, tx, objective, _ = setup
  plan = pipeline.plan_stages(model, tx, objective, config.loss, DIGITS_SHAPE, BATCH, 2, "flops")
  assert plan.cost_kind == "flops" and len(plan.block_costs) == 4
  assert all(c > 0 for c in plan.block_costs)
  assert sum(plan.stage_costs) == pytest.approx(sum(plan.block_costs))
  assert plan.ideal_speedup == pytest.approx(sum(plan.block_costs) / max(plan.stage_costs))
  assert 1.0 <= plan.ideal_speedup <= 2.0
  assert plan.ideal_epoch_speedup(1) == pytest.approx(1.0)
  assert plan.ideal_epoch_speedup(10**6) == pytest.approx(plan.ideal_speedup, rel=1e-4)
  uniform = pipeline.plan_stages(
    model, tx, objective, config.loss, DIGITS_SHAPE, BATCH, 2, "uniform"
  )
  assert uniform.bounds == ((0, 2), (2, 4)) and uniform.ideal_speedup == 2.0


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("rule", "bp", "config.rule='bp' cannot be pipelined"),
    ("parallel.num_stages", 5, "config.parallel.num_stages=5"),
    ("parallel.pipeline_schedule", "async", "config.parallel.pipeline_schedule='async'"),
    ("parallel.pipeline_balance", "bytes", "config.parallel.pipeline_balance='bytes'"),
    ("rule", "scpl", "config.rule='scpl' is not supported with config.parallel.mode='pipeline'"),
    ("model.arch", "lstm", "config.model.arch='lstm' is not supported"),
    ("grow.schedule", "2", "config.grow.schedule='2' is not supported"),
  ],
)
def test_invalid_pipeline_config_names_the_field(field, value, message):
  config = default.get_config()
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    pipeline.pipeline_settings(config, num_blocks=4)


# ---------------------------------------------------------------- end to end


def _pipelined_config(config):
  config.parallel.num_stages = 2
  config.parallel.pipeline_schedule = "pipelined"
  config.parallel.mode = "pipeline"
  return config


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """The default digits config over 2 stages, 12 epochs instead of 20 to stay fast
  (the one-program trainer reaches 95% in 12 epochs; the pipeline follows the same trajectory;
  8 epochs, a shorter cosine schedule, reach only 0.806)."""
  workdir = str(tmp_path_factory.mktemp("pipeline_digits"))
  config = _pipelined_config(default.get_config())
  config.train.num_epochs = 12
  config.checkpoint.every_epochs = 12  # one save, at the end
  with optimized_compiles():  # 264 steps: optimised programs run faster
    return config, workdir, train.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_pipelined_training_on_digits_reaches_90_percent(digits_run):
  _, workdir, results = digits_run
  assert results["best_test_accuracy"] >= 0.90, results["per_block_test_accuracy"]
  assert results["steps"] == 12 * (1437 // 64)
  adaptive = results["adaptive_inference"]  # the early exit of the pipelined stack, as in data mode
  assert 1 <= adaptive["mean_exit_block"] <= 3 and 0 < adaptive["compute_fraction"] <= 1
  info = results["pipeline"]
  assert info["stage_blocks"] == [[0], [1, 2, 3]]  # block 0 holds half the FLOPs
  assert info["ideal_speedup"] > 1.5
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["best_test_accuracy"] == results["best_test_accuracy"]
  with open(os.path.join(workdir, "pipeline.json")) as f:
    assert json.load(f)["stage_blocks"] == info["stage_blocks"]


def test_pipeline_checkpoint_is_a_one_program_checkpoint(tmp_path):
  """The one-program trainer restores the pipelined run's checkpoint and finds it finished
  (the tiny model for a few steps, uniform stage costs: the checkpoint's format is the point,
  not the training or the balance)."""
  workdir = str(tmp_path)
  config = _pipelined_config(tiny_config())
  config.parallel.pipeline_balance = "uniform"
  config.train.max_steps = 3
  results = train.train_and_evaluate(config, workdir)
  config.parallel.mode = "data"
  config.parallel.num_devices = 1

  def refuse(*_):
    raise AssertionError("a finished run compiled a train step")

  with pytest.MonkeyPatch.context() as patch:  # finished: it only evaluates
    patch.setattr(data_parallel.DataParallelEngine, "_compile", refuse)
    again = train.train_and_evaluate(config, workdir)
  assert again["steps"] == results["steps"] == 3
  assert again["per_block_test_accuracy"] == pytest.approx(results["per_block_test_accuracy"])
