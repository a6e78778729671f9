"""Statistics behind the report: DeLong's test, bootstrap intervals, Holm, critical difference, operating points."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medad.evaluation import metrics, statistics


def test_delong_matches_a_case_computed_by_hand():
    # anomalies (label 1) first, then normals.  Detector A: anomalies 0.9 0.6 0.4, normals 0.5 0.3.
    # V10_A (share of normals below each anomaly) = [1, 1, 1/2], V01_A (share of anomalies above each normal) = [2/3, 1]
    # Detector B: anomalies 0.8 0.3 0.1, normals 0.6 0.2 -> V10_B = [1, 1/2, 0], V01_B = [1/3, 2/3]
    # AUC_A = 5/6, AUC_B = 1/2.  Covariances (ddof 1): S10 = [[1/12, 1/8], [1/8, 1/4]], S01 = [[1/18, 1/18], [1/18, 1/18]]
    # Var(A - B) = (1/12 + 1/4 - 2/8) / 3 + (1/18 + 1/18 - 2/18) / 2 = 1/36 -> SE = 1/6, z = (1/3) / (1/6) = 2
    labels = np.array([1, 1, 1, 0, 0])
    a = np.array([0.9, 0.6, 0.4, 0.5, 0.3])
    b = np.array([0.8, 0.3, 0.1, 0.6, 0.2])
    result = statistics.delong_test(labels, a, b)
    assert result.auc_a == pytest.approx(5 / 6)
    assert result.auc_b == pytest.approx(1 / 2)
    assert result.standard_error == pytest.approx(1 / 6)
    assert result.z == pytest.approx(2.0)
    assert result.p_value == pytest.approx(0.0455003, abs=1e-6)  # 2 * (1 - Phi(2))
    swapped = statistics.delong_test(labels, b, a)
    assert swapped.z == pytest.approx(-2.0) and swapped.p_value == pytest.approx(result.p_value)


def _delong_pairwise(labels, a, b):
    """DeLong's variance by the O(m n) definition (ties count half): the reference for the fast version."""
    positive = labels == 1

    def components(scores):
        psi = (scores[positive][:, None] > scores[~positive][None, :]) + 0.5 * (scores[positive][:, None] == scores[~positive][None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (a10, a01), (b10, b01) = components(a), components(b)
    s10, s01 = np.cov(np.vstack([a10, b10])), np.cov(np.vstack([a01, b01]))
    c = s10 / positive.sum() + s01 / (~positive).sum()
    return a10.mean() - b10.mean(), np.sqrt(c[0, 0] + c[1, 1] - 2 * c[0, 1])


def test_fast_delong_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(3)
    for _ in range(20):
        labels = rng.integers(0, 2, 60)
        a = np.round(rng.normal(size=60) + labels, 1)          # rounded: many ties
        b = np.round(a + rng.normal(size=60), 1)
        result = statistics.delong_test(labels, a, b)
        difference, se = _delong_pairwise(labels, a, b)
        assert result.difference == pytest.approx(difference, abs=1e-12)
        assert result.standard_error == pytest.approx(se, abs=1e-12)
        assert result.auc_a == pytest.approx(roc_auc_score(labels, a))


def test_delong_rejects_too_few_images_and_identical_scores_give_p_one():
    with pytest.raises(ValueError, match="at least 2 anomalous"):
        statistics.delong_test(np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.2, 0.1]))
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.4, 0.5, 0.1, 0.7, 0.3])
    assert statistics.delong_test(labels, scores, scores).p_value == 1.0


def test_resampling_auc_and_ap_equal_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(30):
        labels = rng.integers(0, 2, 40)
        labels[:2] = [0, 1]
        scores = np.round(rng.normal(size=40) + labels, 1)
        assert statistics.METRIC_FUNCTIONS["roc_auc"](labels, scores) == pytest.approx(roc_auc_score(labels, scores))
        assert statistics.METRIC_FUNCTIONS["pr_auc"](labels, scores) == pytest.approx(average_precision_score(labels, scores))


def test_bootstrap_intervals_are_seeded_stratified_and_bracket_the_estimate():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(80, int), np.ones(40, int)]
    scores = rng.normal(size=120) + labels
    first = statistics.bootstrap_intervals(labels, scores, seed=7, n_resamples=300)
    assert first == statistics.bootstrap_intervals(labels, scores, seed=7, n_resamples=300)
    assert first != statistics.bootstrap_intervals(labels, scores, seed=8, n_resamples=300)
    for name, estimate in (("roc_auc", roc_auc_score(labels, scores)), ("pr_auc", average_precision_score(labels, scores))):
        low, high = first[name]
        assert low < estimate < high and high - low < 0.35
    # a tiny test set still gets an interval (stratified: every resample keeps both classes)
    tiny = statistics.bootstrap_intervals(np.array([0, 1]), np.array([0.2, 0.8]), n_resamples=50)
    assert tiny["roc_auc"] == (1.0, 1.0)
    assert all(np.isnan(v) for v in statistics.bootstrap_intervals(np.zeros(5), np.arange(5.0))["roc_auc"])


def test_holm_adjustment():
    adjusted = statistics.holm([0.01, 0.04, 0.03, np.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(adjusted[3])


def test_critical_difference_matches_demsar():
    # Demšar (2006), section 3.2.2: four classifiers on fourteen data sets, CD = 1.25 at alpha 0.05
    assert statistics.critical_difference(4, 14) == pytest.approx(1.25, abs=0.005)
    # past Demšar's table (k > 10) the critical difference is still defined; one detector has none
    assert statistics.critical_difference(11, 5) == pytest.approx(statistics.nemenyi_q(11) * np.sqrt(11 * 12 / 30))
    assert np.isnan(statistics.critical_difference(1, 5)) and np.isnan(statistics.critical_difference(4, 0))


def test_nemenyi_q_from_the_studentized_range_reproduces_demsar_table_5a():
    table_5a = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]   # q_0.05, k = 2..10
    for k, q in zip(range(2, 11), table_5a):
        assert statistics.nemenyi_q(k) == pytest.approx(q, abs=2e-3), k
    assert not hasattr(statistics, "NEMENYI_Q05")
    q15 = statistics.nemenyi_q(15)
    assert np.isfinite(q15) and statistics.nemenyi_q(10) < q15 < 3.5
    assert statistics.nemenyi_q(4, alpha=0.10) < statistics.nemenyi_q(4)


def test_midranks_equal_scipy_with_ties():
    from scipy.stats import rankdata

    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 50):
        values = np.round(rng.normal(size=n), 1)
        assert statistics._midranks(values) == pytest.approx(rankdata(values))
    assert np.isnan(statistics._midranks(np.array([0.1, np.nan, 0.3]))).all()


def _seed_mean_reference(labels, scores, n_resamples, seed):
    """The seed-mean bootstrap written out: one stratified resample of the images for all seeds, scikit-learn's
    AUC and AP of every seed on it, their mean; percentiles 2.5 and 97.5."""
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    means = {"roc_auc": [], "pr_auc": []}
    for _ in range(n_resamples):
        index = np.concatenate([rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))])
        y = labels[index]
        means["roc_auc"].append(np.mean([roc_auc_score(y, scores[index, s]) for s in range(scores.shape[1])]))
        means["pr_auc"].append(np.mean([average_precision_score(y, scores[index, s]) for s in range(scores.shape[1])]))
    return {name: (np.percentile(v, 2.5), np.percentile(v, 97.5)) for name, v in means.items()}


def _three_seeds(rng):
    labels = np.r_[np.zeros(30, int), np.ones(20, int)]
    shared = rng.normal(size=50)   # the image's own difficulty, common to every seed
    return labels, np.round(shared[:, None] + rng.normal(size=(50, 3)) * 0.5 + labels[:, None], 1)


def test_seed_mean_bootstrap_matches_a_reference_loop_and_brackets_the_seed_mean():
    labels, scores = _three_seeds(np.random.default_rng(2))
    interval = statistics.seed_mean_bootstrap(labels, scores, n_resamples=200, seed=11)
    reference = _seed_mean_reference(labels, scores, 200, 11)
    for name, score in (("roc_auc", roc_auc_score), ("pr_auc", average_precision_score)):
        assert interval[name] == pytest.approx(reference[name], abs=1e-12)
        seed_mean = np.mean([score(labels, scores[:, s]) for s in range(3)])
        assert interval[name][0] < seed_mean < interval[name][1]
    assert interval == statistics.seed_mean_bootstrap(labels, scores, n_resamples=200, seed=11)   # reproducible
    assert interval != statistics.seed_mean_bootstrap(labels, scores, n_resamples=200, seed=12)


def test_seed_mean_bootstrap_of_one_seed_is_the_per_seed_bootstrap():
    labels, scores = _three_seeds(np.random.default_rng(3))
    one = scores[:, 0]
    assert statistics.seed_mean_bootstrap(labels, one[:, None], n_resamples=150, seed=5) == \
        statistics.bootstrap_intervals(labels, one, n_resamples=150, seed=5)
    with pytest.raises(ValueError, match="n_images"):
        statistics.seed_mean_bootstrap(labels, scores[:10], n_resamples=10)


def test_clinical_operating_points_by_hand():
    # ten normals 0.1 .. 0.95 and four anomalies 0.85 0.97 0.3 0.99
    labels = np.array([0] * 10 + [1] * 4)
    scores = np.array([.1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .85, .97, .3, .99])
    # specificity >= 90 %: at most one normal above -> threshold in (0.9, 0.95] keeps 0.97 and 0.99: sensitivity 2/4
    assert metrics.operating_point(labels, scores, "sensitivity", 0.90) == pytest.approx(0.5)
    assert metrics.operating_point(labels, scores, "sensitivity", 0.95) == pytest.approx(0.5)
    # sensitivity >= 95 % needs all four anomalies, down to 0.3: normals 0.3 .. 0.95 are flagged -> specificity 2/10
    assert metrics.operating_point(labels, scores, "specificity", 0.95) == pytest.approx(0.2)
    rows = {r.metric: r for r in metrics.image_metrics(labels, scores, np.array([0.1, 0.2]))}
    assert {"sens_at_spec90", "sens_at_spec95", "spec_at_sens95"} <= set(rows)
    assert rows["spec_at_sens95"].threshold_policy == "none" and not rows["spec_at_sens95"].oracle
