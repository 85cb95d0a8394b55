"""Device meshes and shardings for data-parallel training.

Data parallelism is ``jax.jit`` over a one-axis ``Mesh`` named ``data``: the
batch is sharded along its first dimension with ``NamedSharding(mesh,
P("data"))`` and the train state is replicated.  XLA (GSPMD) inserts the
collectives, so every reduction in the loss - the ``B x B`` similarity matrix,
the variance and covariance statistics, BatchNorm's batch moments - covers the
global batch exactly as on one device.  This is the modern form of the
"pmapped" step (``jax.pmap`` is in maintenance mode).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(enabled: bool) -> None:
  """Join a multi-host job (``config.parallel.distributed``): ``jax.distributed.initialize()``.

  On TPU VMs and SLURM/Kubernetes clusters the coordinator, process count and
  process id are detected; elsewhere set ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.  Each process then reads its own
  ``1/process_count`` of every global batch (``data.train_batches``) and the
  data mesh spans every process's devices.
  """
  if enabled:
    jax.distributed.initialize()


def make_data_mesh(num_devices: int | None = None) -> Mesh:
  """A ``(num_devices,)`` mesh with axis ``data`` over the first devices.

  ``None`` or ``0`` uses every device.  Raises a clear error for too many.
  """
  devices = jax.devices()
  count = num_devices or len(devices)
  if not 1 <= count <= len(devices):
    raise ValueError(
      f"config.parallel.num_devices={num_devices} but {len(devices)} device(s) are visible; "
      "use 0 (all devices) or a number up to the device count. For fake CPU devices set "
      "XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts."
    )
  return Mesh(np.asarray(devices[:count]), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Shard the leading (batch) dimension over ``data``."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array."""
  return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(global_batch_size: int, mesh: Mesh, field: str) -> None:
  """The global batch must split evenly over the ``data`` axis."""
  devices = mesh.shape[DATA_AXIS]
  if global_batch_size % devices:
    raise ValueError(
      f"config.{field}={global_batch_size} is not divisible by the {devices} devices of the "
      f"data mesh; use a multiple of {devices} or set config.parallel.num_devices."
    )


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host-local numpy batch -> global ``jax.Array`` sharded over ``data``.

  Each process passes its own rows; the global batch is their concatenation.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Place a pytree on every device of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))
