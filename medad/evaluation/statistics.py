"""Statistics over scores and results: bootstrap intervals, DeLong's test, ranks and the Nemenyi critical difference.

- Bootstrap 95% intervals for ROC AUC and PR AUC: percentile intervals over ``n_resamples`` resamples
  of the test set drawn *stratified* (normals and anomalies resampled separately, so every resample
  keeps the test set's class counts and the AUC is always defined). Seeded: the same job gives the
  same interval.
- DeLong's test (DeLong, DeLong & Clarke-Pearson, Biometrics 44:837, 1988) for two correlated ROC
  AUCs measured on the same test images, computed with the fast O(n log n) algorithm of Sun & Xu
  (IEEE Signal Processing Letters 21:1389, 2014): the placement values come from midranks instead
  of the O(m n) pairwise comparison.
- The same stratified bootstrap for a metric averaged over seeds: the test images are resampled jointly
  across the seeds (every seed scored the same images), each seed's metric computed on the same resample
  and averaged.
- Ranks across datasets, Friedman's test and the Nemenyi critical difference of Demšar (JMLR 7:1,
  2006), for the critical-difference diagram; q_alpha from the studentized range distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
from scipy import stats

BOOTSTRAP_METRICS = ("roc_auc", "pr_auc")


# --- fast AUC / AP for resampling ------------------------------------------------------------------
def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties sharing their average rank (``scipy.stats.rankdata``'s default, without
    its per-call overhead, which dominates a bootstrap of thousands of small resamples); all NaN if one is NaN."""
    if np.isnan(values).any():
        return np.full(len(values), np.nan)
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts_tie = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(starts_tie)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + ends + 1) / 2.0)[np.cumsum(starts_tie) - 1]
    return ranks


def _auc_from_ranks(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney statistic with midranks (ties count half)."""
    positives = labels == 1
    m, n = int(positives.sum()), int((~positives).sum())
    ranks = _midranks(scores)
    return float((ranks[positives].sum() - m * (m + 1) / 2.0) / (m * n))


def _average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision, tied scores handled as one threshold (as scikit-learn's ``average_precision_score``)."""
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    tp = np.cumsum(sorted_labels)[last_of_tie]
    predicted = last_of_tie + 1
    precision = tp / predicted
    recall_step = np.diff(np.r_[0.0, tp]) / tp[-1]
    return float(np.sum(recall_step * precision))


METRIC_FUNCTIONS = {"roc_auc": _auc_from_ranks, "pr_auc": _average_precision}


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    tail = 100.0 * (1.0 - level) / 2.0
    return float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))


def _check_metrics(metrics: tuple[str, ...]) -> None:
    unknown = set(metrics) - set(METRIC_FUNCTIONS)
    if unknown:
        raise ValueError(f"bootstrap: no resampling for {sorted(unknown)}; known: {sorted(METRIC_FUNCTIONS)}")


def seed_mean_bootstrap(labels: np.ndarray, scores: np.ndarray, *, metrics: tuple[str, ...] = BOOTSTRAP_METRICS,
                        n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Stratified percentile bootstrap interval ``{metric: (low, high)}`` of a metric averaged over seeds.

    ``scores`` is (n_images, n_seeds): column s holds seed s's scores of the same test images, in the order of
    ``labels``. Each of ``n_resamples`` resamples draws the anomalies and the normals separately with replacement
    (so every resample keeps the test set's class counts and the metric is always defined), applies the *same*
    image indices to every seed's column, computes the metric of each seed and averages over seeds; the interval
    is the percentile interval of these seed-means (Efron & Tibshirani 1993, ch. 13). Resampling the images
    jointly keeps the seeds' scores of one image together, so the interval describes how the seed-averaged metric
    varies with the test sample. With one column it is the ordinary stratified bootstrap of that seed's metric.
    Seeded by ``seed``: the same input gives the same interval. NaN where a class is missing.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[:, None] if scores.ndim == 1 else scores
    if scores.ndim != 2 or scores.shape[0] != len(labels):
        raise ValueError(f"seed_mean_bootstrap: scores must be (n_images, n_seeds) with n_images = {len(labels)}, "
                         f"got shape {scores.shape}")
    _check_metrics(metrics)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    if len(positives) == 0 or len(negatives) == 0 or n_resamples < 1:
        return {name: (float("nan"), float("nan")) for name in metrics}
    rng = np.random.default_rng(seed)
    values = {name: np.empty(n_resamples) for name in metrics}
    for i in range(n_resamples):
        index = np.concatenate([rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))])
        resampled_labels, resampled_scores = labels[index], scores[index]
        for name in metrics:
            per_seed = [METRIC_FUNCTIONS[name](resampled_labels, column) for column in resampled_scores.T]
            values[name][i] = np.mean(per_seed)
    return {name: _percentile_interval(v, level) for name, v in values.items()}


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, *, metrics: tuple[str, ...] = BOOTSTRAP_METRICS,
                        n_resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Stratified percentile bootstrap intervals ``{metric: (low, high)}`` of one score vector (one seed's test set):
    anomalies and normals resampled separately with replacement; NaN where a class is missing."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    return seed_mean_bootstrap(labels, scores, metrics=metrics, n_resamples=n_resamples, level=level, seed=seed)


# --- DeLong ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeLongResult:
    """Two correlated AUCs, their difference, its standard error, z and the two-sided p-value."""

    auc_a: float
    auc_b: float
    difference: float
    standard_error: float
    z: float
    p_value: float


def _placements(positive_scores: np.ndarray, negative_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """DeLong's structural components V10 (per anomaly), V01 (per normal) and the AUC, by midranks (Sun & Xu, eq. 8-10)."""
    m, n = len(positive_scores), len(negative_scores)
    combined = stats.rankdata(np.concatenate([positive_scores, negative_scores]))
    rank_within_pos = stats.rankdata(positive_scores)
    rank_within_neg = stats.rankdata(negative_scores)
    # V10_i = fraction of normals scored below anomaly i (ties half) = (T_Z - T_X) / n
    v10 = (combined[:m] - rank_within_pos) / n
    # V01_j = fraction of anomalies scored above normal j (ties half) = 1 - (T_Z - T_Y) / m
    v01 = 1.0 - (combined[m:] - rank_within_neg) / m
    return v10, v01, float(v10.mean())


def delong_test(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> DeLongResult:
    """DeLong's test of H0: AUC(a) = AUC(b) for two detectors scored on the same test images."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores_a = np.asarray(scores_a, dtype=np.float64).ravel()
    scores_b = np.asarray(scores_b, dtype=np.float64).ravel()
    if not (labels.shape == scores_a.shape == scores_b.shape):
        raise ValueError(f"delong_test: labels and both score vectors must have one length, got "
                         f"{labels.shape[0]}, {scores_a.shape[0]}, {scores_b.shape[0]}")
    positive = labels == 1
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"delong_test needs at least 2 anomalous and 2 normal images, got {m} and {n}")
    v10_a, v01_a, auc_a = _placements(scores_a[positive], scores_a[~positive])
    v10_b, v01_b, auc_b = _placements(scores_b[positive], scores_b[~positive])
    s10 = np.cov(np.vstack([v10_a, v10_b]))  # 2x2, ddof 1 as in DeLong et al.
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    covariance = s10 / m + s01 / n
    variance = covariance[0, 0] + covariance[1, 1] - 2.0 * covariance[0, 1]
    difference = auc_a - auc_b
    if variance <= 1e-15:  # identical rankings (or both perfect): no evidence of a difference
        z, p = 0.0, 1.0
        if abs(difference) > 1e-12:
            z, p = float(np.sign(difference) * np.inf), 0.0
    else:
        z = difference / np.sqrt(variance)
        p = float(2.0 * stats.norm.sf(abs(z)))
    return DeLongResult(auc_a, auc_b, difference, float(np.sqrt(max(variance, 0.0))), float(z), p)


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="mergesort")]
    k = len(order)
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (k - position) * p[index]))
        adjusted[index] = running
    return adjusted


# --- ranks and the critical difference ------------------------------------------------------------
def rank_table(values: pd.DataFrame, higher_is_better: bool = True) -> pd.DataFrame:
    """Ranks (1 = best, ties share the average rank) of each column (detector) within each row (dataset)."""
    return values.rank(axis=1, ascending=not higher_is_better, method="average")


@cache
def nemenyi_q(n_detectors: int, alpha: float = 0.05) -> float:
    """Nemenyi's two-tailed critical value q_alpha for ``n_detectors`` classifiers (Demšar 2006, eq. 5): the
    studentized range statistic's 1 - alpha quantile for k groups and infinite degrees of freedom, divided by
    sqrt(2). Reproduces Demšar's Table 5a (q_0.05 = 1.960, 2.343, ..., 3.164 for k = 2..10) and extends past it."""
    if n_detectors < 2:
        return float("nan")
    return float(stats.studentized_range.ppf(1.0 - alpha, n_detectors, np.inf) / np.sqrt(2.0))


def critical_difference(n_detectors: int, n_datasets: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of average ranks, CD = q_alpha sqrt(k (k + 1) / (6 N)) (Demšar 2006, eq. 5),
    for k = ``n_detectors`` over N = ``n_datasets``; NaN with fewer than 2 detectors or no dataset."""
    if n_detectors < 2 or n_datasets < 1:
        return float("nan")
    return float(nemenyi_q(n_detectors, alpha) * np.sqrt(n_detectors * (n_detectors + 1) / (6.0 * n_datasets)))


def friedman_p(values: pd.DataFrame) -> float:
    """Friedman's test p-value over complete rows (datasets) of ``values``; NaN with fewer than 3 detectors or 2 rows."""
    complete = values.dropna()
    if complete.shape[1] < 3 or complete.shape[0] < 2:
        return float("nan")
    return float(stats.friedmanchisquare(*[complete[c].to_numpy() for c in complete.columns]).pvalue)
