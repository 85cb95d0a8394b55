"""Pipeline-parallel decoupled training: groups of consecutive blocks on their own devices.

A *stage* is a run of consecutive blocks ``[start, stop)`` placed on one device
with its own parameters, BatchNorm statistics and optimizer state (the subtrees
``params["block_XX"]`` of the one-program ``TrainState``).  At every tick each
stage runs forward, its local losses, its backward pass and its optimizer
update on the input the previous stage sent at the previous tick, then sends
the detached activation ``stop_gradient(h)`` and the labels on to the next
stage.  No message ever flows backwards (arXiv 2506.18193, the pipeline strategy).

Schedules (``config.parallel.pipeline_schedule``):

* ``"pipelined"``: at tick ``t`` stage ``k`` trains on batch ``t - k``; the
  pipeline fills at the start of each epoch and drains at its end, so every
  batch trains every stage exactly once per epoch (``T + K - 1`` ticks for
  ``T`` batches and ``K`` stages).
* ``"synchronous"``: at tick ``t`` all stages train on batch ``t`` one after
  another and wait for each other (a barrier per tick): no overlap.

**Staleness.**  In the pipelined schedule stage ``k`` trains at tick ``t`` on
batch ``t - k``, whose activation went through stages ``0 .. k-1`` during ticks
``t - k .. t - 1``: with parameter versions up to ``k`` ticks older than the
ones those stages hold at tick ``t`` (wall-clock staleness ``k``).  Measured in
*batches* the staleness is zero: stage ``j`` processed batch ``s`` with the
parameters it had after ``s`` updates, exactly the ones the one-program step
(``steps.make_train_step`` over the whole stack) uses for batch ``s``, and the forward pass that
made the activation is the one whose loss stage ``j`` then minimised (the
pre-update parameters, as in the one-program step).  Because decoupled blocks
exchange no gradients, pipelining only reorders independent work in time:
**both schedules reproduce the one-program trajectory** (up to floating-point
reassociation; ``tests/test_pipeline.py`` checks both at ``rtol=1e-5``, and on
CPU they agree bit for bit).  This holds for per-parameter optimizers (LARS,
Adam, SGD in ``optim``); a transform coupling all parameters (global-norm
clipping) would differ, and so would evaluating mid-epoch without a drain.

**MPMD, not SPMD.**  Each stage is its own jitted program committed to its
device (MPMD).  An SPMD pipeline (``jax.shard_map`` over a ``stage`` axis with
``jax.lax.ppermute``) needs one program whose per-device state and activations
have one shape; the blocks of a VGG/ResNet stack differ in activation shape
(``32x32x128`` ... ``2x2x512``), parameter count and code, so SPMD needs every
stage's state and activation raveled into padded buffers and a ``lax.switch``
on the stage index.  ``benchmarks/pipeline.py --spmd`` times such a prototype
(its states match MPMD to a relative L2 difference of 7e-7): on XLA:CPU a
stage step inside ``lax.switch``/``lax.cond`` ran 20x slower than the same step
on its own (1.83 s vs 0.089 s, the paper's VGG at width 1/8, batch 32), so a 2-stage
epoch of 4 batches took 12.8 s vs 0.42 s for MPMD (compile and warm-up 17.6 s vs
10.3 s).  Besides,
padding costs ``K x`` the largest stage's state and the per-tick re-ravelling
copies every stage's state.  MPMD keeps each stage's native layout and memory,
allows stages of unequal shape and work (balanced by cost), and compiles each
stage on its own.

**Overlap.**  ``dispatch="ticks"`` (the default) runs the tick schedule from one
host thread and relies on asynchronous dispatch: it never waits for a result
inside a tick (the host may run ``num_stages + queue_size`` ticks ahead), so
each device works through its own queue.  This overlaps GPUs/TPUs and, as
measured here, fake CPU devices too: two 400-step 128x128 matmul loops on two
CPU devices took 15.8 ms for one, 32.0 ms for two when the host waited after
each, 16.8 ms dispatched from one thread without waiting, 18.7 ms from two
threads (one thread serialises the devices only when the host waits between
calls).  ``dispatch="threads"`` runs one host thread per stage with bounded
queues; it waits for each step, which gives per-stage busy times.  Both run
the same per-stage updates in the same order.

Stage balancing assigns blocks to stages by contiguous min-max partition of
per-block costs: XLA's FLOP estimate of a one-block train step
(``Lowered.cost_analysis()``), measured step time, or a uniform cost.
``StagePlan.ideal_speedup`` is ``total cost / max stage cost``.

The engine of ``train.run_epochs`` for ``config.parallel.mode == "pipeline"``
is ``PipelineEngine``: the one epoch loop (resume, progress, NaN stop,
checkpoints, evaluation, results) is shared with the data-parallel engine;
checkpoints hold the one-program ``TrainState``, so either mode resumes the
other's run.

Modules: ``executor`` (``Pipeline``: stage programs, states and schedules),
``balance`` (costs and the partition), ``engine`` (``PipelineEngine``), ``cost`` (the
predicted speedup from stage FLOPs, bytes sent and a chip's rates; ``launch.aot`` prints it).
"""

from deinforeg_jax.pipeline.balance import (
  BALANCE_METHODS,
  StagePlan,
  block_costs,
  partition_blocks,
  plan_stages,
)
from deinforeg_jax.pipeline.engine import PipelineEngine, pipeline_settings
from deinforeg_jax.pipeline.executor import (
  DISPATCH_MODES,
  LOCAL_RULES,
  SCHEDULES,
  EpochRecord,
  Pipeline,
  stage_input_shapes,
  stage_model,
)

__all__ = [
  "BALANCE_METHODS",
  "DISPATCH_MODES",
  "LOCAL_RULES",
  "SCHEDULES",
  "EpochRecord",
  "Pipeline",
  "PipelineEngine",
  "StagePlan",
  "block_costs",
  "partition_blocks",
  "pipeline_settings",
  "plan_stages",
  "stage_input_shapes",
  "stage_model",
]
