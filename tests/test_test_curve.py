"""The test-set diagnostic (run setting ``test_curve``): recorded, labelled, refused beside selection rules, and
without any effect on the fit (bit-identical final scores on the CPU)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medad.benchmark.config import ConfigError, load_config, narrow
from medad.benchmark.diagnostics import TEST_CURVE_LOSS, TestCurve, untouched
from medad.benchmark.job_runner import execute
from medad.benchmark.jobs import Job, expand_jobs
from medad.datasets.base import ImageSet
from medad.detectors.base import Detector, TrainLog

TINY = {"n_train": 48, "n_val": 8, "n_test": 24, "n_anomaly_pool": 0}
DETECTORS = {  # two epochs (f-AnoGAN: one GAN epoch, then two of its encoder, which trains between eval-mode scorings)
    "ganomaly": {"epochs": 2, "batch_size": 16, "width": 8, "latent": 16},
    "f-anogan": {"gan_epochs": 1, "encoder_epochs": 2, "batch_size": 16, "generator_width": 8, "critic_width": 8,
                 "latent": 16},
    "ae": {"epochs": 2, "batch_size": 16},
}


def _job(detector: str, test_curve: bool) -> Job:
    return Job(dataset="synthetic", subset="obvious", detector=detector, detector_name=detector, seed=3, image_size=32,
               channels=1, device="cpu", score_batch_size=16, save_checkpoints=False, dataset_params=dict(TINY),
               detector_params=DETECTORS[detector], test_curve=test_curve)


@pytest.mark.parametrize("detector", ["ae", pytest.param("ganomaly", marks=pytest.mark.slow),
                                      pytest.param("f-anogan", marks=pytest.mark.slow)])
def test_the_diagnostic_records_a_curve_and_leaves_the_fit_bit_identical(detector):
    _, plain_tables, _ = execute(_job(detector, False), "r")
    timings, tables, _ = execute(_job(detector, True), "r")
    assert "test_curve_error" not in timings
    np.testing.assert_array_equal(tables["scores"]["score"].to_numpy(), plain_tables["scores"]["score"].to_numpy())
    history, plain_history = tables["history"], plain_tables["history"]
    curve = history[history["loss_name"].str.startswith(TEST_CURVE_LOSS)]
    pd.testing.assert_frame_equal(history[~history["loss_name"].str.startswith(TEST_CURVE_LOSS)].reset_index(drop=True),
                                  plain_history.reset_index(drop=True))
    assert plain_history["loss_name"].str.startswith(TEST_CURVE_LOSS).sum() == 0
    assert curve["value"].between(0, 1).all()
    if detector == "f-anogan":  # two phases, the epochs numbered on through them as in its own history
        assert curve["loss_name"].tolist() == [f"{TEST_CURVE_LOSS}_phase1"] + [f"{TEST_CURVE_LOSS}_phase2"] * 2
        assert curve["epoch"].tolist() == [0, 1, 2]
    else:
        assert curve["loss_name"].tolist() == [TEST_CURVE_LOSS] * 2 and curve["epoch"].tolist() == [0, 1]
    # the last point is the final model's test ROC AUC, as the job reports it
    final = tables["metrics"].set_index("metric").loc["roc_auc", "value"]
    assert curve["value"].iloc[-1] == pytest.approx(final, abs=1e-12)
    assert set(tables["metrics"]["diagnostics"]) == {"test-curve"}
    assert "diagnostics" not in plain_tables["metrics"].columns
    values = ["value", "ci_low", "ci_high"]
    pd.testing.assert_frame_equal(tables["metrics"][values], plain_tables["metrics"][values])


class Noisy(Detector):
    """Scoring that touches everything a fit depends on: train mode, BatchNorm statistics, every generator."""

    name = "noisy"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(0.5))
        self.seen_training: list[bool] = []

    def fit(self, train, val=None, log=None) -> None:
        pass

    def score(self, images: torch.Tensor) -> torch.Tensor:
        self.seen_training.append(self.net.training)
        self.net.train()                        # updates the BatchNorm running statistics
        out = self.net(images).mean(dim=(1, 2, 3))
        self.net[2].eval()                      # leaves a child in another mode than its parent
        noise = torch.rand(len(images)) + torch.rand(1, generator=self.generator) + np.random.rand() + random.random()
        return (out + noise).detach()


def _rng_draws(detector: Noisy) -> tuple:
    return (random.random(), float(np.random.rand()), float(torch.rand(1)), float(torch.rand(1, generator=detector.generator)))


def test_untouched_restores_modes_buffers_and_every_generator():
    detector = Noisy(image_size=8, channels=1, seed=0)
    detector.net.train()
    detector.net[1].eval()  # a mixed state, as f-AnoGAN's frozen GAN beside its training encoder
    modes = [m.training for m in detector.net.modules()]
    buffers = [b.clone() for b in detector.net.buffers()]
    random.seed(1), np.random.seed(1), torch.manual_seed(1), detector.generator.manual_seed(1)
    expected = _rng_draws(detector)
    random.seed(1), np.random.seed(1), torch.manual_seed(1), detector.generator.manual_seed(1)
    with untouched(detector):
        assert not any(m.training for m in detector.net.modules())  # scored in eval mode, as the final model
        detector.score(torch.rand(4, 1, 8, 8))
    assert [m.training for m in detector.net.modules()] == modes
    assert all(torch.equal(a, b) for a, b in zip(buffers, detector.net.buffers()))
    assert _rng_draws(detector) == expected


def test_the_curve_names_phases_and_never_fails_the_fit():
    images = torch.randint(0, 255, (6, 1, 8, 8), dtype=torch.uint8)
    test = ImageSet(images, np.array([0, 0, 0, 1, 1, 1]), [f"t{i}" for i in range(6)])
    detector = Noisy(image_size=8, channels=1, seed=0)
    log = TrainLog()
    curve = TestCurve(detector, test, log, batch_size=8, seed=0)  # one batch per scoring
    log.epoch_end = curve
    for phase_epochs in (2, 3):
        for epoch in log.epochs(phase_epochs):
            log.log(epoch, epoch, loss=1.0)
    assert [row[0] for row in curve.history_rows()] == [0, 1, 2, 3, 4]
    assert [row[2] for row in curve.history_rows()] == [f"{TEST_CURVE_LOSS}_phase1"] * 2 + [f"{TEST_CURVE_LOSS}_phase2"] * 3
    assert detector.seen_training == [False] * 5

    def broken(images):
        raise RuntimeError("no memory yet")

    detector.score = broken
    failing = TestCurve(detector, test, TrainLog(), batch_size=4, seed=0)
    failing(0, 2), failing(1, 2)
    assert failing.history_rows() == [] and failing.error == "epoch 1: RuntimeError: no memory yet"


def test_a_detector_that_sees_the_test_set_is_refused():
    class Peeking(Noisy):
        @property
        def sees_test_set(self) -> bool:
            return True

    images = ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="sees_test_set"):
        TestCurve(Peeking(image_size=8, channels=1), images, TrainLog(), batch_size=2, seed=0)


def _config(tmp_path, detectors: str):
    path = tmp_path / "c.yaml"
    path.write_text(f"name: t\nimage_size: 32\ndatasets: [{{name: synthetic}}]\ndetectors:\n{detectors}")
    return path


def test_the_setting_is_declared_recorded_and_refused_beside_selection_rules(tmp_path):
    path = _config(tmp_path, "  - {name: ae}\n  - {name: ganomaly}\n")
    assert load_config(path).test_curve is False
    config = load_config(path, ["test_curve=true"])
    assert config.test_curve is True and config.to_dict()["test_curve"] is True  # the manifest records it
    assert all(job.test_curve for job in expand_jobs(config))
    with pytest.raises(ConfigError, match="test_curve: expected bool"):
        load_config(path, ["test_curve=often"])
    refused = {
        "  - {name: ganomaly, label: g-ref, params: {protocol: reference}}\n": r"detectors\[1\].params.protocol: reference \(best-epoch-on-test selection\) \(entry 'g-ref'\)",
        "  - {name: ganomaly, params: {test_minmax: true}}\n": r"detectors\[1\].params.test_minmax: true",
        "  - {name: sure-roi, params: {select: best_val_auroc}}\n": r"detectors\[1\].params.select: best_val_auroc \(entry 'sure-roi'\)",
    }
    for entry, message in refused.items():
        config = load_config(_config(tmp_path, "  - {name: ae}\n" + entry), ["test_curve=true"])
        with pytest.raises(ConfigError, match=r"test_curve: true cannot run beside " + message):
            expand_jobs(config)
        assert expand_jobs(narrow(config, detectors=["ae"]))  # checked on the matrix as it runs
    sure_roi_last = load_config(_config(tmp_path, "  - {name: sure-roi, params: {select: last}}\n"), ["test_curve=true"])
    assert expand_jobs(sure_roi_last)


def test_a_run_with_the_setting_records_it_and_draws_the_curve_apart(tmp_path, capsys):
    from medad.cli import main

    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\nimage_size: 32\ndatasets:\n  - {name: synthetic, subsets: [obvious], params: "
                      f"{TINY}}}\ndetectors:\n  - {{name: ae, params: {DETECTORS['ae']}}}\n".replace("'", ""))
    status = main(["run", "--config", str(config), "--set", "test_curve=true", "--results", str(tmp_path / "results"),
                   "--reports", str(tmp_path / "reports"), "--run-id", "r", "--quiet"])
    assert status == 0, capsys.readouterr()
    run = tmp_path / "results" / "r"
    assert '"test_curve": true' in (run / "manifest.json").read_text()
    history = pd.read_csv(run / "history.csv")
    assert (history["loss_name"] == TEST_CURVE_LOSS).sum() == 2
    assert set(pd.read_csv(run / "metrics.csv")["diagnostics"]) == {"test-curve"}
    assert "test-curve diagnostic (test set; never used for selection)" in (run / "jobs" / "synthetic__obvious__ae__seed0"
                                                                            / "log.txt").read_text()
    html = (tmp_path / "reports" / "r" / "index.html").read_text()
    assert "Test-set diagnostic on synthetic/obvious" in html and "never used for selection, thresholds or ranking" in html
    assert "diagnostics: test-curve" in html  # the rows' badge
    figures = sorted(p.name for p in (tmp_path / "reports" / "r" / "figures").glob("*.png"))
    assert any(name.startswith("test-curve") for name in figures) and any(name.startswith("history") for name in figures)
