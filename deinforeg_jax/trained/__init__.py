"""A trained run, ready to use: ``load(workdir)`` -> ``TrainedModel``.

``load`` reads a workdir that ``launch.train`` wrote (finished or interrupted) and
builds the model from the latest checkpoint and the config saved in its metadata
(``checkpoint.read_variables``); no training data and no launcher are needed.

    model = deinforeg_jax.load("runs/digits")
    out = model.predict(images)                  # raw pixels [N, H, W, C], exit="best"
    out.labels, out.probabilities, out.class_names
    model.predict(images, exit="adaptive")       # the run's early-exit rule (config.inference)
    model.predict(["a news text", ...], exit=0)  # a text run reads strings

Exits.  Exit ``e`` is the run's ``e``-th classifier, in the order of ``results.json``'s
``per_block_test_accuracy`` (its ``best_block`` is an exit index); ``exit_blocks[e]`` is
the ``block_XX`` that holds it (a text stack's ``block_00``, the embedding, has none).
``exit`` is one of:

* an int: that exit (negative counts from the last);
* ``"best"``: ``results.json``'s ``best_block`` when that file describes the loaded
  checkpoint (same step).  Otherwise (an interrupted run) the exit with the best test
  accuracy in the ``metrics.jsonl`` line of the checkpoint's step, else the last exit;
  ``best_exit_source`` says which rule chose it;
* ``"adaptive"``: ``inference.decide_exits`` with ``config.inference`` (patience, cosine
  threshold, sample or batch mode, counter reset), as ``results.json``'s adaptive report.
  Batch mode decides per chunk of ``batch_size`` rows.

Preprocessing (the run's own, ``Preprocessing``): images are raw pixels in the units the
dataset stores (``pixel_max``: 1 for [0, 1] floats such as digits, 255 for uint8), then
``(x - mean) / std`` per channel; uint8 inputs to a ``pixel_max = 1`` run are divided by
255 first.  Text is normalised and encoded with the run's ``vocab.json`` (``data.text``).
The statistics and class names are read from the checkpoint's dataset description, never
from a dataset; a checkpoint saved before 2026-12-06 lacks it and is refused until
``record_description(workdir)`` (``launch.evaluate --record_description``) has recorded it
from the run's dataset.  Class names the dataset does not give default to ``"0" .. "C-1"``.

Grown runs (``config.grow``: from a workdir, in-run schedule, new features) and pipeline
runs load like any other (checkpoints hold the whole one-program state); a run
interrupted before its schedule added every block uses the blocks trained so far.
Every problem is one ``WorkdirError`` / ``InputError`` line naming what is missing.

The commands' parts, imported by name: ``evaluation`` (``launch.evaluate``'s report), ``inputs``
and ``prediction_csv`` (``launch.predict``'s files) and ``export`` (``launch.export``).
"""

from deinforeg_jax.trained.description import record as record_description
from deinforeg_jax.trained.loading import WorkdirError, load
from deinforeg_jax.trained.model import Prediction, TrainedModel
from deinforeg_jax.trained.preprocessing import InputError, Preprocessing

__all__ = [
  "InputError",
  "Prediction",
  "Preprocessing",
  "TrainedModel",
  "WorkdirError",
  "load",
  "record_description",
]
