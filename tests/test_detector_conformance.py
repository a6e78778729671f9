"""The detector conformance kit: every registered detector passes these, so adding one adds its tests.

Each detector is fitted with its ``smoke_params`` on a tiny, very obvious synthetic set.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from medad.benchmark.acceleration import autocast
from medad.benchmark.job_runner import fit_detector, score_in_batches
from medad.benchmark.registry import DETECTORS
from medad.detectors.base import TrainLog
from tests.conftest import tiny_synthetic

NAMES = DETECTORS.names()


def build(name: str, seed: int = 0):
    cls = DETECTORS.get(name)
    return cls(image_size=cls.smoke_image_size, channels=1, device="cpu", seed=seed, **cls.smoke_params)


@pytest.fixture(scope="module")
def subsets():
    cache = {}

    def get(image_size: int):
        if image_size not in cache:
            cache[image_size] = tiny_synthetic(image_size=image_size)
        return cache[image_size]

    return get


@pytest.fixture(scope="module")
def fitted(subsets):
    cache = {}

    def get(name: str):
        if name not in cache:
            detector = build(name)
            subset = subsets(detector.image_size)
            log = TrainLog()
            fit_detector(detector, subset, log)
            cache[name] = (detector, subset, log)
        return cache[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_scores_are_finite_one_per_image_and_separate_obvious_anomalies(fitted, name):
    detector, subset, log = fitted(name)
    scores = score_in_batches(detector, subset.test, 16)
    assert scores.shape == (len(subset.test),)
    assert np.isfinite(scores).all()
    assert log.rows, "fit logged no training loss"
    auc = roc_auc_score(subset.test.labels, scores)
    assert auc >= 0.7, f"{name}: ROC AUC {auc:.3f} on obvious anomalies"


@pytest.mark.parametrize("name", NAMES)
def test_scores_do_not_depend_on_batch_composition_or_order(fitted, name):
    detector, subset, _ = fitted(name)
    images = subset.test.float_images()
    together = detector.score(images).double()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    shuffled = torch.cat([detector.score(images[order[i:i + 5]]).double() for i in range(0, len(images), 5)])
    torch.testing.assert_close(shuffled, together[order], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_gives_same_scores(fitted, name):
    detector, subset, _ = fitted(name)
    again = build(name)
    fit_detector(again, subset, TrainLog())
    images = subset.test.float_images()
    torch.testing.assert_close(again.score(images), detector.score(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_save_then_load_gives_same_scores(fitted, name, tmp_path):
    detector, subset, _ = fitted(name)
    path = tmp_path / "model.pt"
    detector.save(path)
    restored = build(name, seed=123)  # other initial weights: everything must come from the checkpoint
    restored.load(path)
    images = subset.test.float_images()
    torch.testing.assert_close(restored.score(images), detector.score(images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_fit_is_never_handed_test_labels(subsets, name, monkeypatch):
    detector = build(name)
    subset = subsets(detector.image_size)
    seen = {}

    def spy(train, val=None, log=None, **extra):
        seen.update(train=train, val=val, extra=extra)

    monkeypatch.setattr(detector, "fit", spy)
    fit_detector(detector, subset, TrainLog())
    test_ids = set(subset.test.ids)
    assert (seen["train"].labels == -1).all(), "training labels reached fit"
    assert not test_ids & set(seen["train"].ids)
    assert seen["val"] is None or not test_ids & set(seen["val"].ids)
    for part in seen["extra"].values():
        assert not test_ids & set(part.ids)
    if DETECTORS.get(name).supervision != "semi-supervised":
        assert not seen["extra"], "an unsupervised detector was given labelled anomalies"


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_gives_the_same_scores_and_maps(fitted, name):
    """``memory_format: channels_last`` (the CUDA default) changes the layout, not the numbers."""
    detector, subset, _ = fitted(name)
    images = subset.test.float_images()[:8]
    scores, maps = detector.score(images), detector.score_map(images)
    try:
        detector.use_memory_format(torch.channels_last)
        torch.testing.assert_close(detector.score(images), scores, rtol=1e-4, atol=1e-5)
        if maps is not None:
            torch.testing.assert_close(detector.score_map(images), maps, rtol=1e-4, atol=1e-5)
    finally:
        detector.use_memory_format(torch.contiguous_format)


@pytest.mark.parametrize("name", NAMES)
def test_trains_and_scores_in_channels_last_under_bf16_autocast(subsets, name):
    """``precision: bf16`` and ``memory_format: channels_last`` run every detector's fit and scoring."""
    detector = build(name)
    subset = subsets(detector.image_size)
    detector.use_memory_format(torch.channels_last)
    device = torch.device("cpu")
    with autocast(device, "bf16"):
        fit_detector(detector, subset, TrainLog())
        scores = score_in_batches(detector, subset.test, 16)
    assert scores.shape == (len(subset.test),) and np.isfinite(scores).all()
