"""Test-wide setup: eight fake CPU devices, configured before JAX initialises.

``XLA_FLAGS`` is read once, when the first JAX backend is created, so the flag is
appended here at conftest import time (pytest imports conftest before any test
module, and nothing may import ``jax`` earlier).  Tests that need a mesh take
the first N of these devices via ``parallel.make_data_mesh(N)``.
"""

from __future__ import annotations

import os

_DEVICE_FLAG = "--xla_force_host_platform_device_count"
NUM_FAKE_DEVICES = 8


def _with_device_count(flags: str, count: int) -> str:
  kept = [f for f in flags.split() if not f.startswith(_DEVICE_FLAG)]
  return " ".join(kept + [f"{_DEVICE_FLAG}={count}"])


os.environ["XLA_FLAGS"] = _with_device_count(os.environ.get("XLA_FLAGS", ""), NUM_FAKE_DEVICES)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def eight_devices():
  """The eight fake CPU devices; fails loudly if JAX started before the flag was set."""
  devices = jax.devices()
  assert jax.device_count() == NUM_FAKE_DEVICES, (
    f"expected {NUM_FAKE_DEVICES} fake CPU devices, got {jax.device_count()}: JAX was "
    "initialised before tests/conftest.py set XLA_FLAGS"
  )
  return devices
