"""Default config: a small 4-block VGG-style DeInfoReg stack on the embedded digits.

Runs offline on a fresh machine in about a minute on 2 CPU cores:
  python -m launch.train --workdir=runs/digits
Any field can be overridden, e.g. ``--config.rule=bp --config.train.num_epochs=20``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.rule = "deinforeg"  # "deinforeg" | "bp"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"  # sklearn's bundled 8x8 digits, 1,437 train / 360 test
  # Any other name is a TFDS dataset read from config.data.data_dir (array_record), e.g. one
  # made by `python -m launch.prepare_data`; input shape and class count come from it.
  config.data.data_dir = ""  # "": ~/tensorflow_datasets
  config.data.download = False  # opt-in TFDS download_and_prepare; never implicit
  config.data.split_seed = 0  # digits train/test split
  config.data.augment = "none"  # "none" | "crop_flip" | "strong" (SPEC 5.1's default pipeline)
  config.data.label_noise = ml_collections.ConfigDict()
  config.data.label_noise.kind = "none"  # "none" | "symmetric" | "asymmetric" (SPEC 5.3)
  config.data.label_noise.rate = 0  # percent of training samples relabelled
  config.data.label_noise.seed = 0
  config.data.batch_size = 64
  config.data.eval_batch_size = 360

  config.model = ml_collections.ConfigDict()
  config.model.arch = "vgg"  # "vgg" | "resnet18" | "resnet34" | "resnet50"
  # Blocks separated by ';', conv widths and 'M' (max-pool); 'spec' is SPEC 4.1's VGG.
  config.model.vgg_blocks = "32,32,M;64,M;128,M;128"
  config.model.width = 1.0  # channel multiplier
  config.model.num_blocks = 4
  config.model.projector = "256-256"  # SPEC: "2048-2048-2048"
  config.model.classifier_mode = "merge"  # "merge" | "unmerge"
  config.model.bp_head_hidden = 2048  # BP VGG head: Flatten-Dense(2048)-ReLU-Dense(C)

  config.loss = ml_collections.ConfigDict()
  config.loss.invariance_weight = 1.0
  config.loss.variance_weight = 1.0
  config.loss.covariance_weight = 1.0
  config.loss.ce_weight = 0.001
  config.loss.variance_batch_scaling = True  # the reference's extra 1/B on the variance term

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "lars"  # "lars" | "adam" | "sgd"
  config.optim.base_lr = 0.2
  config.optim.end_lr = 0.002
  config.optim.schedule = "cosine"  # "cosine" | "constant"
  config.optim.schedule_per_epoch = False  # True: the reference's per-epoch LR steps
  config.optim.weight_decay = 1e-4  # LARS only
  config.optim.momentum = 0.9
  config.optim.eta = 1e-3  # LARS trust coefficient

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 20

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 0  # also save every N steps inside an epoch (0: epoch ends only)
  config.checkpoint.keep = 2  # checkpoints kept in <workdir>/checkpoints
  config.checkpoint.use_async = True

  config.parallel = ml_collections.ConfigDict()
  config.parallel.mode = "data"  # "data" | "pipeline" (blocks on their own devices)
  config.parallel.num_devices = 0  # data mode: 0 = every visible device on the data axis
  config.parallel.distributed = False  # multi-host: jax.distributed.initialize() first
  # Pipeline mode (deinforeg_jax/pipeline.py):
  config.parallel.num_stages = 0  # 0: one stage per local device, at most one per block
  config.parallel.pipeline_schedule = "pipelined"  # "pipelined" | "synchronous"
  config.parallel.pipeline_balance = "flops"  # "flops" | "time" | "uniform"
  config.parallel.pipeline_dispatch = "auto"  # "auto" | "threads" | "ticks"
  return config
