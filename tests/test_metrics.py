"""Metrics against scikit-learn and hand-computed cases: ties, single-class sets, threshold policies."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from medad.evaluation import metrics as m


def by_key(rows):
    return {(r.metric, r.threshold_policy): r for r in rows}


def test_auc_matches_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = rng.normal(size=500) + labels * 0.7
    assert m.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert m.pr_auc(labels, scores) == pytest.approx(average_precision_score(labels, scores))


def test_auc_hand_computed_with_ties():
    # normals 0.1, 0.4, 0.4 ; anomalies 0.4, 0.8: pairs (a > n) = 3 + 2 halves... counted by hand:
    # anomaly 0.4 vs normals: > 0.1 (1), tie 0.4 (0.5), tie 0.4 (0.5) -> 2 ; anomaly 0.8: 3 -> total 5 of 6
    labels = [0, 0, 0, 1, 1]
    scores = [0.1, 0.4, 0.4, 0.4, 0.8]
    assert m.roc_auc(labels, scores) == pytest.approx(5 / 6)
    # all scores tied: chance
    assert m.roc_auc([0, 1, 0, 1], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.5)


def test_confusion_metrics_hand_computed():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    result = m.confusion_metrics(labels, scores, threshold=0.5)  # predicted: 0.6, 0.7, 0.9
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["specificity"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(4 / 6)
    predicted = scores > 0.5
    assert result["precision"] == pytest.approx(precision_score(labels, predicted))
    assert result["recall"] == pytest.approx(recall_score(labels, predicted))
    assert result["f1"] == pytest.approx(f1_score(labels, predicted))


def test_no_predicted_positive_gives_nan_precision_not_a_crash():
    result = m.confusion_metrics([0, 1], [0.1, 0.2], threshold=1.0)
    assert math.isnan(result["precision"]) and result["recall"] == 0.0 and result["specificity"] == 1.0


def test_val_q95_is_the_95th_percentile_of_validation_normals():
    val = np.arange(101, dtype=float)  # 0..100
    assert m.threshold_val_q95(val) == pytest.approx(95.0)
    with pytest.raises(ValueError, match="validation"):
        m.threshold_val_q95([])


def test_oracle_thresholds_are_optimal_on_the_test_set():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + labels
    youden = m.threshold_youden(labels, scores)
    best_f1 = m.threshold_best_f1(labels, scores)
    candidates = np.concatenate([np.sort(scores) - 1e-12, [scores.max()]])

    def j(t):
        r = m.confusion_metrics(labels, scores, t)
        return r["recall"] + r["specificity"] - 1

    def f1(t):
        value = m.confusion_metrics(labels, scores, t)["f1"]
        return -1 if math.isnan(value) else value

    assert j(youden) == pytest.approx(max(j(t) for t in candidates))
    assert f1(best_f1) == pytest.approx(max(f1(t) for t in candidates))


def test_perfect_separation_thresholds():
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.2, 0.8, 0.9]
    for threshold in (m.threshold_youden(labels, scores), m.threshold_best_f1(labels, scores)):
        result = m.confusion_metrics(labels, scores, threshold)
        assert result["f1"] == 1.0 and result["accuracy"] == 1.0


def test_image_metrics_rows_name_policies_and_flag_oracles():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.3, 0.35, 0.8, 0.2, 0.9])
    rows = by_key(m.image_metrics(labels, scores, val_scores=np.array([0.1, 0.2, 0.3])))
    assert rows[("roc_auc", "none")].value == pytest.approx(roc_auc_score(labels, scores))
    assert not rows[("f1", "val_q95")].oracle
    assert rows[("f1", "youden")].oracle and rows[("f1", "best_f1")].oracle
    for policy in ("val_q95", "youden", "best_f1"):
        for name in m.THRESHOLD_METRICS:
            assert (name, policy) in rows


def test_single_class_test_set_gives_nan_with_a_reason():
    rows = by_key(m.image_metrics(np.zeros(5, dtype=int), np.arange(5.0), val_scores=np.arange(3.0)))
    assert math.isnan(rows[("roc_auc", "none")].value)
    assert "only normal" in rows[("roc_auc", "none")].note
    assert math.isnan(rows[("f1", "best_f1")].value)
    assert not math.isnan(rows[("specificity", "val_q95")].value)  # still defined with normals only


def test_missing_validation_set_gives_nan_honest_threshold_with_reason():
    rows = by_key(m.image_metrics(np.array([0, 1]), np.array([0.1, 0.9]), val_scores=None))
    assert math.isnan(rows[("threshold", "val_q95")].value)
    assert "validation" in rows[("threshold", "val_q95")].note


@pytest.mark.parametrize("labels,scores,match", [
    ([0, 1, 2], [0.1, 0.2, 0.3], "labels must be 0"),
    ([0, 1], [0.1, float("nan")], "NaN"),
    ([0, 1, 1], [0.1, 0.2], "differ in length"),
])
def test_bad_input_is_a_clear_error(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        m.image_metrics(np.array(labels), np.array(scores))


def test_pixel_metrics_match_sklearn_and_handle_empty_masks():
    rng = np.random.default_rng(2)
    masks = rng.random((4, 8, 8)) > 0.8
    maps = rng.random((4, 8, 8)) + masks
    rows = by_key(m.pixel_metrics(masks, maps))
    assert rows[("pixel_roc_auc", "none")].value == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    empty = by_key(m.pixel_metrics(np.zeros((2, 4, 4)), np.ones((2, 4, 4))))
    assert math.isnan(empty[("pixel_roc_auc", "none")].value) and "single class" in empty[("pixel_roc_auc", "none")].note


def test_pixel_metrics_add_aupro_and_dice_with_an_honest_and_an_oracle_threshold():
    rng = np.random.default_rng(3)
    masks = np.zeros((4, 16, 16), dtype=bool)
    masks[:2, 4:10, 4:10] = True
    maps = rng.random(masks.shape) * 0.5 + masks            # lesions score above every normal pixel
    val_maps = rng.random((3, 16, 16)) * 0.5
    rows = by_key(m.pixel_metrics(masks, maps, val_maps=val_maps))
    assert rows[("aupro", "none")].value == pytest.approx(1.0)
    assert rows[("dice", "best_dice")].value == pytest.approx(1.0) and rows[("dice", "best_dice")].oracle
    honest = rows[("dice", "val_px_q99")]
    assert not honest.oracle and 0.8 < honest.value < 1.0  # about 1% of normal pixels pass the val threshold
    assert ("dice", "val_px_q99") not in by_key(m.pixel_metrics(masks, maps))  # no validation maps: oracle only
