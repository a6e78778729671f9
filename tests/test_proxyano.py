"""ProxyAno (issue 6): SLIC proxies, nearest-item memory, pseudo anomalies, shapes, and a one-minute fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medad.datasets.synthetic import SyntheticHeadCT
from medad.detectors.blocks.memory import NearestNeighbourMemory
from medad.detectors.nets import count_parameters
from medad.detectors.proxyano import superpixels
from medad.detectors.proxyano.networks import ImageReconstructionModule, ProxyExtractionModule
from medad.detectors.proxyano.pseudo_anomaly import paste_random_patches
from tests.support.separation import assert_separates

pytestmark = pytest.mark.xdist_group("test_proxyano")  # its tests share a module fixture: one worker builds it


@pytest.fixture(scope="module")
def phantoms():
    return SyntheticHeadCT(image_size=128, n_train=3, n_val=0, n_test=2, n_anomaly_pool=0).load("obvious").train


def test_slic_proxy_is_piecewise_constant_with_the_requested_number_of_segments(phantoms):
    image = phantoms.float_images()[0].numpy()
    requested = superpixels.scaled_segments(800, 128)  # the paper's 800 at 256 px -> 200 at 128 px
    assert requested == 200
    labels = superpixels.slic_labels(image, requested)
    proxy = superpixels.region_means(image, labels)
    count = len(np.unique(labels))
    assert 0.75 * requested <= count <= 1.25 * requested, f"{count} segments for {requested} requested"
    for label in np.unique(labels):
        region = proxy[0][labels == label]
        assert np.ptp(region) == 0.0  # constant inside each superpixel...
        assert region[0] == pytest.approx(image[0][labels == label].mean(), abs=1e-5)  # ...equal to its mean
    assert np.abs(proxy - image).mean() < 0.05  # a proxy, not a blank image


def test_superpixel_images_are_computed_once_per_training_set(phantoms, monkeypatch):
    first = superpixels.superpixel_images(phantoms.images, 200)
    monkeypatch.setattr(superpixels, "slic", lambda *a, **k: pytest.fail("SLIC ran again on a cached training set"))
    assert superpixels.superpixel_images(phantoms.images, 200) is first
    assert first.shape == phantoms.images.shape and first.dtype == torch.uint8


def test_pasted_pseudo_anomalies_stay_inside_the_image_and_are_recorded_in_the_mask():
    generator = torch.Generator().manual_seed(0)
    proxies = torch.zeros(16, 1, 64, 64)
    sources = torch.arange(16 * 64 * 64, dtype=torch.float32).view(16, 1, 64, 64) + 1.0  # every pixel unique
    pasted, mask = paste_random_patches(proxies, sources, generator, 0.0625, 0.3125)
    assert mask.shape == (16, 1, 64, 64) and set(mask.unique().tolist()) == {0.0, 1.0}
    for i in range(16):
        rows = torch.nonzero(mask[i, 0].any(dim=1)).flatten()
        cols = torch.nonzero(mask[i, 0].any(dim=0)).flatten()
        height, width = len(rows), len(cols)
        assert 4 <= height <= 20 and 4 <= width <= 20  # 1/16 .. 5/16 of 64 px
        assert mask[i, 0].sum() == height * width  # one full rectangle
        assert rows[-1] - rows[0] + 1 == height and cols[-1] - cols[0] + 1 == width
        inside = pasted[i, 0][mask[i, 0] == 1].view(height, width)
        assert torch.equal(pasted[i][mask[i] == 0], proxies[i][mask[i] == 0])  # proxy untouched outside M
        # inside M: a contiguous crop of the source image (consecutive pixel ids)
        start = int(inside[0, 0] - 1)
        sy, sx = divmod(start - i * 64 * 64, 64)
        assert torch.equal(inside, sources[i, 0, sy:sy + height, sx:sx + width])


def test_memory_replaces_each_vector_by_its_nearest_item_with_a_straight_through_gradient():
    torch.manual_seed(0)
    memory = NearestNeighbourMemory(num_items=8, dim=4)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    memory.eval()
    quantised, index = memory(z)
    vectors = z.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    brute = torch.cdist(vectors, memory.items).argmin(dim=1)
    assert torch.equal(index.flatten(), brute)
    torch.testing.assert_close(quantised.detach().permute(0, 2, 3, 1).reshape(-1, 4), memory.items[brute])
    (quantised * torch.arange(18.0).view(2, 1, 3, 3)).sum().backward()
    torch.testing.assert_close(z.grad, torch.arange(18.0).view(2, 1, 3, 3).expand(2, 4, 3, 3))


def test_memory_ema_update_follows_the_formula_and_only_in_training_mode():
    memory = NearestNeighbourMemory(num_items=2, dim=2, decay=0.9, eps=0.0)
    memory.items.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    memory.embed_sum.copy_(memory.items)
    z = torch.tensor([[1.0, 1.0], [2.0, 0.0], [9.0, 11.0]]).view(1, 3, 1, 2).permute(0, 3, 1, 2)  # (1, 2, 3, 1)
    memory.eval()
    memory(z)
    torch.testing.assert_close(memory.items, torch.tensor([[0.0, 0.0], [10.0, 10.0]]))  # frozen outside training
    memory.train()
    memory(z)
    n = torch.tensor([0.9 + 0.1 * 2, 0.9 + 0.1 * 1])
    e = torch.tensor([[0.1 * 3.0, 0.1 * 1.0], [9.0 + 0.9, 9.0 + 1.1]])
    torch.testing.assert_close(memory.cluster_size, n)
    torch.testing.assert_close(memory.items, e / n[:, None])


def test_shapes_and_parameter_counts_at_128_px_match_the_spec_table():
    """spec-proxyano.md Sec. 2 (widths 32-64-128-256-256, d = 64, k = 128): 128 px -> code 64 x 8 x 8 -> 128 px."""
    pem, irm = ProxyExtractionModule(1), ImageReconstructionModule(1)
    pem.eval()
    images = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        proxy, z, index = pem(images)
        recon = irm(proxy)
    assert z.shape == (2, 64, 8, 8) and index.shape == (2, 8, 8)
    assert proxy.shape == images.shape and recon.shape == images.shape
    assert pem.memory.items.shape == (128, 64)

    def double_conv(a: int, b: int) -> int:  # two bias-free 3x3 convs + two BatchNorms
        return 9 * a * b + 9 * b * b + 4 * b

    encoder = (double_conv(1, 32) + double_conv(32, 64) + double_conv(64, 128) + double_conv(128, 256)
               + double_conv(256, 256) + 256 * 64 + 64)
    decoder = (64 * 256 + 2 * 256 + double_conv(256, 128) + double_conv(128, 64) + double_conv(64, 32)
               + double_conv(32, 32) + 32 + 1)
    assert count_parameters(pem) == count_parameters(irm) == encoder + decoder  # memory items are buffers


def test_no_slic_at_test_time(monkeypatch):
    from medad.detectors.proxyano import ProxyAnoDetector

    detector = ProxyAnoDetector(image_size=32, channels=1, base_width=4, depth=3, disc_width=4)
    monkeypatch.setattr(superpixels, "slic", lambda *a, **k: pytest.fail("SLIC ran at test time"))
    images = torch.rand(3, 1, 32, 32)
    assert detector.score(images).shape == (3,)
    assert detector.score_map(images).shape == (3, 32, 32)


@pytest.mark.slow
def test_maps_separate_obvious_lesions_and_the_image_score_beats_chance_in_about_a_minute():
    from medad.detectors.proxyano import ProxyAnoDetector

    subset = SyntheticHeadCT(image_size=64, n_train=250, n_val=0, n_test=100, n_anomaly_pool=0).load("obvious")
    detector = ProxyAnoDetector(image_size=64, channels=1, **FIT_PARAMS)
    # The pixel maps separate clearly everywhere (0.925-0.930); the image score does not reach a fixed bar on
    # every machine at this budget (0.859 on one, 0.789 on this project's CI and 2-core machine, 0.75-0.85 in
    # earlier runs), so the image bar only guards against a detector at chance.
    assert_separates(detector, subset, image_bar=0.70, pixel_bar=0.85)


# CPU-sized settings: quarter widths, 3 downsamplings, 8 + 8 epochs at batch 8; maps smoothed and images
# scored by their worst 2 % of pixels (score_space="map"), as the ae baseline does.
FIT_PARAMS: dict = {"stage1_epochs": 8, "stage2_epochs": 8, "batch_size": 8, "base_width": 8, "depth": 3,
                    "disc_width": 8, "score_space": "map", "map_sigma": 3.0, "top_fraction": 0.02}
