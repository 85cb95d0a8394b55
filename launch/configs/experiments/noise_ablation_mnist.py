"""Why DeInfoReg loses under label noise on MNIST: optimizer and CE-weight ablation (issue 25).

The converged MNIST protocol (``converged_mnist.py``'s base: width 0.5, batch 128, 10 epochs,
Adam 1e-3 -> 1e-5 cosine, no augmentation) at 40% symmetric noise only, seeds 0-2.  Columns
are variants of one rule (labels on the ``rules`` axis, ``rule_overrides`` set the rule):

- ``deinforeg_lars``: DeInfoReg with the thesis's vision optimizer, LARS lr 0.2 -> 0.002
  cosine stepped per epoch, weight decay 1e-4, momentum 0.9, eta 1e-3, CE weight 0.001;
- ``deinforeg_ce0p1`` / ``deinforeg_ce0p01``: DeInfoReg, Adam, CE weight 0.1 / 0.01;
- ``bp_lars``: BP under the same LARS, the reference point for ``deinforeg_lars``;
- ``deinforeg`` / ``bp``: Adam, CE weight 0.001, the converged study's own 40% cells (same
  cell names and configs; copied from ``studies/converged_mnist/cells``, not retrained).

The informative variants come first: cells run seed-major in this order.  Both metrics are
tabulated, ``best_test_accuracy`` (best block at the end) and ``best_epoch_test_accuracy``
(best block at its best epoch), each with every DeInfoReg variant's Welch win / tie / loss.
About 20-25 min per DeInfoReg cell, 12 per BP cell on 2 quiet CPU cores; rerunning the
command continues:

  python -m launch.prepare_data --name=mnist_local --data_dir=$HOME/tfds \\
      --npz=../shared/data/mnist.npz
  python -m launch.experiments --grid=launch/configs/experiments/noise_ablation_mnist.py \\
      --root=studies/noise_ablation --grid.base.data.data_dir=$HOME/tfds
  python -m launch.experiments --grid=launch/configs/experiments/noise_ablation_mnist.py \\
      --root=studies/noise_ablation --grid.base.data.data_dir=$HOME/tfds --report_only

(``--report_only`` writes table and plots from the summaries; the data_dir must match where
workdirs of this root exist, as their configs are checked.)
"""

import ml_collections

from launch.configs.experiments import converged_mnist, make_grid

# The thesis's vision optimizer (the original's LARS, lr evaluated once per epoch).
LARS = {
  "name": "lars",
  "base_lr": 0.2,
  "end_lr": 0.002,
  "schedule": "cosine",
  "schedule_per_epoch": True,
  "weight_decay": 1e-4,
  "momentum": 0.9,
  "eta": 1e-3,
}


def get_config():
  base = converged_mnist.get_config().base
  rules = ("deinforeg_lars", "deinforeg_ce0p1", "bp_lars", "deinforeg_ce0p01", "deinforeg", "bp")
  grid = make_grid(base, rules, ("mnist_local",), (40,), seeds=(0, 1, 2))
  grid.rule_overrides = ml_collections.ConfigDict(
    {
      "deinforeg_lars": {"rule": "deinforeg", "optim": LARS},
      "deinforeg_ce0p1": {"rule": "deinforeg", "loss": {"ce_weight": 0.1}},
      "bp_lars": {"rule": "bp", "optim": LARS},
      "deinforeg_ce0p01": {"rule": "deinforeg", "loss": {"ce_weight": 0.01}},
    }
  )
  grid.plateau_epochs = 3
  grid.plateau_tol = 0.001
  grid.compare_to = "deinforeg_lars,deinforeg_ce0p1,deinforeg_ce0p01,deinforeg"
  grid.extra_metrics = ("best_epoch_test_accuracy",)
  return grid
