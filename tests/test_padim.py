"""PaDiM's mechanisms against independent computations: the streamed per-position Gaussians and the Mahalanobis
distance against NumPy's covariance and SciPy's mahalanobis; the embedding's upsampling and random dimensions; the
paper's variants and tags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis

from medad.detectors.padim import PaDiMDetector
from medad.detectors.padim.gaussian import RunningGaussians, mahalanobis
from tests.conftest import tiny_synthetic


def test_streamed_gaussians_give_scipys_mahalanobis_distance():
    generator = np.random.default_rng(0)
    positions, dim, n = 3, 5, 23
    mixing = generator.normal(size=(positions, dim, dim))
    # (n, dim, positions): correlated features with a different mean and covariance per position, far from 0
    train = np.einsum("pde,npe->ndp", mixing, generator.normal(size=(n, positions, dim))) + 10.0
    gaussians = RunningGaussians(positions, dim, torch.device("cpu"))
    for start, stop in ((0, 1), (1, 8), (8, 9), (9, 23)):  # uneven batches, one of a single image
        gaussians.add(torch.tensor(train[start:stop], dtype=torch.float32))
    mean, whitening, _ = gaussians.whitening(0.01)
    test = train[:4] + generator.normal(size=(4, dim, positions))
    distances = mahalanobis(torch.tensor(test, dtype=torch.float32), mean, whitening)
    for p in range(positions):
        covariance = np.cov(train[:, :, p], rowvar=False) + 0.01 * np.eye(dim)  # 1/(N - 1) + eps I
        inverse = np.linalg.inv(covariance)
        expected = [scipy_mahalanobis(test[k, :, p], train[:, :, p].mean(axis=0), inverse) for k in range(4)]
        np.testing.assert_allclose(distances[:, p].numpy(), expected, rtol=1e-4)


def test_the_embedding_repeats_deeper_cells_and_keeps_the_seeded_random_dimensions():
    detector = PaDiMDetector(image_size=32, channels=1, backbone="resnet18", weights="random", width_divisor=8,
                             n_features=20, seed=3)
    images = tiny_synthetic(n_train=4, n_test=2).test.float_images()
    maps = detector.backbone(images)
    full = torch.cat([maps["layer1"],
                      maps["layer2"].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3),  # a 2 x 2 block per cell
                      maps["layer3"].repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)], dim=1)
    torch.testing.assert_close(detector._embed(images), full[:, detector.dims])
    assert len(set(detector.dims.tolist())) == 20 and full.shape[1] == 56
    again = PaDiMDetector(image_size=32, channels=1, backbone="resnet18", weights="random", width_divisor=8,
                          n_features=20, seed=3)
    assert torch.equal(again.dims, detector.dims)


def test_the_paper_variants_and_their_tags():
    r18 = PaDiMDetector(image_size=32, channels=1, backbone="resnet18", weights="random")
    assert r18.n_features == 100 and r18.paper_deviations() == [] and r18.weights == "random"
    narrow = PaDiMDetector(image_size=32, channels=1, backbone="resnet18", weights="random", width_divisor=8,
                           n_features=16)
    assert narrow.paper_deviations() == ["n_features 16 with resnet18 (paper: 100 with resnet18, 550 with wide_resnet50_2)"]
    with pytest.raises(ValueError, match="n_features 600 exceeds the 448 channels"):
        PaDiMDetector.check_settings({"backbone": "resnet18", "n_features": 600})
    with pytest.raises(ValueError, match="layers must be distinct names"):
        PaDiMDetector.check_settings({"layers": ["layer1", "layer1"]})
    assert PaDiMDetector.pretrained_files({"backbone": "resnet18"})[0][0].name == "resnet18-f37072fd.pth"


def test_maps_and_scores_after_a_fit():
    subset = tiny_synthetic(n_train=12, n_test=6)
    detector = PaDiMDetector(image_size=32, channels=1, backbone="resnet18", weights="random", width_divisor=8,
                             n_features=16, batch_size=5)
    with pytest.raises(RuntimeError, match="fit"):
        detector.score(subset.test.float_images())
    detector.fit(subset.train.without_labels())
    images = subset.test.float_images()
    maps = detector.score_map(images)
    assert maps.shape == (6, 32, 32) and torch.isfinite(maps).all() and (maps >= 0).all()
    torch.testing.assert_close(detector.score(images), maps.flatten(1).max(dim=1).values)
