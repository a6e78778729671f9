"""Reading a 95% interval of a label-symmetric metric against chance: below it, and mirrored in it.

For ROC AUC (image or pixel level) swapping the two labels maps a value v to exactly 1 - v: the probability
that an anomaly outscores a normal becomes the probability that a normal outscores an anomaly. So 0.5 is
chance, and the interval [low, high] turned over, [1 - high, 1 - low], is what the same scores give with the
labels reversed. PR AUC has no such symmetry (its chance level is the anomaly prevalence, and reversing the
labels changes which class it measures), so neither reading applies to it.

Two rules, the only ones the console table and the report use:

- :func:`below_chance`: the whole interval lies below 0.5 (``high < 0.5``): on this test set the scores rank
  anomalies below normals, and an interval that reaches 0.5 does not say so.
- :func:`mirrors_interval`: a reported value (a paper's) lies inside the interval turned over, the interval
  excludes 0.5, and so does an interval of the same width around the value. An interval that contains 0.5
  overlaps its own mirror image (both contain 0.5), so a value there would "fit reversed labels" while fitting
  unreversed ones about as well; an interval that excludes 0.5 is disjoint from its mirror. The value must be
  clear of chance by the same margin, the uncertainty a test set of the reproduction's size gives it: a value
  near chance (0.47 against [0.52, 0.75]) is what a detector at chance reports under either label order, and
  says nothing about the order.

Which interval: whatever the caller shows, the same one for both rules (the report's: a seed's own bootstrap
interval with one seed, the bootstrap of the seed-mean over several).
"""

from __future__ import annotations

import math

SYMMETRIC_METRICS = ("roc_auc", "pixel_roc_auc")
CHANCE = 0.5


def _finite(*values: float) -> bool:
    """Whether every value is a finite number (NaN, infinities and non-numbers are not)."""
    try:
        return all(math.isfinite(float(value)) for value in values)
    except (TypeError, ValueError):
        return False


def below_chance(metric: str, low: float, high: float) -> bool:
    """Whether the interval [low, high] of ``metric`` lies wholly below chance: a label-symmetric metric
    (:data:`SYMMETRIC_METRICS`) with finite ends and ``high < 0.5``."""
    return metric in SYMMETRIC_METRICS and _finite(low, high) and high < CHANCE


def excludes_chance(low: float, high: float) -> bool:
    """Whether the finite interval [low, high] leaves 0.5 out (wholly below or wholly above it)."""
    return _finite(low, high) and (high < CHANCE or low > CHANCE)


def mirrors_interval(metric: str, value: float, low: float, high: float) -> bool:
    """Whether ``value`` is what the scores behind the interval [low, high] give with the labels reversed: a
    label-symmetric metric, ``value`` inside [1 - high, 1 - low] (so outside [low, high]), the interval excluding
    0.5 and [value - w, value + w] too, w = (high - low) / 2 (see the module's text)."""
    if metric not in SYMMETRIC_METRICS or not _finite(value) or not excludes_chance(low, high):
        return False
    half = (high - low) / 2.0
    return excludes_chance(value - half, value + half) and 1.0 - high <= value <= 1.0 - low
