"""Test images are scored in a seeded random order (and returned in their own): GANomaly's reference protocol,
whose train-mode BatchNorm normalises each batch by itself, never scores a single-class batch."""

from __future__ import annotations

import numpy as np
import torch

from medad.benchmark.job_runner import score_in_batches
from medad.datasets.base import ImageSet
from medad.detectors.ganomaly import GanomalyDetector
from medad.detectors.scoring import scores_in_random_order
from tests.conftest import tiny_synthetic


def label_sorted(images: ImageSet) -> ImageSet:
    """The set with every normal first, as most adapters (and the synthetic set) list their test images."""
    return images.subset(np.argsort(images.labels, kind="stable"))


def test_scores_come_back_in_the_images_own_order():
    images = tiny_synthetic(n_test=40).test
    per_image = images.float_images().flatten(1).mean(dim=1)
    seen = []

    def score(batch):
        seen.append(batch.shape[0])
        return batch.flatten(1).mean(dim=1)

    scores = scores_in_random_order(score, images, 16, torch.Generator().manual_seed(3))
    torch.testing.assert_close(scores, per_image)
    assert seen == [16, 16, 8]


def test_ganomaly_reference_never_scores_a_single_class_batch():
    test = label_sorted(tiny_synthetic(n_test=96).test)
    detector = GanomalyDetector(image_size=32, channels=1, protocol="reference", width=8, latent=16, batch_size=32)
    chunks = []
    encoder = detector.netg.encoder1
    original = encoder.forward

    def spy(x):
        chunks.append(x.detach().clone())
        return original(x)

    encoder.forward = spy
    scores = score_in_batches(detector, test, 64, seed=0)
    assert len(scores) == len(test) and np.isfinite(scores).all()
    pixels = test.float_images().flatten(1)
    for chunk in chunks:
        # map each network input back to its test image (the [-1, 1] input is 2x - 1 of the grey image)
        grey = ((chunk[:, :1] + 1) / 2).flatten(1)
        index = torch.cdist(grey, pixels).argmin(dim=1).numpy()
        assert set(test.labels[index]) == {0, 1}, "a chunk of one class only"
    # the order is seeded: the same job scores the same way; another seed, another order, other values
    np.testing.assert_allclose(score_in_batches(detector, test, 64, seed=0), scores)
    assert not np.allclose(score_in_batches(detector, test, 64, seed=1), scores)
