"""Win / tie / loss of one rule against another over seeds, by Welch's two-sided t-test.

Welch's t-test (B. L. Welch, Biometrika 34, 1947) does not assume equal variances:
``t = (mean_a - mean_b) / sqrt(s_a^2 / n_a + s_b^2 / n_b)`` with the Welch-Satterthwaite
degrees of freedom.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

OUTCOMES = ("win", "tie", "loss")


def compare(
  ours: Sequence[float], theirs: Sequence[float], alpha: float = 0.05
) -> tuple[str, float]:
  """("win" | "tie" | "loss", p) of ``ours`` against ``theirs`` by Welch's two-sided t-test.

  A tie when p >= ``alpha``; ("–", nan) with fewer than two values on a side.  Two
  constant samples give p = 0 when their values differ and 1 when they are equal.
  """
  if len(ours) < 2 or len(theirs) < 2:
    return "–", float("nan")
  if np.ptp(ours) == 0 and np.ptp(theirs) == 0:  # t is undefined: decide by the values
    p = 0.0 if ours[0] != theirs[0] else 1.0
  else:
    p = float(stats.ttest_ind(ours, theirs, equal_var=False).pvalue)
  if p >= alpha:
    return "tie", p
  return ("win" if np.mean(ours) > np.mean(theirs) else "loss"), p


def wins_ties_losses(outcomes: Iterable[str]) -> str:
  """``"W/T/L"``: how many of ``outcomes`` (of ``compare``) are wins, ties and losses ("–"
  counts as none)."""
  outcomes = list(outcomes)
  return "/".join(str(outcomes.count(outcome)) for outcome in OUTCOMES)
