"""The ``ae`` baseline: separates the synthetic `obvious` lesions at 64 px with the default config's settings."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from medad.benchmark.config import load_config, narrow
from medad.benchmark.engine import run_matrix
from medad.benchmark.run_folder import RunFolder
from medad.detectors.ae import AEDetector
from medad.detectors.nets import count_parameters
from medad.detectors.scoring import gaussian_blur, top_fraction_mean


@pytest.mark.slow
def test_ae_reaches_roc_auc_090_on_obvious_with_the_default_config(tmp_path):
    config = narrow(load_config("default"), detectors=["ae"], datasets=["synthetic"],
                    device="cpu")
    config.datasets[0].subsets = ["obvious"]
    assert config.image_size == 64
    summary = run_matrix(config, RunFolder(tmp_path / "ae"), progress=False)
    assert summary.ok
    metrics = pd.read_csv(tmp_path / "ae" / "metrics.csv").set_index(["metric", "threshold_policy"])["value"]
    assert metrics[("roc_auc", "none")] >= 0.90
    assert metrics[("pixel_roc_auc", "none")] >= 0.80


def test_ae_shapes_and_reconstruction_range():
    detector = AEDetector(image_size=64, channels=3, latent=16, width=8)
    images = torch.rand(2, 3, 64, 64)
    assert detector.reconstruct(images).shape == (2, 3, 64, 64)
    assert detector.score_map(images).shape == (2, 64, 64)
    assert 0.0 <= float(detector.reconstruct(images).min()) and float(detector.reconstruct(images).max()) <= 1.0
    assert count_parameters(detector.model) > 0


def test_top_fraction_mean_and_blur():
    maps = torch.zeros(2, 10, 10)
    maps[0, 0, :5] = 1.0
    assert torch.allclose(top_fraction_mean(maps, 0.05), torch.tensor([1.0, 0.0]))
    assert torch.allclose(top_fraction_mean(maps, 1.0), torch.tensor([0.05, 0.0]))
    spot = torch.zeros(1, 15, 15)
    spot[0, 7, 7] = 1.0
    blurred = gaussian_blur(spot, 1.0)
    assert blurred.shape == spot.shape and torch.isclose(blurred.sum(), torch.tensor(1.0), rtol=1e-4)
    assert blurred[0, 7, 7] == blurred.max() and torch.isclose(blurred[0, 7, 6], blurred[0, 6, 7])
    assert torch.equal(gaussian_blur(maps, 0.0), maps)
