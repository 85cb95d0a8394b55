"""The vision family of ``make_oracle.py``: the original's VGG and ResNet-18 classes, made small.

Runs in the original's PyTorch venv (``make_oracle.py`` passes ``torch`` in and has put
``DEINFOREG_REF_DIR`` on ``sys.path``).  The classes trained are the original's
``VGG_DeInfoReg``, ``VGG``, ``VGG_SCPL``, ``VGG_AL`` (``vision/model/VGG.py``) and
``resnet_DeInfoReg``, ``resnet``, ``resnet_SCPL``, ``resnet_AL`` with ``BasicBlock`` and
``--resnet_layers`` units per stage (``vision/model/ResNet.py``); their ``forward``,
``train_step`` and ``inference`` run unchanged.  How they are made small:

* VGG: every VGG class writes its ``layer_cfg`` (and the BP/SCPL head's 2048, AL's 500) into
  its ``__init__``, so a subclass's ``__init__`` builds the same attributes in the original's
  order from the original's parts (``_make_layer``, ``Set_Local_Loss``, ``Layer_Classifier``,
  ``ContrastiveLoss``, ``VGG_AL_Component``, ``Flatten``) with ``--vgg_layer_cfg`` (one ``M``
  per block), ``--vision_head_hidden``, ``--vision_scpl_neurons`` and ``--vision_al_hidden``.
* ResNet: ``Resnet_block.__init__`` fixes the stem width 64 and the image side 32; a class
  placed between the original class and ``Resnet_block`` sets ``dim``/``layershape`` to
  ``--resnet_width`` and ``shape`` to ``--vision_image_size`` after it, and the original
  constructors run (``resnet``, ``resnet_SCPL``, ``resnet_DeInfoReg``).  ``ContrastiveLoss``'s
  ``mid_neurons``/``out_neurons`` (512/1024 by default, not passed by ``resnet_SCPL``) are set
  by binding the module's name to the class with those arguments while the constructor runs.
  ``resnet_AL`` writes 64..512 and 500 into its ``__init__``: rebuilt like VGG's, from
  ``conv_layer_bn``, ``_make_layer`` and ``ResNet_AL_Component``.
* Images: CIFAR-10 from ``--npz``, centre-cropped to ``--vision_image_size`` (``oracle_data``);
  the oracle stores the indices; eval example ``k`` is test image ``k x --vision_eval_stride``
  (the test split is sorted by label).  Nothing the original imports is stubbed.
* The float64 twin of AL: ``train_step`` makes the one-hot label codes with ``.float()``; a
  forward pre-hook on ``layer1`` casts its floating inputs to float64.

``loss_block`` rows/columns, recorded by forward hooks on the original's own loss modules:
DeInfoReg: a row per block, ``local_total`` (its ``DeInfoReg`` module's loss) and
``ce_times_0.001``; BP: one row ``ce``; SCPL: a row per block's ``ContrastiveLoss`` and one for
the head's CE, column ``loss``; AL: a row per block, ``bridge`` (``cb``) and
``reconstruction`` (``ca``).  ``eval_logits``: DeInfoReg each block classifier; BP, SCPL and
AL the original's one inference output.

``--adaptive`` (rule deinforeg): the trained model's ``VGG_DeInfoReg_Adaptive`` decisions
(``oracle_adaptive``; the subclass puts the original's adaptive class over the small
``VGG_DeInfoReg``).  ``resnet_DeInfoReg_Adaptive.inference`` raises ``AttributeError`` (it reads
``layer1``/``loss1``/``classifier1``; ``resnet_DeInfoReg`` has ``ModuleList``s): the maker stops
with that error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import types

import numpy as np

import oracle_adaptive
import oracle_data

ARCHS = ("vgg", "resnet18")
RULES = ("deinforeg", "bp", "scpl", "al")
N_CLASSES = 10


def add_arguments(parser) -> None:
  parser.add_argument("--vgg_layer_cfg", default='[[8,"M"],[16,"M"],[16,"M"],[32,"M"]]',
                      help="VGG blocks (JSON), each with one 'M'; BP/SCPL/AL need 4 blocks")
  parser.add_argument("--resnet_width", type=int, default=4, help="stem width (the original: 64)")
  parser.add_argument("--resnet_layers", default="2,2,2,2", help="BasicBlock units per stage")
  parser.add_argument("--vision_eval_stride", type=int, default=1,
                      help="eval example k is test image k x stride (the test split is sorted "
                           "by label: stride > 1 mixes the classes)")
  parser.add_argument("--vision_image_size", type=int, default=16, help="centre crop side")
  parser.add_argument("--vision_mlp", default="16-16", help="DeInfoReg projector (args.mlp)")
  parser.add_argument("--vision_merge", default="merge", choices=("merge", "unmerge"))
  parser.add_argument("--vision_blocks", type=int, default=4, help="DeInfoReg blockwise_total")
  parser.add_argument("--vision_head_hidden", type=int, default=32,
                      help="VGG BP/SCPL head Linear width (the original: 2048)")
  parser.add_argument("--vision_scpl_neurons", default="32-32",
                      help="ContrastiveLoss mid_neurons-out_neurons (the original: 512-1024)")
  parser.add_argument("--vision_al_hidden", type=int, default=16,
                      help="AL neuron_size (the original: 500; the bridge is 5x it)")


def _vgg_shapes(layer_cfg, size):
  """``[(C, S)]`` after each block (channels, side)."""
  out, c = [], 3
  for block in layer_cfg:
    for v in block:
      if v == "M":
        size //= 2
      else:
        c = v
    out.append((c, size))
  return out


def _vgg_classes(rule, a):
  """Small subclasses of the original's VGG classes (module docstring)."""
  import torch.nn as nn  # pylint: disable=import-outside-toplevel
  from utils.utils import ContrastiveLoss, Layer_Classifier, Set_Local_Loss
  from utils.vision_utils import Flatten
  from vision.model import VGG as ref

  cfg = json.loads(a.vgg_layer_cfg)
  fixed_four = rule not in ("deinforeg", "adaptive")
  if fixed_four and (len(cfg) != 4 or any(b.count("M") != 1 for b in cfg)):
    raise SystemExit("--vgg_layer_cfg: VGG, VGG_SCPL and VGG_AL have 4 blocks, one 'M' each")

  def start(self, args):
    ref.VGG_block.__init__(self, args)
    self.shape = a.vision_image_size

  class SmallVGGDeInfoReg(ref.VGG_DeInfoReg):
    def __init__(self, args):
      start(self, args)
      self.num_classes, self.merge = args.n_classes, args.merge
      self.blockwisetotal = args.blockwise_total
      self.layer, self.loss, self.classifier = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
      for i in range(self.blockwisetotal):
        self.layer.append(self._make_layer(cfg[i]))
        for _ in range(cfg[i].count("M")):
          self._shape_div_2()
        self.loss.append(
          Set_Local_Loss(input_channel=self.in_channels, shape=self.shape, args=args))
        self.classifier.append(Layer_Classifier(
          input_channel=self.in_channels * self.shape * self.shape, args=args))
      self.ce = nn.CrossEntropyLoss()

  def head(args):
    c, s = _vgg_shapes(cfg, a.vision_image_size)[-1]
    return nn.Sequential(Flatten(), nn.Linear(c * s * s, a.vision_head_hidden), nn.ReLU(),
                         nn.Linear(a.vision_head_hidden, args.n_classes))

  class SmallVGG(ref.VGG):
    def __init__(self, args):
      start(self, args)
      self.num_class = args.n_classes
      self.ce = nn.CrossEntropyLoss()
      self.layer1, self.layer2, self.layer3, self.layer4 = (self._make_layer(b) for b in cfg)
      self.fc = head(args)

  mid, out = map(int, a.vision_scpl_neurons.split("-"))

  class SmallVGGSCPL(ref.VGG_SCPL):
    def __init__(self, args):
      start(self, args)
      self.num_classes = args.n_classes
      for k, block in enumerate(cfg, 1):
        setattr(self, f"layer{k}", self._make_layer(block))
        setattr(self, f"loss{k}", ContrastiveLoss(
          0.1, mid, out, input_channel=self.in_channels, shape=self._shape_div_2(), args=args))
      self.fc = head(args)
      self.ce = nn.CrossEntropyLoss()

  class SmallVGGAL(ref.VGG_AL):
    def __init__(self, args):
      start(self, args)
      hidden = a.vision_al_hidden
      self.num_classes = args.n_classes
      for k, block in enumerate(cfg, 1):
        conv = self._make_layer(block)
        setattr(self, f"layer{k}", ref.VGG_AL_Component(
          conv=conv, input_size=self.in_channels, shape=self._shape_div_2(), hidden_size=hidden,
          out_features=self.num_classes if k == 1 else hidden))

  class SmallVGGDeInfoRegAdaptive(ref.VGG_DeInfoReg_Adaptive, SmallVGGDeInfoReg):
    """The original's adaptive class over the small ``VGG_DeInfoReg`` (its ``super().__init__``)."""

  return {"deinforeg": SmallVGGDeInfoReg, "bp": SmallVGG, "scpl": SmallVGGSCPL,
          "al": SmallVGGAL, "adaptive": SmallVGGDeInfoRegAdaptive}[rule]


def _resnet_class(rule, a):
  """The original ResNet class with small widths (module docstring)."""
  import torch.nn as nn  # pylint: disable=import-outside-toplevel
  from utils.vision_utils import conv_layer_bn
  from vision.model import ResNet as ref

  class SmallWidths(ref.Resnet_block):
    def __init__(self, args):
      super().__init__(args)
      self.dim = self.layershape = a.resnet_width
      self.shape = a.vision_image_size

  class SmallResnetAL(ref.resnet_AL, SmallWidths):
    def __init__(self, args, block, layers):
      SmallWidths.__init__(self, args)
      self.num_classes, self.block, self.layers = args.n_classes, block, layers
      neuron_size = a.vision_al_hidden
      conv1 = conv_layer_bn(self.num_channel, self.dim, nn.ReLU(inplace=True), stride=1,
                            kernel_size=3)
      conv2_x = self._make_layer(block=self.block, out_channels=self.dim, blocks=self.layers[0])
      self.layer1 = ref.ResNet_AL_Component(nn.Sequential(conv1, conv2_x), self.dim, self.shape,
                                            neuron_size, self.num_classes)
      for k in (2, 3, 4):
        conv = self._make_layer(block=self.block, out_channels=self._dim_mul_2(), stride=2,
                                blocks=self.layers[k - 1])
        setattr(self, f"layer{k}", ref.ResNet_AL_Component(
          conv, self.dim, self._shape_div_2(), neuron_size, neuron_size))

  if rule == "al":
    return SmallResnetAL
  if rule == "adaptive":
    return type("Smallresnet_DeInfoReg_Adaptive", (ref.resnet_DeInfoReg_Adaptive, SmallWidths), {})
  original = {"deinforeg": ref.resnet_DeInfoReg, "bp": ref.resnet, "scpl": ref.resnet_SCPL}[rule]
  return type(f"Small{original.__name__}", (original, SmallWidths), {})


@contextlib.contextmanager
def _contrastive_neurons(a):
  """``vision.model.ResNet.ContrastiveLoss`` with ``--vision_scpl_neurons`` while it is bound."""
  from vision.model import ResNet as ref  # pylint: disable=import-outside-toplevel

  mid, out = map(int, a.vision_scpl_neurons.split("-"))
  original = ref.ContrastiveLoss
  ref.ContrastiveLoss = functools.partial(original, mid_neurons=mid, out_neurons=out)
  try:
    yield
  finally:
    ref.ContrastiveLoss = original


def watch_outputs(groups, torch):
  """Forward hooks recording scalar module outputs: ``groups`` is ``[(modules, pick)]``, one
  per ``loss_block`` column (``pick(output) -> scalar tensor``); ``read()`` returns ``[R, C]``
  (row ``r``: the ``r``-th training-mode call of the column's modules since the last read)."""
  calls = [[] for _ in groups]

  def hook_for(column, pick):
    def hook(module, inputs, output):
      del module, inputs
      if torch.is_grad_enabled():
        calls[column].append(float(pick(output).detach().double()))
    return hook

  for column, (modules, pick) in enumerate(groups):
    for module in modules:
      module.register_forward_hook(hook_for(column, pick))

  def read():
    rows = np.array(calls, np.float64).T
    for c in calls:
      c.clear()
    return rows

  return read


def _watch(model, rule, torch):
  """``loss_block`` hooks on the original's loss modules (module docstring)."""
  first = lambda output: output[0]
  same = lambda output: output
  if rule == "deinforeg":
    return watch_outputs([(list(model.loss), first), ([model.ce], lambda o: o * 0.001)], torch)
  if rule == "bp":
    return watch_outputs([([model.ce], same)], torch)
  if rule == "scpl":
    losses = [getattr(model, f"loss{k}") for k in (1, 2, 3, 4)] + [model.ce]
    return watch_outputs([(losses, same)], torch)
  blocks = [getattr(model, f"layer{k}") for k in (1, 2, 3, 4)]
  return watch_outputs([([b.cb for b in blocks], same), ([b.ca for b in blocks], same)], torch)


LOSS_BLOCK_COLUMNS = {
  "deinforeg": ["local_total", "ce_times_0.001"],
  "bp": ["ce"],
  "scpl": ["loss"],  # rows: each block's contrastive loss, then the head's CE
  "al": ["bridge", "reconstruction"],
}


def _train(make_model, init, dtype, a, rule, batches, eval_batch, torch):
  """One run of the original from ``init`` in ``dtype`` with its ``LARS`` (as its
  ``set_optim``): ``(loss_total, loss_block, final state_dict, eval logits [X, E, C])``."""
  from utils.utils import LARS  # pylint: disable=import-outside-toplevel

  model = make_model()
  model.load_state_dict(init)
  model = model.to(dtype)
  read = _watch(model, rule, torch)
  if rule == "al" and dtype != torch.float32:  # train_step makes its one-hot codes .float()
    model.layer1.register_forward_pre_hook(
      lambda module, inputs: tuple(v.to(dtype) if v is not None and v.is_floating_point()
                                   else v for v in inputs))
  opt = LARS(model.parameters(), lr=a.lr, weight_decay=a.wd,
             weight_decay_filter=LARS.exclude_bias_and_norm,
             lars_adaptation_filter=LARS.exclude_bias_and_norm)
  totals, blocks = [], []
  for x, y in batches:
    model.train()
    loss = model(x.to(dtype), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    totals.append(loss.item())
    blocks.append(read())
  model.eval()
  with torch.no_grad():
    output = model(eval_batch[0].to(dtype), eval_batch[1])
  exits = [output[1][k + 1][0] for k in range(len(output[1]))] if rule == "deinforeg" else [output]
  logits = np.stack([v.double().numpy() for v in exits])
  final = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return np.array(totals), np.stack(blocks), final, logits


def _adaptive(arch, a, args, layers, fin32, fin64, eval_batch, torch):
  """``oracle_adaptive.record`` with the original's ``VGG_DeInfoReg_Adaptive``; its
  ``resnet_DeInfoReg_Adaptive.inference`` reads ``layer1``/``loss1``/``classifier1``, which
  ``resnet_DeInfoReg`` (``ModuleList``s) lacks: the ``AttributeError`` it raises is reported."""
  args = types.SimpleNamespace(**vars(args), patiencethreshold=a.patience,
                               cosinesimthreshold=a.cosine_threshold)
  cls = _vgg_classes("adaptive", a) if arch == "vgg" else _resnet_class("adaptive", a)
  if arch == "vgg":
    make_adaptive = lambda: cls(args)
  else:
    from vision.model.ResNet import BasicBlock  # pylint: disable=import-outside-toplevel

    make_adaptive = lambda: cls(args, BasicBlock, layers)
  try:
    return oracle_adaptive.record(make_adaptive, fin32, fin64, *eval_batch, a, torch)
  except AttributeError as error:
    raise SystemExit(f"--adaptive: the original's {cls.__mro__[1].__name__}.inference fails: "
                     f"AttributeError: {error}") from None


def make(a, data_dir):
  """``make_oracle``'s family entry point (its module docstring): ``(arrays, summary)``."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(2)
  arch, rule = a.arch, a.rule
  size = a.vision_image_size
  npz = a.npz or os.path.join(data_dir, oracle_data.CIFAR10_FILE)
  if os.path.basename(npz) != oracle_data.CIFAR10_FILE:
    raise SystemExit(f"--npz must be {oracle_data.CIFAR10_FILE} (the replay reads it by name)")
  train_index = oracle_data.batch_indices(a.offset, a.steps, a.batch)
  eval_index = np.arange(a.eval, dtype=np.int32) * a.vision_eval_stride
  x, y, x_eval, y_eval = oracle_data.cifar_inputs(
    os.path.dirname(npz) or ".", train_index, eval_index, size)
  nchw = lambda v: torch.from_numpy(np.ascontiguousarray(np.moveaxis(v, -1, -3)))
  blocks = a.vision_blocks if rule == "deinforeg" else 4
  args = types.SimpleNamespace(
    n_classes=N_CLASSES, mlp=a.vision_mlp, merge=a.vision_merge, blockwise_total=blocks,
    localloss="DeInfoReg", task="vision")
  meta = dict(arch=arch, rule=rule, seed=a.seed, batch=a.batch, steps=a.steps, lr=a.lr,
              wd=a.wd, momentum=0.9, eta=0.001, schedule="constant", offset=a.offset,
              eval=a.eval, eval_stride=a.vision_eval_stride, data=oracle_data.CIFAR10_FILE,
              image_size=size, n_classes=N_CLASSES, blocks=blocks,
              bn=dict(eps=1e-5, momentum_torch=0.1, running_var="unbiased"),
              loss_block_columns=LOSS_BLOCK_COLUMNS[rule], torch=torch.__version__,
              reference="ianzih/Decoupled-Supervised-Learning-for-Information-Regularization"
                        "@fe6cc49",
              x="train_index [T, B] / eval_index [E] into meta.data's train / test split, "
                "prepared by benchmarks/oracle_data.py (centre crop, /255, CIFAR mean/std)")
  if arch == "vgg":
    cls = _vgg_classes(rule, a)
    make_model = lambda: cls(args)
    meta["layer_cfg"] = json.loads(a.vgg_layer_cfg)[:blocks]
  else:
    from vision.model.ResNet import BasicBlock  # pylint: disable=import-outside-toplevel

    cls = _resnet_class(rule, a)
    layers = [int(v) for v in a.resnet_layers.split(",")]

    def make_model():
      with _contrastive_neurons(a):
        return cls(args, BasicBlock, layers)

    meta.update(resnet_width=a.resnet_width, resnet_layers=layers)
  if rule == "deinforeg":
    meta.update(mlp=a.vision_mlp, merge=a.vision_merge)
  elif arch == "vgg":
    meta["head_hidden"] = a.vision_head_hidden
  if rule == "scpl":
    meta.update(scpl_neurons=a.vision_scpl_neurons, temperature=0.1)
  if rule == "al":
    meta.update(al_hidden=a.vision_al_hidden, al_bridge=5 * a.vision_al_hidden,
                al_activation="sigmoid")
  torch.manual_seed(a.seed)
  init = {k: v.detach().clone() for k, v in make_model().state_dict().items()}
  batches = [(nchw(x[t]), torch.from_numpy(y[t])) for t in range(a.steps)]
  eval_batch = (nchw(x_eval), torch.from_numpy(y_eval))
  runs = {dtype: _train(make_model, init, dtype, a, rule, batches, eval_batch, torch)
          for dtype in (torch.float32, torch.float64)}
  (tot32, blk32, fin32, log32), (tot64, blk64, fin64, log64) = runs.values()
  arrays = {"meta": np.array(json.dumps(meta)), "train_index": train_index, "y": y,
            "eval_index": eval_index, "y_eval": y_eval,
            "loss_total": tot32.astype(np.float32), "loss_block": blk32.astype(np.float32),
            "eval_logits": log32.astype(np.float32), "f64_loss_total": tot64,
            "f64_loss_block": blk64, "f64_eval_logits": log64}
  if a.adaptive:
    arrays.update(_adaptive(arch, a, args, layers if arch == "resnet18" else None, fin32, fin64,
                            eval_batch, torch))
    meta.update(oracle_adaptive.meta(a))
    arrays["meta"] = np.array(json.dumps(meta))
  arrays.update({f"init/{k}": v.numpy() for k, v in init.items()})
  arrays.update({f"final/{k}": v for k, v in fin32.items()})
  arrays.update({f"f64_final/{k}": v for k, v in fin64.items()})
  summary = dict(arch=arch, rule=rule, steps=a.steps, loss_first=float(tot32[0]),
                 loss_last=float(tot32[-1]),
                 f32_vs_f64_loss_max_rel=float(np.max(np.abs(tot32 - tot64) / np.abs(tot64))),
                 f32_vs_f64_logits_max_abs=float(np.max(np.abs(log32 - log64))),
                 params=int(sum(v.numel() for v in init.values() if v.is_floating_point())))
  if a.adaptive:
    summary.update(adaptive_exit=arrays["adaptive_exit"].tolist(),
                   f64_adaptive_exit=arrays["f64_adaptive_exit"].tolist(),
                   adaptive_accuracy=float(arrays["adaptive_accuracy"]))
  return arrays, summary
