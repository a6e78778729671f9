"""Shared by the detectors' "done when" tests: fit on one thread, then image and pixel ROC AUC on the test set."""

from __future__ import annotations

import time

import torch
from sklearn.metrics import roc_auc_score

from medad.datasets.base import Subset
from medad.detectors.base import Detector


def fit_on_one_thread(detector: Detector, subset: Subset) -> float:
    """Fit ``detector`` on the subset's training normals with one torch thread; return the fit's CPU seconds.

    Tiny convolutions waste CPU on synchronisation with more threads; CPU time, unlike wall time, is
    what a fit costs on a shared machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.process_time()
        detector.fit(subset.train.without_labels())
        return time.process_time() - started
    finally:
        torch.set_num_threads(threads)


def image_and_pixel_auc(detector: Detector, subset: Subset) -> tuple[float, float]:
    """(image ROC AUC of ``score``, pixel ROC AUC of ``score_map``) on the whole test set."""
    images = subset.test.float_images()
    image_auc = roc_auc_score(subset.test.labels, detector.score(images).numpy())
    pixel_auc = roc_auc_score(subset.test.masks.numpy().ravel(), detector.score_map(images).numpy().ravel())
    return float(image_auc), float(pixel_auc)


def assert_separates(detector: Detector, subset: Subset, *, image_bar: float, pixel_bar: float,
                     cpu_limit_s: float = 120.0) -> None:
    """Fit on one thread, then assert image and pixel ROC AUC reach their bars within ``cpu_limit_s`` of CPU."""
    cpu_s = fit_on_one_thread(detector, subset)
    image_auc, pixel_auc = image_and_pixel_auc(detector, subset)
    print(f"fit {cpu_s:.0f} s CPU, image AUC {image_auc:.3f}, pixel AUC {pixel_auc:.3f}")
    assert pixel_auc >= pixel_bar, f"pixel AUC {pixel_auc:.3f} (image AUC {image_auc:.3f})"
    assert image_auc >= image_bar, f"image AUC {image_auc:.3f} (pixel AUC {pixel_auc:.3f})"
    assert cpu_s < cpu_limit_s, f"fit took {cpu_s:.0f} s of CPU"
