"""Non-finite scores and maps: only the metrics they feed are NaN, each with a note; test scores are an error."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medad.cli import main
from medad.evaluation import metrics as m
from tests.conftest import write_config

PIXEL_KEYS = [("pixel_roc_auc", "none"), ("pixel_pr_auc", "none"), ("aupro", "none"),
              ("dice", "val_px_q99"), ("dice", "best_dice")]


def by_key(rows):
    return {(r.metric, r.threshold_policy): r for r in rows}


def assert_every_nan_row_has_a_note(rows):
    assert all(r.note for r in rows if math.isnan(r.value)), [r for r in rows if math.isnan(r.value) and not r.note]


def _image_set(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return labels, rng.normal(size=n) + labels, rng.normal(size=50)


def _pixel_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((40, 8, 8), dtype=bool)
    masks[:20, 2:5, 2:5] = True
    return masks, rng.random(masks.shape) + masks, rng.random((10, 8, 8))


def test_non_finite_test_scores_are_an_error_naming_the_part_and_count():
    labels, scores, val = _image_set()
    scores[[3, 7]], scores[9] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"^test scores: 3 of 200 are NaN or infinite$"):
        m.image_metrics(labels, scores, val)
    with pytest.raises(ValueError, match=r"^test scores: 3 of 200"):
        m.screening_metrics(labels, scores, val)


def test_non_finite_validation_scores_void_only_the_honest_threshold():
    labels, scores, val = _image_set()
    val[[0, 1]] = [np.nan, -np.inf]
    rows = m.image_metrics(labels, scores, val)
    keyed = by_key(rows)
    for name in m.THRESHOLD_METRICS:
        row = keyed[(name, "val_q95")]
        assert math.isnan(row.value)
        assert row.note == "validation scores: 2 of 50 are NaN or infinite: honest threshold undefined"
    assert keyed[("roc_auc", "none")].value == pytest.approx(m.roc_auc(labels, scores))
    assert keyed[("pr_auc", "none")].value == pytest.approx(m.pr_auc(labels, scores))
    for policy in ("youden", "best_f1"):
        assert all(math.isfinite(keyed[(name, policy)].value) for name in m.THRESHOLD_METRICS)
    assert all(math.isfinite(keyed[(name, "none")].value) for name in m.OPERATING_POINTS)
    assert_every_nan_row_has_a_note(rows)


def test_non_finite_pool_scores_void_only_the_screening_rows():
    labels, scores, pool = _image_set()
    pool[4] = np.nan
    rows = m.screening_metrics(labels, scores, pool)
    assert len(rows) == len(m.SCREENING_METRICS) and all(math.isnan(r.value) for r in rows)
    assert {r.note for r in rows} == {"anomaly pool scores: 1 of 50 are NaN or infinite: "
                                      "sensitivity-controlled threshold undefined"}


def test_non_finite_test_maps_void_every_pixel_metric_with_a_note():
    masks, maps, val_maps = _pixel_set()
    maps[3, 0, 0], maps[3, 1, 1], maps[30, 4, 4] = np.nan, np.inf, np.nan
    rows = m.pixel_metrics(masks, maps, n_test=50, val_maps=val_maps)
    keyed = by_key(rows)
    assert sorted(keyed) == sorted(PIXEL_KEYS)
    for key in PIXEL_KEYS:
        assert math.isnan(keyed[key].value)
        assert keyed[key].note == ("test maps: 2 of 40 maps hold non-finite values (3 pixels): "
                                   "pixel metrics undefined; pixel metrics over 40 of 50 test images with masks")


def test_non_finite_validation_maps_void_only_the_honest_dice():
    masks, maps, val_maps = _pixel_set()
    val_maps[2, 3, 3] = np.nan
    keyed = by_key(m.pixel_metrics(masks, maps, val_maps=val_maps))
    honest = keyed[("dice", "val_px_q99")]
    assert math.isnan(honest.value)
    assert honest.note == ("validation maps: 1 of 10 maps hold non-finite values (1 pixel): "
                           "honest pixel threshold undefined")
    for key in PIXEL_KEYS:
        if key != ("dice", "val_px_q99"):
            assert math.isfinite(keyed[key].value) and keyed[key].note == ""


def test_nan_ratios_of_defined_thresholds_say_why():
    # a single-class test set and a validation threshold above every test score: several empty denominators
    rows = m.image_metrics(np.zeros(5, dtype=int), np.arange(5.0), val_scores=np.arange(10.0, 13.0))
    rows += m.screening_metrics(np.array([0, 1]), np.array([0.1, 0.9]), np.array([0.0]))
    assert any(math.isnan(r.value) for r in rows)
    assert_every_nan_row_has_a_note(rows)
    precision = by_key(rows)[("precision", "val_q95")]
    assert math.isnan(precision.value) and "precision undefined: no test image scores above" in precision.note


def _run(tmp_path, detector: str, **params) -> tuple[pd.Series, pd.DataFrame]:
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": f"tests.support.nan_detectors:{detector}",
                                                           "label": "nan", "params": params}])
    main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"])
    job = pd.read_csv(tmp_path / "r" / "jobs.csv").iloc[0]
    metrics = pd.read_csv(tmp_path / "r" / "metrics.csv") if job["status"] == "done" else pd.DataFrame()
    return job, metrics


def test_a_nan_pixel_in_one_test_map_keeps_the_job_and_its_image_metrics(tmp_path):
    job, metrics = _run(tmp_path, "NaNPixelDetector")
    assert job["status"] == "done"
    keyed = metrics.set_index(["metric", "threshold_policy"])
    assert math.isfinite(keyed.loc[("roc_auc", "none"), "value"])
    for key in PIXEL_KEYS:
        assert math.isnan(keyed.loc[key, "value"])
        note = keyed.loc[key, "note"]
        assert note.startswith("test maps: 1 of ") and "(1 pixel): pixel metrics undefined" in note


def test_a_nan_score_fails_the_job_naming_the_test_scores(tmp_path):
    job, _ = _run(tmp_path, "NaNScoreDetector")
    assert job["status"] == "failed" and "test scores: 1 of " in job["error"] and "are NaN or infinite" in job["error"]
