"""The high-sensitivity screening filter (issue 7): threshold policy ``screen_s98`` and its cleared share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medad.cli import main
from medad.evaluation.metrics import screening_metrics, screening_policy, threshold_screen
from tests.conftest import write_config


def test_the_threshold_keeps_the_target_sensitivity_on_the_calibration_anomalies():
    scores = np.random.default_rng(0).normal(size=200)
    for target in (0.9, 0.98, 1.0):
        threshold = threshold_screen(scores, target)
        assert np.mean(scores > threshold) >= target
        misses = int(np.floor((1 - target) * 200 + 1e-9))
        assert np.mean(scores > np.sort(scores)[misses]) < target  # the largest such threshold
    assert threshold_screen(np.array([3.0, 1.0, 2.0]), 0.98) < 1.0  # fewer than 50 anomalies: no miss allowed
    assert screening_policy(0.98) == "screen_s98" and screening_policy(0.9) == "screen_s90"
    with pytest.raises(ValueError, match="labelled anomalies"):
        threshold_screen(np.array([]))


def test_screening_rows_report_the_share_cleared_as_certainly_normal():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.8])
    rows = {r.metric: r for r in screening_metrics(labels, scores, np.array([0.4, 0.7]))}
    assert {r.threshold_policy for r in rows.values()} == {"screen_s98"}
    assert not any(r.oracle for r in rows.values())
    assert rows["cleared_fraction"].value == pytest.approx(3 / 6)  # 0.1, 0.2, 0.3 are below t just under 0.4
    assert rows["recall"].value == 1.0 and rows["npv"].value == 1.0
    assert rows["specificity"].value == pytest.approx(3 / 4)
    missing = screening_metrics(labels, scores, None)
    assert all(np.isnan(r.value) for r in missing) and "no labelled anomaly pool" in missing[0].note
    in_sample = screening_metrics(labels, scores, np.array([0.4]), in_sample=True)
    assert "training data" in in_sample[0].note


def test_a_run_writes_the_screening_policy_and_the_supervision_column(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "tests.support.detectors:TemplateDistance",
                                                           "label": "template"}],
                          dataset_params={"n_train": 24, "n_val": 8, "n_test": 16, "n_anomaly_pool": 10})
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    metrics = pd.read_csv(tmp_path / "r" / "metrics.csv")
    screen = metrics[metrics["threshold_policy"] == "screen_s98"].set_index("metric")
    assert {"threshold", "recall", "specificity", "npv", "cleared_fraction"} <= set(screen.index)
    assert 0.0 <= screen.loc["cleared_fraction", "value"] <= 1.0
    assert "10 labelled pool anomalies" in screen.loc["threshold", "note"]
    assert set(metrics["supervision"]) == {"unsupervised"}
