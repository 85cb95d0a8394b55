"""The in-process cache of a run's jitted programs.

``shared_programs(run)`` is where engines keep the programs they build for a run (initial
state, each growth phase's train / eval / check steps, a pipeline's stage plan and stages), so
that a later run in the same process with the same programs (a test session, a grid of cells in
one process, a resumed run) does not trace, lower and load them again.  JAX's persistent
compilation cache only skips the XLA compile: tracing and lowering, and reading the compiled
program back, still cost about 5 s of CPU per run of the digits default.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any, Callable

import jax

from deinforeg_jax import config_fields, parallel
from deinforeg_jax.modules import winograd

KEPT_PROGRAM_SETS = 8
_PROGRAM_SETS: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()


def program_key(config, info) -> str:
  """What decides a run's programs: ``config`` less the fields that only steer the loop around
  them (``config_fields.program_free_fields``: checkpointing, inference, ``train.max_steps``,
  ``grow.from_workdir``, whose frozen blocks engines key by the growth phase), the dataset's
  description (``info``: shapes, classes, train size, hence the schedule's length), JAX's
  configuration (the compile setting of ``tests/conftest.py``, x64, ...) and the module
  constants that decide sharding and the convolution path.  JSON, for equality."""
  values = config.to_dict()
  for field in config_fields.program_free_fields():
    *path, name = field.split(".")
    section = values
    for part in path:
      section = section[part]
    del section[name]
  constants = {  # module constants that shape programs (tests change them)
    "parallel.SHARD_MIN_ELEMENTS": parallel.SHARD_MIN_ELEMENTS,
    "winograd.MIN_CHANNELS": winograd.MIN_CHANNELS,
    "winograd.MIN_SIZE": winograd.MIN_SIZE,
  }
  return json.dumps(
    {
      "config": values,
      "info": dataclasses.asdict(info),
      "jax": jax.config.values,
      "constants": constants,
    },
    sort_keys=True,
    default=repr,
  )


def shared_programs(run) -> dict[str, Any]:
  """The dict in which engines keep ``run``'s jitted programs, shared by every run in
  this process with the same ``program_key`` (the last ``KEPT_PROGRAM_SETS`` keys).

  A later run of equal programs skips JAX's tracing, lowering and compilation-cache
  reads (about 5 s of CPU per run of the digits default).  What a run builds from its
  own ``model`` and ``tx`` is stored here, so it must depend only on the key: a
  program may close over an earlier run's model and optimizer, equal by construction.
  """
  key = program_key(run.config, run.info)
  programs = _PROGRAM_SETS.pop(key, None)
  _PROGRAM_SETS[key] = programs = {} if programs is None else programs
  while len(_PROGRAM_SETS) > KEPT_PROGRAM_SETS:
    _PROGRAM_SETS.popitem(last=False)
  return programs


def reuse(programs: dict[str, Any], name: Any, build: Callable[[], Any]) -> Any:
  """``programs[name]``, built by ``build()`` the first time."""
  if name not in programs:
    programs[name] = build()
  return programs[name]
