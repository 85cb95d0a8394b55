"""Bad configs fail early with a ``ValueError`` that names the offending field.

Every case goes through ``validate_config`` (what ``train_and_evaluate`` and the
launcher call first) or the helper that owns the field, and the match includes
``config.<field>`` so a user can find the line to fix.
"""

from __future__ import annotations

import re

import pytest

from deinforeg_jax import models, optim, parallel, train
from deinforeg_jax.configuration import validate_config
from helpers import tiny_config


def _field(name: str) -> str:
  return re.escape(f"config.{name}=")


def _with(overrides: dict, arch: str = "vgg"):
  config = tiny_config(arch)
  for path, value in overrides.items():
    section, _, name = path.rpartition(".")
    target = config
    for part in filter(None, section.split(".")):
      target = target[part]
    target[name] = value
  return config


@pytest.mark.parametrize("arch", ["vgg", "resnet18"])
@pytest.mark.parametrize("rule", ["deinforeg", "bp"])
def test_valid_configs_pass(arch, rule):
  config = tiny_config(arch, rule)
  validate_config(config)  # no exception
  assert config.model.num_blocks == 4


BAD_CONFIGS = [
  # (overrides, field named in the message, a hint that must also appear)
  ({"rule": "nope"}, "rule", "deinforeg"),
  ({"model.num_blocks": 0}, "model.num_blocks", "1..4"),
  ({"model.num_blocks": 5}, "model.num_blocks", "1..4"),
  ({"model.num_blocks": -1}, "model.num_blocks", "1..4"),
  ({"model.projector": "2048-abc"}, "model.projector", "dash-separated"),
  ({"model.projector": "-"}, "model.projector", "dash-separated"),
  ({"model.projector": "0-5"}, "model.projector", "positive"),
  ({"model.projector": "32--32"}, "model.projector", "dash-separated"),
  ({"model.arch": "alexnet"}, "model.arch", "resnet18"),
  ({"optim.name": "rmsprop"}, "optim.name", "lars"),
  ({"optim.schedule": "linear"}, "optim.schedule", "cosine"),
  ({"optim.base_lr": 0.0}, "optim.base_lr", "positive"),
  ({"model.classifier_mode": "both"}, "model.classifier_mode", "unmerge"),
  ({"model.width": 0.0}, "model.width", "positive"),
  ({"model.vgg_blocks": "128,,M"}, "model.vgg_blocks", "'M'"),
  ({"model.vgg_blocks": "128;abc"}, "model.vgg_blocks", "'abc'"),
  ({"model.vgg_blocks": ""}, "model.vgg_blocks", "'spec'"),
  ({"model.vgg_blocks": "128,M;"}, "model.vgg_blocks", "';'"),
  ({"model.vgg_blocks": "0,M"}, "model.vgg_blocks", "'0'"),
  ({"model.vgg_blocks": "-3"}, "model.vgg_blocks", "'-3'"),
  ({"data.batch_size": 0}, "data.batch_size", "positive integer"),
  ({"data.eval_batch_size": -8}, "data.eval_batch_size", "positive integer"),
  ({"train.num_epochs": 0}, "train.num_epochs", "positive integer"),
  ({"loss.ce_weight": -0.001}, "loss.ce_weight", ">= 0"),
]


@pytest.mark.parametrize(
  "overrides,field,hint",
  BAD_CONFIGS,
  ids=[f"{f}={list(o.values())[0]!r}" for o, f, _ in BAD_CONFIGS],
)
def test_bad_config_names_the_field(overrides, field, hint):
  with pytest.raises(ValueError, match=_field(field)) as error:
    validate_config(_with(overrides))
  assert hint in str(error.value)


@pytest.mark.parametrize("num_blocks", [0, 5])
def test_resnet_num_blocks_out_of_range(num_blocks):
  with pytest.raises(ValueError, match=_field("model.num_blocks")):
    validate_config(_with({"model.num_blocks": num_blocks}, arch="resnet18"))


def test_vgg_num_blocks_limit_follows_vgg_blocks():
  config = _with({"model.vgg_blocks": "8,M;16,M", "model.num_blocks": 3})
  with pytest.raises(ValueError, match=_field("model.num_blocks") + ".*1..2"):
    validate_config(config)
  config.model.num_blocks = 2
  validate_config(config)


def test_vgg_blocks_spec_parses_to_the_spec_table():
  assert models.parse_vgg_blocks("spec") == (
    (128, 128, 128, 256, "M"),
    (256, 512, "M"),
    (512, 512, "M"),
    (512, "M"),
  )
  assert models.parse_vgg_blocks(" 8, m ;16,M") == ((8, "M"), (16, "M"))


def test_vgg_blocks_superscript_digit_names_the_field():
  with pytest.raises(ValueError, match=_field("model.vgg_blocks")):
    models.parse_vgg_blocks("2²,M")


def test_unknown_optimizer_and_schedule_in_builders():
  config = tiny_config()
  config.optim.name = "rmsprop"
  with pytest.raises(ValueError, match=_field("optim.name")):
    optim.make_optimizer(config.optim, optim.cosine_schedule(0.1, 0.0, 10))
  config.optim.schedule = "linear"
  with pytest.raises(ValueError, match=_field("optim.schedule")):
    optim.make_schedule(config.optim, total_steps=10, steps_per_epoch=2)


def test_batch_not_divisible_by_devices(eight_devices):
  del eight_devices
  mesh = parallel.make_data_mesh(8)
  with pytest.raises(ValueError, match=_field("data.batch_size") + "30.*8 devices"):
    parallel.check_batch_divisible(30, mesh, "data.batch_size")
  parallel.check_batch_divisible(32, mesh, "data.batch_size")  # divisible: no error
  parallel.check_batch_divisible(30, parallel.make_data_mesh(1), "data.batch_size")


def test_train_and_evaluate_rejects_an_indivisible_batch_before_training(tmp_path):
  config = tiny_config()
  config.data.batch_size = 36
  config.parallel.num_devices = 8
  with pytest.raises(ValueError, match=_field("data.batch_size") + "36"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "results.json").exists()


def test_too_many_devices_names_the_field():
  with pytest.raises(ValueError, match=_field("parallel.num_devices") + "9"):
    parallel.make_data_mesh(9)


@pytest.mark.parametrize(
  "rule, why",
  [("deinforeg", r"variance \(unbiased: 1/\(B-1\)\) and covariance terms"),
   ("scpl", "supervised contrastive loss compares each example with the others")],
)
def test_a_batch_of_one_is_refused_where_the_loss_is_a_batch_statistic(rule, why):
  config = _with({"data.batch_size": 1, "rule": rule})
  with pytest.raises(ValueError, match=_field("data.batch_size") + rf"1 is too small .*{why}"):
    validate_config(config)
  config.data.batch_size = 2
  validate_config(config)
  validate_config(_with({"data.batch_size": 1, "rule": "bp"}))  # one example is a fine BP batch
