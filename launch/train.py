"""Train a DeInfoReg (or BP) model from a config file.

python -m launch.train --workdir=runs/default                      # embedded default
python -m launch.train --config=launch/configs/cifar10_vgg.py --workdir=W --config.rule=bp
XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m launch.train --workdir=W \
    --config.parallel.mode=pipeline                            # 4 stages on 4 fake devices
python -m launch.train --workdir=W --config.parallel.distributed=True \
    --coordinator_address=HOST0:1234 --num_processes=2 --process_id=I   # on each host, I = 0, 1
"""

import os

from launch import cli  # absl and ml_collections only: quick

if __name__ == "__main__":
  # SIGTERM/SIGINT during the imports below (seconds), flag parsing and start-up: remembered and
  # answered with exit 75 and a note (``main``), not a silent exit 143.
  cli.remember_signals()

from absl import app, flags, logging  # noqa: E402

from deinforeg_jax import parallel  # noqa: E402
from deinforeg_jax.train import Preempted, train_and_evaluate  # noqa: E402

# config_flags applies the --config.<field> overrides of sys.argv here
cli.define_config("config", help_string="Run config (ml_collections file).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for metrics.jsonl and results.json.", required=True
)
# Multi-process jobs (--config.parallel.distributed=True); every process gets the same flags but
# its own --process_id.  Unset: JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
# else JAX's cluster detection (Cloud TPU VMs, Slurm, Open MPI, Kubernetes).
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", "", "Multi-process: HOST:PORT of process 0, the same for every process."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-process: processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-process: this process, 0..N-1.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
  config = flags.FLAGS.config
  parallel.initialize_distributed(
    config.parallel.distributed, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  )
  if cli.pending_signal():
    latest = _latest_checkpoint_step(_WORKDIR.value)
    raise Preempted(cli.pending_signal(), "while starting", _WORKDIR.value, None, latest)
  train_and_evaluate(config, _WORKDIR.value)


def _latest_checkpoint_step(workdir: str) -> int | None:
  """The newest step folder under ``<workdir>/checkpoints`` (None if there is none)."""
  directory = os.path.join(os.path.expanduser(workdir), "checkpoints")
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return max((int(name) for name in names if name.isdigit()), default=None)


def run():
  """Entry point of the ``deinforeg-train`` console script (exit codes: ``launch.cli``)."""
  cli.run(main, on_signal="remember")


if __name__ == "__main__":
  run()
