"""The all-anomalous classifier beside every threshold metric, and degenerate operating points.

**The reference.** A classifier that flags every test image as anomalous needs no model. On a test set of
``n_anomalous`` anomalous and ``n_normal`` normal images, prevalence ``p = n_anomalous / (n_anomalous + n_normal)``,
it has precision ``p``, recall (sensitivity) 1, specificity 0, F1 ``2p / (1 + p)`` and accuracy ``p``
(:func:`all_anomalous_values`). A score that carries no information has PR AUC (average precision) ``p`` in
expectation, its chance level (:data:`CHANCE_LEVELS`: ROC AUC 0.5). Where most test images are anomalous (the
study's Head-CT: 100 of 120) these values are high: F1 0.909 needs no detector at all.

**Degenerate operating point.** A threshold on the test scores whose predictions are, within what chance allows,
the all-anomalous classifier's: it flags every anomaly (recall 1) and leaves at most ``K`` normals unflagged
(:func:`is_degenerate`; ``k = 0``: it flags every test image). ``K`` comes from the test set's sizes
(:func:`max_unflagged_normals`): the largest ``k`` for which Fisher's exact test (one-sided) does not reject, at
``alpha = 0.01``, that the ``k`` images left unflagged were picked without regard to their labels. For a point with
recall 1, the 2 x 2 table [[n_anomalous, 0], [n_normal - k, k]] is the most extreme one with its margins, so the
test's p value is the hypergeometric probability that ``k`` images chosen at random are all normal,
``C(n_normal, k) / C(n_normal + n_anomalous, k)``. Why this rule: a point that leaves so few normals unflagged that
a random choice would do as well shows no separation at its threshold; its precision, recall and F1 describe where
the threshold sits (below nearly every test image), not the detector. Why 1% and not 5%: the mark is a warning,
lifted only by clear evidence, and a report holds dozens of such rows (at 5%, one chance-only point in twenty
would lose its mark). ``K`` depends on the prevalence ``p`` more than on the size, about
``log(alpha) / log(1 - p)``: 2-4 on test sets that are mostly anomalous, more where normals are many. On the study's
TABLE 1 test sets: Head-CT 2, Brain Tumor MRI 2, Br35H 2, MIAS full 3, MIAS patches 3, each OCT task 6, C-NMC 4.

**Published numbers.** A paper gives rounded rates, not counts. :func:`consistent_points` finds every confusion
matrix of a stated test set whose rates round to the published ones (half a unit of the last printed decimal);
a published point is degenerate when every consistent matrix is (:func:`published_point`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEGENERATE = "degenerate operating point"
# the level of Fisher's exact test that bounds the normals a degenerate point may leave unflagged
DEGENERATE_ALPHA = 0.01
# the rates whose all-anomalous value is shown beside them (accuracy too: it equals the prevalence)
REFERENCE_METRICS = ("precision", "recall", "specificity", "f1", "accuracy")
# threshold-free metrics with a chance level: ROC AUC 0.5; PR AUC (average precision) the prevalence
CHANCE_LEVELS = ("roc_auc", "pr_auc")


@dataclass(frozen=True)
class TestSetSize:
    """How many normal and anomalous images a test set holds."""

    __test__ = False  # not a pytest test class, whatever its name says

    n_normal: int
    n_anomalous: int

    def __post_init__(self) -> None:
        if self.n_normal < 0 or self.n_anomalous < 0:
            raise ValueError(f"a test set holds no negative counts, got {self.n_normal} normal, "
                             f"{self.n_anomalous} anomalous")

    @property
    def total(self) -> int:
        return self.n_normal + self.n_anomalous

    @property
    def prevalence(self) -> float:
        """The anomalous fraction (NaN for an empty test set)."""
        return self.n_anomalous / self.total if self.total else float("nan")


def all_anomalous_values(size: TestSetSize) -> dict[str, float]:
    """The all-anomalous classifier's precision, recall, specificity, F1 and accuracy on ``size``, and the chance
    levels of ROC AUC (0.5) and PR AUC (the prevalence). A rate with an empty denominator is NaN (as in
    :func:`medad.evaluation.metrics.confusion_metrics`): recall without anomalies, specificity without normals."""
    p = size.prevalence
    return {
        "precision": p,
        "recall": 1.0 if size.n_anomalous else float("nan"),
        "specificity": 0.0 if size.n_normal else float("nan"),
        "f1": 2 * p / (1 + p) if size.n_anomalous else float("nan"),
        "accuracy": p,
        "roc_auc": 0.5 if size.n_normal and size.n_anomalous else float("nan"),
        "pr_auc": p if size.n_normal and size.n_anomalous else float("nan"),
    }


def unflagged_normals_p_value(size: TestSetSize, k: int) -> float:
    """One-sided Fisher's exact p value of a point that flags every anomaly and leaves ``k`` normals unflagged:
    the probability that ``k`` images chosen at random from the test set are all normal."""
    if not 0 <= k <= size.n_normal:
        raise ValueError(f"k must lie in [0, {size.n_normal}] (the normals), got {k}")
    factors = (size.n_normal - np.arange(k)) / (size.total - np.arange(k))
    return float(np.prod(factors))


def max_unflagged_normals(size: TestSetSize, alpha: float = DEGENERATE_ALPHA) -> int:
    """``K``: the most normals a degenerate point may leave unflagged on this test set (the largest ``k`` whose
    :func:`unflagged_normals_p_value` is at least ``alpha``; 0 when even one is unlikely by chance)."""
    k = 0
    while k < size.n_normal and unflagged_normals_p_value(size, k + 1) >= alpha:
        k += 1
    return k


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold's outcome on a test set: anomalies flagged (``tp``) and normals flagged (``fp``)."""

    tp: int
    fp: int
    size: TestSetSize

    def __post_init__(self) -> None:
        if not (0 <= self.tp <= self.size.n_anomalous and 0 <= self.fp <= self.size.n_normal):
            raise ValueError(f"{self.tp} anomalies and {self.fp} normals flagged do not fit a test set of "
                             f"{self.size.n_anomalous} anomalous and {self.size.n_normal} normal images")

    @property
    def unflagged_normals(self) -> int:
        return self.size.n_normal - self.fp

    def describe(self) -> str:
        """What the point flags, in words: "flags all 155 test images" or "flags every anomaly and 19 of 20 normals"."""
        if self.tp == self.size.n_anomalous and self.fp == self.size.n_normal:
            return f"flags all {self.size.total} test images"
        anomalies = ("every anomaly" if self.tp == self.size.n_anomalous
                     else f"{self.tp} of {self.size.n_anomalous} anomalies")
        return f"flags {anomalies} and {self.fp} of {self.size.n_normal} normals"


def is_degenerate(point: OperatingPoint, alpha: float = DEGENERATE_ALPHA) -> bool:
    """Whether ``point`` flags every anomaly and leaves at most :func:`max_unflagged_normals` normals unflagged
    (a test set without anomalies has no degenerate point: recall is undefined there)."""
    size = point.size
    return (size.n_anomalous > 0 and point.tp == size.n_anomalous
            and point.unflagged_normals <= max_unflagged_normals(size, alpha))


def point_from_rates(size: TestSetSize, recall: float, specificity: float) -> OperatingPoint | None:
    """The point whose (unrounded) recall and specificity on ``size`` are these, or None when either is undefined
    or they fit no count (not a rate of this test set)."""
    if not (np.isfinite(recall) and np.isfinite(specificity)):
        return None
    tp, tn = round(recall * size.n_anomalous), round(specificity * size.n_normal)
    if not (0 <= tp <= size.n_anomalous and 0 <= tn <= size.n_normal):
        return None
    if abs(tp - recall * size.n_anomalous) > 1e-6 or abs(tn - specificity * size.n_normal) > 1e-6:
        return None
    return OperatingPoint(int(tp), int(size.n_normal - tn), size)


def _rates(tp: np.ndarray, fp: np.ndarray, size: TestSetSize) -> dict[str, np.ndarray]:
    """Every rate of :data:`REFERENCE_METRICS` over a grid of (tp, fp) counts; NaN where a denominator is empty."""
    fn, tn = size.n_anomalous - tp, size.n_normal - fp
    nan = np.full(tp.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "precision": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "recall": tp / size.n_anomalous if size.n_anomalous else nan,
            "specificity": tn / size.n_normal if size.n_normal else nan,
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan),
            "accuracy": (tp + tn) / size.total if size.total else nan,
        }


def consistent_points(size: TestSetSize, published: dict[str, float],
                      tolerance: dict[str, float] | float = 0.0005) -> list[OperatingPoint]:
    """Every operating point of ``size`` whose rates round to the ``published`` ones (metric -> value, of
    :data:`REFERENCE_METRICS`), each within ``tolerance`` (half a unit of its last printed decimal; one number or
    one per metric). Metrics outside :data:`REFERENCE_METRICS` are ignored; with none left, every point fits."""
    tp, fp = np.meshgrid(np.arange(size.n_anomalous + 1), np.arange(size.n_normal + 1), indexing="ij")
    rates = _rates(tp.astype(np.float64), fp.astype(np.float64), size)
    fits = np.ones(tp.shape, dtype=bool)
    for metric, value in published.items():
        if metric not in rates or not np.isfinite(value):
            continue
        allowed = tolerance.get(metric, 0.0005) if isinstance(tolerance, dict) else tolerance
        fits &= np.abs(rates[metric] - value) <= allowed + 1e-9
    return [OperatingPoint(int(a), int(b), size) for a, b in zip(tp[fits], fp[fits])]


@dataclass(frozen=True)
class PublishedPoint:
    """What a published operating point is on its stated test set: the confusion matrices that fit its rates,
    and whether every one of them is degenerate."""

    size: TestSetSize
    fits: tuple[OperatingPoint, ...]

    @property
    def degenerate(self) -> bool:
        return bool(self.fits) and all(is_degenerate(point) for point in self.fits)

    def describe(self) -> str:
        """The point in words ("flags all 155 test images"), or how many matrices fit, or that none does."""
        if not self.fits:
            return (f"no confusion matrix of the stated test set ({self.size.n_anomalous} anomalous, "
                    f"{self.size.n_normal} normal) gives these rates")
        texts = sorted({point.describe() for point in self.fits})
        return texts[0] if len(texts) == 1 else f"{len(texts)} confusion matrices fit, e.g. {texts[0]}"


def published_point(size: TestSetSize, published: dict[str, float],
                    tolerance: dict[str, float] | float = 0.0005) -> PublishedPoint:
    """The published rates (:func:`consistent_points`) read as an operating point of the stated test set."""
    return PublishedPoint(size, tuple(consistent_points(size, published, tolerance)))
