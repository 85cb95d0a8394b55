"""Default config: a small 4-block VGG-style DeInfoReg stack on the embedded digits.

Runs offline on a fresh machine in about a minute on 2 CPU cores:
  python -m launch.train --workdir=runs/digits
Any field can be overridden, e.g. ``--config.rule=bp --config.train.num_epochs=20``.

Short runs (smoke tests, notebooks): LARS moves each weight matrix by ``lr·eta·‖w‖`` per step
(up to 10x that through momentum), so how far training gets grows with ``num_epochs·eta``. The
default's 20 epochs at ``eta = 1e-3`` reach 0.97-0.98 on every block; 3-4 epochs leave the blocks
near chance, in the original code too (docs/results.md, "Short training budgets"). Raise ``eta``
with the budget instead: ``--config.train.num_epochs=3 --config.optim.eta=0.01`` reaches 0.96-0.98.
A warm-up would not help, as the schedule is not the limit: a constant 0.2 reaches 0.31-0.56.
"""

import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.rule = "deinforeg"  # "deinforeg" | "bp" | "scpl" | "al" (baselines: SCPL, associated learning)
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.kind = "image"  # "image" | "text": what the dataset holds (text: spec_text.py)
  config.data.name = "digits"  # sklearn's bundled 8x8 digits, 1,437 train / 360 test
  # Any other name is a TFDS dataset read from config.data.data_dir (array_record), e.g. one
  # made by `python -m launch.prepare_data`; input shape and class count come from it.
  config.data.data_dir = ""  # "": ~/tensorflow_datasets
  config.data.download = False  # opt-in TFDS download_and_prepare; never implicit
  config.data.split_seed = 0  # digits train/test split
  config.data.augment = "none"  # "none" | "crop_flip" | "strong" (the reference code's default pipeline)
  config.data.label_noise = ml_collections.ConfigDict()
  config.data.label_noise.kind = "none"  # "none" | "symmetric" | "asymmetric" (training labels only)
  config.data.label_noise.rate = 0  # percent of training samples relabelled
  config.data.label_noise.seed = 0
  config.data.batch_size = 64
  config.data.eval_batch_size = 360
  # Text data (kind="text"): tokens kept per text (0: the reference length of a catalogue
  # dataset), vocabulary size including <pad> = 0 and <unk> = 1, English stop words removed
  # (scikit-learn's list), vocabulary from "train" | "train_test" (the reference).
  config.data.max_len = 0
  config.data.vocab_size = 30000
  config.data.stop_words = True
  config.data.vocab_from = "train"

  config.model = ml_collections.ConfigDict()
  config.model.arch = "vgg"  # "vgg" | "resnet18" | "resnet34" | "resnet50"
  # Blocks separated by ';', conv widths and 'M' (max-pool); 'spec' is the paper's VGG.
  config.model.vgg_blocks = "32,32,M;64,M;128,M;128"
  config.model.width = 1.0  # channel multiplier
  config.model.num_blocks = 4
  config.model.projector = "256-256"  # the paper: "2048-2048-2048"
  config.model.classifier_mode = "merge"  # "merge" | "unmerge"
  config.model.bp_head_hidden = 2048  # BP VGG head: Flatten-Dense(2048)-ReLU-Dense(C)
  config.model.batch_norm = True  # False: plain conv-ReLU VGG layers (deep plain networks)
  # Dense/Conv kernels and biases: "flax" (LeCun normal, bias 0) | "torch" (PyTorch's default,
  # U(+-1/sqrt(fan_in)), as the reference code); modules/layers.py.
  config.model.init = "flax"
  # BatchNorm running variance: "unbiased" (PyTorch's batch variance * n/(n-1), as the original
  # code) | "biased" (Flax's; the default before 2026-12).
  config.model.bn_running_var = "unbiased"
  # 3x3 stride-1 convolutions: "auto" (Winograd F(2x2,3x3) matmuls on CPU, where XLA's own
  # convolution is slow; XLA's elsewhere) | "xla" | "winograd" (modules/winograd.py).
  config.model.conv_impl = "auto"
  config.model.dtype = "float32"  # "float32" | "bfloat16": layers compute in bf16 (precision.py)
  config.model.matmul_precision = "default"  # "default" | "high" | "highest" (every layer)
  # Baselines (text stacks use the reference's NLP heads: identity SCPL head, Tanh AL layers):
  config.model.scpl_projector = "512-1024"  # SCPL contrastive head: Dense-ReLU-Dense (vision)
  config.model.al_hidden = 500  # AL label-code width (the reference: vision 500, text 300)
  config.model.al_bridge = "2500"  # AL bridge hidden widths before Dense(al_hidden)
  # AL activation: "tanh" | "sigmoid" (the reference's vision AL) | "relu".  Sigmoid label codes
  # shrink towards 0.5 block after block and the deeper exits stay at chance under LARS.
  config.model.al_activation = "tanh"
  # Text stacks (arch "lstm" | "transformer"; launch/configs/spec_text.py):
  config.model.emb_dim = 300
  config.model.glove = ""  # GloVe .txt/.npz path, width emb_dim; "" = random init
  config.model.freeze_embedding = False  # True: the embedding table is not trained
  config.model.embedding_pool = "masked"  # "masked" | "all" (reference: padding included)
  config.model.hidden = 300  # BiLSTM hidden size H per direction (output 2H)
  config.model.lstm_padding = "masked"  # "masked" (real tokens only) | "read" (reference)
  config.model.lstm_biases = 2  # 2: PyTorch's b_ih and b_hh (reference) | 1 (before 2026-12-07)
  # BiLSTM scan step rematerialised (same values): "auto" (GPU/TPU: ~2.6x less memory for IMDB;
  # not on CPU: the recomputed matmul costs step time) | "on" | "off".
  config.model.lstm_remat = "auto"
  config.model.heads = 6  # Transformer heads (reference: DeInfoReg 6, BP 4)
  config.model.ff_dim = 300  # Transformer feed-forward width (d_model = emb_dim)
  config.model.dropout = 0.1  # Transformer dropout
  config.model.positional_encoding = False  # sinusoidal codes before block_01 (reference: off)
  # Transformer LayerNorm: "unbiased_std" (reference: / (unbiased std + 1e-6)) | "flax" (before
  # 2026-12-07).  Text AL label-code width: "al_hidden" (reference) | "hidden" (before 2026-12-07).
  config.model.layer_norm = "unbiased_std"
  config.model.text_al_width = "al_hidden"

  config.loss = ml_collections.ConfigDict()
  config.loss.invariance_weight = 1.0
  config.loss.variance_weight = 1.0
  config.loss.covariance_weight = 1.0
  config.loss.ce_weight = 0.001
  config.loss.variance_batch_scaling = True  # the reference's extra 1/B on the variance term
  config.loss.contrastive_temperature = 0.1  # SCPL's supervised contrastive temperature

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "lars"  # "lars" | "adam" | "sgd"
  config.optim.base_lr = 0.2
  config.optim.end_lr = 0.002
  config.optim.schedule = "cosine"  # "cosine" | "constant"
  config.optim.schedule_per_epoch = False  # True: the reference's per-epoch LR steps
  config.optim.weight_decay = 1e-4  # LARS only
  config.optim.momentum = 0.9
  config.optim.eta = 1e-3  # LARS trust coefficient (short runs need more: see the docstring)

  config.train = ml_collections.ConfigDict()
  config.train.num_epochs = 20
  config.train.max_steps = 0  # stop after this many steps in all (0: every epoch); quick checks
  config.train.log_grad_norms = False  # per-layer encoder gradient norms in the step metrics
  # JAX's persistent compilation cache ("": off; deinforeg_jax/compile_cache.py): a rerun reads its
  # compiled programs. JAX's own JAX_COMPILATION_CACHE_DIR, when set, is the default.
  config.train.compile_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or (
    "~/.cache/deinforeg_jax/jax_cache"
  )
  config.train.peak_tflops = 0.0  # a device's peak TFLOP/s for MFU (0: the table in throughput.py)
  config.train.profile_steps = ""  # "A:B": a jax.profiler trace of steps A..B in <workdir>/profile

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 0  # also save every N steps inside an epoch (0: epoch ends only)
  config.checkpoint.every_epochs = 1  # save at every Nth epoch end (and always at the run's end)
  config.checkpoint.keep = 2  # checkpoints kept in <workdir>/checkpoints
  # Resuming with other settings is refused; list fields to accept a change, e.g.
  # "train.num_epochs,optim.base_lr" (recorded in metrics.jsonl).
  config.checkpoint.allow_changed = ""
  config.checkpoint.use_async = True

  config.parallel = ml_collections.ConfigDict()
  config.parallel.mode = "data"  # "data" | "pipeline" (blocks on their own devices)
  config.parallel.num_devices = 0  # data mode: 0 = every visible device on the data axis
  # Data mode: shard every large parameter and its optimizer state over the devices (ZeRO-3 /
  # FSDP style) instead of replicating them; results equal the replicated run.
  config.parallel.shard_state = False
  config.parallel.distributed = False  # multi-host: jax.distributed.initialize() first
  # Pipeline mode (deinforeg_jax/pipeline.py):
  config.parallel.num_stages = 0  # 0: one stage per local device, at most one per block
  config.parallel.pipeline_schedule = "pipelined"  # "pipelined" | "synchronous"
  config.parallel.pipeline_balance = "flops"  # "flops" | "time" | "uniform"
  config.parallel.pipeline_dispatch = "auto"  # "auto" | "threads" | "ticks"

  # Adaptive inference path (deinforeg_jax/inference.py), reported in results.json.
  config.inference = ml_collections.ConfigDict()
  config.inference.patience = 1  # agreements of consecutive exits needed to stop
  config.inference.cosine_threshold = 0.8  # agreement also needs logit cosine > this
  config.inference.exit_mode = "sample"  # "sample" | "batch" (the reference: one exit per batch)
  config.inference.patience_reset = True  # False: the reference's never-resetting counter

  # Growing a stack (deinforeg_jax/growth.py).  Defaults: no growth.
  config.grow = ml_collections.ConfigDict()
  config.grow.from_workdir = ""  # restore block_00.. from this run's checkpoint, train the rest
  config.grow.train_old = False  # True: restored blocks keep training (default: frozen)
  config.grow.schedule = ""  # in-run growth: "5,10" adds a block after 5 and after 10 epochs
  config.grow.freeze_on_add = False  # in-run: freeze the existing blocks when one is added
  config.grow.side_split = ""  # new input features: "width:4" = columns 4.. (height, channels)
  config.grow.side_layers = ""  # the new-feature block's VGG layers, e.g. "64" (needs side_split)
  config.grow.side_encoder = ""  # VGG layers run on the new features first, e.g. "32,M"
  # text: the new BiLSTM starts from zeros, or from the old top block's final (h, c) ("old_top",
  # the reference's LSTM_DeInfoReg_side)
  config.grow.side_lstm_state = "zero"
  return config
