"""Train a DeInfoReg (or BP) model from a config file.

python -m launch.train --workdir=runs/default                      # embedded default
python -m launch.train --config=launch/configs/cifar10_vgg.py --workdir=W --config.rule=bp
XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m launch.train --workdir=W \
    --config.parallel.mode=pipeline                            # 4 stages on 4 fake devices
python -m launch.train --workdir=W --config.parallel.distributed=True \
    --coordinator_address=HOST0:1234 --num_processes=2 --process_id=I   # on each host, I = 0, 1
"""

import os
import signal
import sys

# SIGTERM/SIGINT before the run installs its own handlers (imports, flag parsing, start-up):
# remembered and answered with exit 75 and a note, not a silent exit 143.  Installed before the
# imports (they take seconds) when run as ``python -m launch.train``, and by ``run()``.
_EARLY_SIGNALS: list[str] = []


def _remember_early_signals():
  def remember(signum, frame):
    del frame
    _EARLY_SIGNALS.append(signal.Signals(signum).name)

  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, remember)


if __name__ == "__main__":
  _remember_early_signals()

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from deinforeg_jax import parallel  # noqa: E402
from deinforeg_jax.train import Preempted, train_and_evaluate  # noqa: E402
from deinforeg_jax import workdir_lock  # noqa: E402
from deinforeg_jax.data.tfds_source import DatasetNotPreparedError  # noqa: E402

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was saved; run the same command to resume

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "default.py")


def _unknown_field(error: Exception, argv: list[str]) -> str:
  overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
  return (
    f"error: unknown config field {error} (in {', '.join(overrides)}): every --config.<field> "
    "must exist in the config file; the fields and their defaults are in "
    "launch/configs/default.py."
  )


try:  # config_flags applies the --config.<field> overrides of sys.argv here
  config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "Run config (ml_collections file).", lock_config=True
  )
except (AttributeError, KeyError) as unknown:
  sys.exit(_unknown_field(unknown, sys.argv))
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
  try:
    if _EARLY_SIGNALS:
      latest = _latest_checkpoint_step(_WORKDIR.value)
      raise Preempted(_EARLY_SIGNALS[0], "while starting", _WORKDIR.value, None, latest)
    train_and_evaluate(config, _WORKDIR.value)
  except Preempted as stopped:
    print(stopped, flush=True)
    sys.exit(EXIT_PREEMPTED)
  except (
    workdir_lock.WorkdirError,  # disk full, read-only, a file as the workdir...
    workdir_lock.WorkdirLockedError,
    DatasetNotPreparedError,
  ) as error:
    print(f"error: {error}", file=sys.stderr, flush=True)  # one line (or the prepare steps)
    sys.exit(1)
  except OSError as error:  # a disk error outside the checkpoints (metrics, results...)
    if error.errno not in workdir_lock.DISK_ERRNOS:
      raise
    path = error.filename or _WORKDIR.value
    print(f"error: {workdir_lock.write_error(path, error)}", file=sys.stderr, flush=True)
    sys.exit(1)


def _latest_checkpoint_step(workdir: str) -> int | None:
  """The newest step folder under ``<workdir>/checkpoints`` (None if there is none)."""
  directory = os.path.join(os.path.expanduser(workdir), "checkpoints")
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return max((int(name) for name in names if name.isdigit()), default=None)


def _parse_flags(argv):
  """absl's flag parsing, with a one-line error for a ``--config.<field>`` that does not exist."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    sys.exit(_unknown_field(error, argv))


def run():
  """Entry point of the ``deinforeg-train`` console script."""
  _remember_early_signals()
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
