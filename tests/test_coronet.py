"""CoroNet (issue 7): the FPAE, the residual tensor, offline ResNet-18 weights, the labelled pool, the modes."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchvision.models import resnet18

from medad.benchmark.job_runner import detector_tags, fit_detector, score_in_batches
from medad.datasets.base import DatasetError
from medad.detectors.base import TrainLog
from medad.detectors.coronet import FPAE, CoroNetAE, CoroNetSemi
from medad.detectors.coronet.cin import build_cin
from medad.detectors.coronet.fpae import residual_tensor
from medad.detectors.nets import count_parameters
from medad.detectors.pretrained import PretrainedWeightsError
from medad.registry import DETECTORS
from tests.conftest import tiny_synthetic

pytestmark = pytest.mark.xdist_group("test_coronet")  # its tests share a module fixture: one worker builds it

SEMI_FAST = dict(epochs=0, batch_size=16, anomaly_ae_steps=0, cin_epochs=0, cin_weights="none")  # fit draws the pool only


def test_fpae_has_the_reference_parameter_count_and_shapes():
    model = FPAE()
    assert count_parameters(model) == 53_659  # the authors' FPAE.py (spec §1.2)
    reconstruction, latent = model(torch.rand(2, 1, 32, 32))
    assert reconstruction.shape == (2, 1, 32, 32) and latent.shape == (2, 8, 4, 4)
    assert ((reconstruction >= 0) & (reconstruction <= 1)).all()
    assert model.encode(torch.rand(2, 1, 32, 32)).shape == (2, 8, 4, 4)
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.rand(1, 1, 20, 20))


def test_residual_tensor_follows_eq_5_to_7():
    healthy, anomaly = FPAE().eval(), FPAE().eval()
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        residual = residual_tensor(x, healthy, anomaly)
        rec_h, rec_a = healthy(x)[0], anomaly(x)[0]
    torch.testing.assert_close(residual[:, 0:1], (x - rec_h).abs())
    torch.testing.assert_close(residual[:, 1:2], (x - rec_a).abs())
    torch.testing.assert_close(residual[:, 2:3], (2 * x - rec_h - rec_a).abs())  # the signed sum, not ch0 + ch1


def test_cin_weights_come_from_a_local_file_or_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # an empty cache

    def offline(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(PretrainedWeightsError, match="cin_weights_path"):
        build_cin(2, "imagenet")
    local = resnet18(weights=None)
    path = tmp_path / "resnet18-local.pth"
    torch.save(local.state_dict(), path)
    cin = build_cin(2, "imagenet", str(path))
    torch.testing.assert_close(cin.conv1.weight, local.conv1.weight)
    assert cin.fc.out_features == 2
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(PretrainedWeightsError, match="not a torchvision ResNet-18"):
        build_cin(2, "imagenet", str(tmp_path / "bad.pth"))
    detector = CoroNetSemi(image_size=32, channels=1, cin_weights="imagenet", cin_weights_path=str(path))
    assert detector.weights == "imagenet"
    assert CoroNetSemi(image_size=32, channels=1, cin_weights="none").weights == "none"


def test_modes_are_separate_entries_with_their_supervision():
    assert DETECTORS.get("coronet") is CoroNetAE and DETECTORS.get("coronet-semi") is CoroNetSemi
    assert CoroNetAE.supervision == "unsupervised" and CoroNetAE.needs == ()
    assert CoroNetSemi.supervision == "semi-supervised" and CoroNetSemi.needs == ("anomaly_pool",)


def test_the_labelled_pool_never_shares_an_id_with_the_test_set_and_its_size_is_recorded():
    subset = tiny_synthetic(n_anomaly_pool=8)
    assert not set(subset.anomaly_pool.ids) & set(subset.test.ids)
    assert (subset.anomaly_pool.labels == 1).all()
    detector = CoroNetSemi(image_size=32, channels=1, pool_size=5, **SEMI_FAST)
    pool = detector.draw_pool(subset.anomaly_pool)
    assert len(pool) == 5 and set(pool.ids) <= set(subset.anomaly_pool.ids)
    fit_detector(detector, subset, TrainLog())
    tags = detector_tags(detector)
    assert tags["supervision"] == "semi-supervised" and tags["anomaly_pool_size"] == "5" and tags["mode"] == "semi"
    with pytest.raises(DatasetError, match="pool_size 9"):
        CoroNetSemi(image_size=32, channels=1, pool_size=9, **SEMI_FAST).draw_pool(subset.anomaly_pool)
    with pytest.raises(DatasetError, match="anomaly pool"):
        detector.draw_pool(None)


def test_attribution_map_is_a_deletion_map_of_the_image_size():
    detector = CoroNetSemi(image_size=32, channels=1, mp_iterations=3, score_map_method="perturbation", **SEMI_FAST)
    detector.eval_mode()
    maps = detector.score_map(torch.rand(3, 1, 32, 32))
    assert maps.shape == (3, 32, 32) and ((maps >= 0) & (maps <= 1)).all()
    assert all(p.requires_grad for p in detector.cin.parameters())  # networks are handed back trainable


@pytest.fixture(scope="module")
def obvious64():
    return tiny_synthetic(image_size=64, n_train=120, n_test=60, n_anomaly_pool=20)


# Measured on this fixture (2 threads, torch 2.14.1, this project's CPU): seeds 0 / 1 / 2 give ROC AUC
# 0.942 / 0.937 / 0.948; the last session's machine gave 0.95-0.99 for the same seed (floating-point kernels
# differ by CPU). The bar asks for a clear separation on every seed tried, not for one draw's number.
@pytest.mark.slow
def test_coronet_semi_with_a_pool_of_20_separates_obvious_anomalies(obvious64):
    detector = CoroNetSemi(image_size=64, channels=1, seed=0, epochs=1, lr=1e-3, anomaly_ae_steps=5,
                           cin_epochs=12, cin_lr=1e-3, cin_weights="none", flips=False, pool_size=20)
    fit_detector(detector, obvious64, TrainLog())
    auc = roc_auc_score(obvious64.test.labels, score_in_batches(detector, obvious64.test, 32))
    assert auc >= 0.90, f"coronet-semi ROC AUC {auc:.3f}"
