"""Each paper's own score and model selection as the default, every other choice visible in the rows' tags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medad.benchmark.config import hyperparameters, load_config
from medad.benchmark.job_runner import detector_tags, fit_detector
from medad.cli import main
from medad.detectors.base import TrainLog
from medad.registry import DETECTORS
from tests.conftest import tiny_synthetic, write_config


def test_sure_roi_best_val_auroc_picks_the_epoch_on_labelled_validation_never_the_test_set():
    subset = tiny_synthetic(n_train=48, n_val=12, n_test=20, n_anomaly_pool=8)
    cls = DETECTORS.get("sure-roi")
    detector = cls(image_size=32, channels=1, epochs=4, batch_size=16, width=8, latent=16, select="best_val_auroc")
    assert detector.supervision == "semi-supervised"           # it uses anomaly labels: ranked apart
    seen = {}
    original = detector._validation_auroc

    def spy(val, pool):
        seen.setdefault("ids", set()).update(val.ids + pool.ids)
        return original(val, pool)

    detector._validation_auroc = spy
    log = TrainLog()
    fit_detector(detector, subset, log)
    aucs = [value for _, _, name, value in log.rows if name == "val_roc_auc"]
    assert len(aucs) == 4 and detector.selected_epoch == int(np.argmax(aucs))
    assert not seen["ids"] & set(subset.test.ids)
    assert seen["ids"] == set(subset.val.ids) | set(subset.anomaly_pool.ids)
    tags = detector_tags(detector)
    assert tags["selection"] == "best-val-epoch" and tags["supervision"] == "semi-supervised"
    last = cls(image_size=32, channels=1, epochs=1, batch_size=16, width=8, latent=16)
    assert last.supervision == "unsupervised" and detector_tags(last)["selection"] == "final-epoch"
    assert "last epoch" in detector_tags(last)["deviations"]


def test_sure_roi_best_val_auroc_without_a_labelled_pool_is_a_clear_error():
    from medad.datasets.base import DatasetError

    subset = tiny_synthetic(n_train=32, n_val=8, n_test=16, n_anomaly_pool=0)
    detector = DETECTORS.get("sure-roi")(image_size=32, channels=1, epochs=1, width=8, latent=16,
                                         select="best_val_auroc")
    with pytest.raises(DatasetError, match="labelled anomaly pool"):
        detector.fit(subset.train.without_labels(), subset.val, TrainLog(), anomaly_pool=subset.anomaly_pool)


def test_proxyano_scores_with_eq_13_by_default_and_tags_the_map_score():
    cls = DETECTORS.get("proxyano")
    assert hyperparameters(cls)["score_space"].default == "latent"
    small = dict(image_size=32, channels=1, base_width=4, depth=2, disc_width=4)
    assert "deviations" not in detector_tags(cls(**small))
    assert "score: map space" in detector_tags(cls(**small, score_space="map"))["deviations"]


def test_coronet_classifier_lr_is_the_papers_and_the_adaptation_is_labelled():
    assert hyperparameters(DETECTORS.get("coronet-semi"))["cin_lr"].default == pytest.approx(1e-3)
    code = DETECTORS.get("coronet-semi")(image_size=32, channels=1, cin_weights="none", cin_lr=1e-5)
    assert "cin_lr 1e-05 (paper: 0.001)" in detector_tags(code, {"cin_lr": 1e-5})["deviations"]
    assert detector_tags(DETECTORS.get("coronet")(image_size=32, channels=1))["adaptation"] == \
        "healthy-residual (no paper setting)"


def test_changed_paper_settings_become_deviations():
    cls = DETECTORS.get("ganomaly")
    tags = detector_tags(cls(image_size=32, channels=1, width=16, epochs=30), {"width": 16, "epochs": 30})
    assert tags["deviations"] == "epochs 30 (paper: 15); width 16 (paper: 64)"
    assert "deviations" not in detector_tags(cls(image_size=32, channels=1), {})


def test_shipped_configs_run_the_paper_defaults():
    default = {d.label: d.params for d in load_config("default").detectors}
    assert "mem_update" not in default["mama-net"] and "top_fraction" not in default["mama-net"]
    assert "score_space" not in default["proxyano"]
    papers = {d.label: d.params for d in load_config("papers").detectors}
    assert papers["sure-roi"].get("select", "last") == "last" and papers["sure-roi-best-val"]["select"] == "best_val_auroc"
    assert papers["coronet-semi"]["cin_lr"] == pytest.approx(1e-3) and papers["coronet-semi-code-lr"]["cin_lr"] == 1e-5
    assert DETECTORS.get("mama-net")(image_size=32, channels=1, width_mult=0.05).model.mem_update == "prototype"


def test_the_report_shows_each_rows_protocol_beside_its_paper_difference(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "ganomaly", "params": {"epochs": 1, "width": 8}}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet",
                 "--reports", str(tmp_path / "reports")]) == 0
    metrics = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert set(metrics["deviations"]) == {"epochs 1 (paper: 15); width 8 (paper: 64)"}
    from medad.reporting.run_data import load_run
    from medad.reporting.tables import protocol_cell

    cell = protocol_cell(load_run(tmp_path / "r").tags["ganomaly"])
    assert "epochs 1 (paper: 15)" in cell.text
