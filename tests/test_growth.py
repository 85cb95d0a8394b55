"""Growing a trained stack and new-feature blocks (the growth plan and its training runs).

* Frozen blocks keep parameters, BatchNorm statistics and optimizer state bit for bit.
* Grown from a checkpoint, the old blocks' parameters and test predictions are unchanged
  and the new block trains; a mismatching block is refused by name.
* The in-run schedule adds blocks at the given epochs; blocks not yet added stay untouched.
* A new-feature block reads only the new input features and trains over frozen old blocks.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deinforeg_jax import checkpoint, growth, models, optim, rules, steps, train
from deinforeg_jax.configuration import validate_config
from deinforeg_jax.data import eval_batches, load_dataset
from helpers import (
  DIGITS_SHAPE,
  NUM_CLASSES,
  assert_trees_equal,
  init_variables,
  random_batch,
  saved_state,
  tiny_config,
)


def _run_config(num_blocks: int, num_epochs: int, **grow):
  config = tiny_config(num_blocks=num_blocks, projector="16-16")
  config.parallel.num_devices = 1
  config.checkpoint.use_async = False
  config.train.num_epochs = num_epochs
  for name, value in grow.items():
    config.grow[name] = value
  return config


def _assert_blocks_equal(a, b, blocks):
  assert_trees_equal({name: a[name] for name in blocks}, {name: b[name] for name in blocks})


def _test_predictions(config, workdir):
  """Per-exit test predictions ``[K, N]`` of the run in ``workdir``."""
  variables, _ = checkpoint.read_variables(workdir)
  data = load_dataset(config.data)
  model = models.create_model(config, NUM_CLASSES)
  state = steps.TrainState(
    jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"], None
  )
  eval_step = jax.jit(steps.make_eval_step(model))
  batches = eval_batches(data.test, data.info, global_batch_size=config.data.eval_batch_size)
  return np.concatenate(
    [np.asarray(eval_step(state, b["image"], b["label"], b["mask"])[0]["predictions"]) for b in batches],
    axis=1,
  )


def _differs(a, b) -> bool:
  """Every leaf of ``b`` differs from ``a``'s somewhere."""
  return all(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# ------------------------------------------------------------------ freezing in the train step


def test_frozen_blocks_keep_parameters_statistics_and_optimizer_state():
  config = tiny_config(num_blocks=3)
  model = models.create_model(config, NUM_CLASSES)
  variables = init_variables(model, DIGITS_SHAPE)
  tx = optim.lars(0.2)
  opt_state = jax.tree.map(lambda x: np.full_like(x, 0.5), tx.init(variables["params"]))
  state = steps.TrainState(
    jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"], opt_state
  )
  frozen = (0, 1)
  step = jax.jit(
    steps.make_train_step(
      growth.freeze(model, 3, frozen).model,
      rules.get_objective("deinforeg"),
      tx,
      NUM_CLASSES,
      config.loss,
      frozen=frozenset({"block_00", "block_01"}),
    )
  )
  new = state
  for seed in range(2):
    batch = random_batch(32, seed=seed)
    new, _, _ = step(new, batch["image"], batch["label"])
  for tree in ("params", "batch_stats"):
    _assert_blocks_equal(getattr(state, tree), getattr(new, tree), ["block_00", "block_01"])
    assert _differs(getattr(state, tree)["block_02"], getattr(new, tree)["block_02"])
  trace_before, trace_after = state.opt_state[2].trace, new.opt_state[2].trace  # LARS momentum
  _assert_blocks_equal(trace_before, trace_after, ["block_00", "block_01"])
  assert _differs(trace_before["block_02"], trace_after["block_02"])


def test_phases_of_the_in_run_schedule():
  config = _run_config(num_blocks=4, num_epochs=6, schedule="2,4")
  model = models.create_model(config, NUM_CLASSES)

  def phase(config, epoch, num_old=0):
    module = growth.make_plan(config, model, num_old).at(epoch).model
    return len(module.blocks), tuple(module.frozen_blocks)

  assert [phase(config, e) for e in (0, 1, 2, 3, 4, 5)] == [
    (2, (2, 3)),
    (2, (2, 3)),
    (3, (3,)),
    (3, (3,)),
    (4, ()),
    (4, ()),
  ]
  assert growth.make_plan(config, model).at(4).frozen == frozenset()
  config.grow.freeze_on_add = True
  assert phase(config, 4) == (4, (0, 1, 2))
  assert growth.make_plan(config, model).at(4).frozen == {"block_00", "block_01", "block_02"}
  config = _run_config(num_blocks=4, num_epochs=2)
  assert phase(config, 0, num_old=3) == (4, (0, 1, 2))
  config.grow.train_old = True
  assert phase(config, 0, num_old=3) == (4, ())
  with pytest.raises(ValueError, match=r"config.grow.schedule='4'.*< config.train.num_epochs"):
    validate_config(_run_config(4, 4, schedule="4"))


# ------------------------------------------------------------------ growing a trained run


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
  """Two blocks trained on the old features only: columns 0..3 of the 8x8 digits."""
  workdir = str(tmp_path_factory.mktemp("old"))
  config = _run_config(num_blocks=2, num_epochs=1, side_split="width:4")
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_grown_stack_keeps_old_blocks_and_trains_the_new_one(old_run, tmp_path):
  old_config, old_dir = old_run
  config = _run_config(num_blocks=3, num_epochs=2, side_split="width:4", from_workdir=old_dir)
  config.model.vgg_blocks = "32,32,M;64,M;128"  # the 2x1 map of block 1 cannot be pooled again
  results = train.train_and_evaluate(config, str(tmp_path))
  old, _ = checkpoint.read_variables(old_dir)
  new, _ = checkpoint.read_variables(str(tmp_path))
  for tree in ("params", "batch_stats"):
    _assert_blocks_equal(old[tree], new[tree], ["block_00", "block_01"])
  old_predictions = _test_predictions(old_config, old_dir)
  new_predictions = _test_predictions(config, str(tmp_path))
  np.testing.assert_array_equal(old_predictions, new_predictions[:2])
  epochs = _train_losses(str(tmp_path))
  assert epochs[1]["train_loss"][2] < epochs[0]["train_loss"][2]  # the new block learns
  report = results["adaptive_inference"]
  assert set(report) >= {"accuracy", "mean_exit_block", "compute_fraction", "patience"}
  assert 0.0 < report["compute_fraction"] <= 1.0 and 1.0 <= report["mean_exit_block"] <= 2.0


def _state_for(config):
  model = models.create_model(config, NUM_CLASSES)
  variables = jax.tree.map(jnp.asarray, init_variables(model, DIGITS_SHAPE))
  return steps.TrainState(
    jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"], None
  )


def test_growing_from_a_mismatching_checkpoint_names_the_block(old_run):
  _, old_dir = old_run
  wider = _run_config(num_blocks=3, num_epochs=1, side_split="width:4", from_workdir=old_dir)
  wider.model.vgg_blocks = "32,32,M;48,M;128"  # block_01 is narrower than in the checkpoint
  with pytest.raises(
    growth.GrowthMismatchError,
    match=r"block 'block_01' does not match the new model: params "
    r"'block_01/encoder/ConvBNReLU_0/BatchNorm_0/bias' has shape \[8\] in the checkpoint "
    r"but \[6\] in the model",
  ):
    growth.restore_old_blocks(_state_for(wider), old_dir)
  fewer = _run_config(num_blocks=1, num_epochs=1, side_split="width:4")
  with pytest.raises(growth.GrowthMismatchError, match=r"block 'block_01' of the checkpoint"):
    growth.restore_old_blocks(_state_for(fewer), old_dir)
  with pytest.raises(FileNotFoundError, match=r"config.grow.from_workdir='/nonexistent'"):
    growth.restore_old_blocks(_state_for(fewer), "/nonexistent")


def test_in_run_schedule_adds_a_block_that_was_untouched_before(tmp_path):
  config = _run_config(num_blocks=2, num_epochs=2, schedule="1")
  results = train.train_and_evaluate(config, str(tmp_path))
  epochs = _train_losses(str(tmp_path))
  assert [len(e["test_accuracy"]) for e in epochs] == [1, 2]
  assert len(results["per_block_test_accuracy"]) == 2
  first, _ = saved_state(str(tmp_path), step=22)  # after epoch 1: block_01 not added yet
  trace = first["opt_state"]["2"]["trace"]  # LARS momentum
  assert all(not np.any(x) for x in jax.tree.leaves(trace["block_01"]))
  assert any(np.any(x) for x in jax.tree.leaves(trace["block_00"]))
  last, _ = saved_state(str(tmp_path))
  assert any(np.any(x) for x in jax.tree.leaves(last["opt_state"]["2"]["trace"]["block_01"]))


# ------------------------------------------------------------------ new-feature blocks


def test_new_feature_block_reads_only_the_new_features():
  config = _run_config(num_blocks=2, num_epochs=1, side_split="width:4", side_layers="16")
  model = models.create_model(config, NUM_CLASSES)
  variables = init_variables(model, DIGITS_SHAPE)
  x = jnp.asarray(random_batch(8)["image"])
  changed = x.at[:, :, 4:, :].add(1.0)  # only the new features (columns 4..7)
  before = model.apply(variables, x, train=False)["logits"]
  after = model.apply(variables, changed, train=False)["logits"]
  assert len(before) == 3
  for k in range(2):
    np.testing.assert_array_equal(before[k], after[k])
  assert not np.allclose(before[2], after[2])


def test_new_feature_block_trains_over_frozen_old_blocks(old_run, tmp_path):
  old_config, old_dir = old_run
  new_dir = str(tmp_path)
  config = _run_config(
    num_blocks=2, num_epochs=2, side_split="width:4", side_layers="16", from_workdir=old_dir
  )
  train.train_and_evaluate(config, new_dir)
  old, _ = checkpoint.read_variables(old_dir)
  new, _ = checkpoint.read_variables(new_dir)
  for tree in ("params", "batch_stats"):
    _assert_blocks_equal(old[tree], new[tree], ["block_00", "block_01"])
  assert sorted(new["params"]["block_02"]) == ["classifier", "encoder", "projector"]
  np.testing.assert_array_equal(
    _test_predictions(old_config, old_dir), _test_predictions(config, new_dir)[:2]
  )
  epochs = _train_losses(new_dir)
  assert epochs[1]["train_loss"][2] < epochs[0]["train_loss"][2]


def _text_config(arch: str):
  from launch.configs import agnews_lstm  # pylint: disable=import-outside-toplevel

  config = agnews_lstm.get_config()
  config.model.arch = arch
  config.data.vocab_size, config.data.max_len = 50, 12
  config.model.emb_dim = config.model.hidden = 8
  config.model.num_blocks, config.model.heads, config.model.ff_dim = 1, 2, 16
  config.grow.side_split, config.grow.side_layers = "time:5", arch
  return config


def test_text_new_feature_block_reads_new_tokens_and_trains_over_frozen_blocks():
  """New features for text (BiLSTM): tokens 0..4 are old, 5..11 new; embedding and block 1 frozen."""
  config = _text_config("lstm")
  model = models.create_model(config, 4)
  variables = init_variables(model, (12,))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(1, 50, (16, 12)), jnp.int32).at[:8, 10:].set(0)
  apply = jax.jit(lambda t: model.apply(variables, t, train=False)["logits"])
  before, after = apply(tokens), apply(tokens.at[:, 7].set(3))
  np.testing.assert_array_equal(before[0], after[0])  # the old exit sees tokens 0..4 only
  assert not np.allclose(before[1], after[1])
  tx = optim.lars(0.2)
  state = steps.TrainState(
    jnp.zeros((), jnp.int32), variables["params"], {}, tx.init(variables["params"])
  )
  frozen = (0, 1)
  step = jax.jit(
    steps.make_train_step(
      growth.freeze(model, 2, frozen).model,
      rules.get_objective("deinforeg"),
      tx,
      4,
      config.loss,
      frozen=frozenset({"block_00", "block_01"}),
    )
  )
  new, _, _ = step(state, tokens, jnp.arange(16) % 4)
  _assert_blocks_equal(state.params, new.params, ["block_00", "block_01"])
  assert _differs(state.params["block_02"], new.params["block_02"])


def test_growing_to_the_same_block_count_or_from_an_interrupted_run_is_refused(old_run, tmp_path):
  _, old_dir = old_run
  same = _run_config(num_blocks=2, num_epochs=1, side_split="width:4", from_workdir=old_dir)
  with pytest.raises(
    growth.GrowthMismatchError,
    match=rf"config.grow.from_workdir='{old_dir}' has 2 blocks and the new model 2: growing "
    r"must add a block\. Set config.model.num_blocks above 2",
  ):
    growth.make_plan(same, models.create_model(same, NUM_CLASSES))

  interrupted = str(tmp_path / "interrupted")  # the old run, as one of 2 epochs stopped after 1
  shutil.copytree(old_dir, interrupted)
  (step,) = os.listdir(os.path.join(interrupted, "checkpoints"))
  path = os.path.join(interrupted, "checkpoints", step, "metadata", "metadata")
  with open(path) as f:
    metadata = json.load(f)
  metadata["config"]["train"]["num_epochs"] = 2
  with open(path, "w") as f:
    json.dump(checkpoint.with_metadata_digest(metadata), f)
  grown = _run_config(num_blocks=3, num_epochs=2, side_split="width:4", from_workdir=interrupted)
  grown.model.vgg_blocks = "32,32,M;64,M;128"
  with pytest.raises(
    growth.GrowthMismatchError,
    match=rf"'{interrupted}' is an interrupted run: its latest checkpoint is at step {step} of "
    rf"{2 * int(step)}, so its blocks are not trained yet\. Finish it first",
  ):
    train.train_and_evaluate(grown, str(tmp_path / "new"))
  assert not os.path.exists(tmp_path / "new" / "checkpoints")
