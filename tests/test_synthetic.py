"""The synthetic default: deterministic, fair (no brightness shortcut), with masks and ROI."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from medad.datasets.synthetic import SyntheticHeadCT

pytestmark = pytest.mark.xdist_group("test_synthetic")  # its tests share a module fixture: one worker builds it


@pytest.fixture(scope="module")
def obvious():
    return SyntheticHeadCT(image_size=64, n_train=40, n_val=10, n_test=200).load("obvious")


@pytest.fixture(scope="module", params=["obvious", "subtle"])
def each_subset(request):
    return SyntheticHeadCT(image_size=64, n_train=40, n_val=10, n_test=200).load(request.param)


def test_same_seed_same_images_and_other_seed_other_images():
    first = SyntheticHeadCT(image_size=32, n_train=5, n_val=2, n_test=6).load("obvious")
    again = SyntheticHeadCT(image_size=32, n_train=5, n_val=2, n_test=6).load("obvious")
    other = SyntheticHeadCT(image_size=32, n_train=5, n_val=2, n_test=6, split_seed=1).load("obvious")
    assert torch.equal(first.test.images, again.test.images) and torch.equal(first.train.images, again.train.images)
    assert first.test.ids == again.test.ids
    assert not torch.equal(first.train.images, other.train.images)


def test_an_image_does_not_depend_on_the_set_size():
    small = SyntheticHeadCT(image_size=32, n_train=3, n_val=1, n_test=4).load("subtle")
    large = SyntheticHeadCT(image_size=32, n_train=9, n_val=1, n_test=4).load("subtle")
    assert torch.equal(small.train.images, large.train.images[:3])


def test_parts_sizes_labels_and_disjoint_ids(obvious):
    assert len(obvious.train) == 40 and len(obvious.val) == 10 and len(obvious.test) == 200
    assert (obvious.train.labels == 0).all() and obvious.test.labels.sum() == 100
    ids = obvious.train.ids + obvious.val.ids + obvious.test.ids + obvious.anomaly_pool.ids
    assert len(set(ids)) == len(ids)
    assert (obvious.anomaly_pool.labels == 1).all()


def test_masks_mark_lesions_inside_the_head(obvious):
    masks = obvious.test.masks.numpy().astype(bool)
    anomalous = obvious.test.labels == 1
    assert masks[~anomalous].sum() == 0
    assert all(mask.any() for mask in masks[anomalous])
    roi = obvious.test.roi_masks.numpy().astype(bool)
    assert (masks & ~roi).sum() == 0


def test_fair_test_brightness_and_noise_do_not_give_anomalies_away(each_subset):
    images = each_subset.test.float_images()
    labels = each_subset.test.labels
    assert roc_auc_score(labels, images.mean(dim=(1, 2, 3)).numpy()) < 0.65
    assert roc_auc_score(labels, -images.mean(dim=(1, 2, 3)).numpy()) < 0.65
    high_pass = images - torch.nn.functional.avg_pool2d(images, 3, 1, 1)
    assert abs(roc_auc_score(labels, high_pass.std(dim=(1, 2, 3)).numpy()) - 0.5) < 0.15


def test_subtle_lesions_are_smaller_and_fainter():
    dataset = SyntheticHeadCT(image_size=64, n_train=1, n_val=0, n_test=40)
    obvious, subtle = dataset.load("obvious"), dataset.load("subtle")
    area = lambda s: s.test.masks[s.test.labels == 1].float().sum(dim=(1, 2)).mean()
    assert area(subtle) < area(obvious) / 2
    subtle_spec, obvious_spec = dataset.lesion_spec("subtle"), dataset.lesion_spec("obvious")
    assert sum(subtle_spec.contrast) < sum(obvious_spec.contrast) and subtle_spec.radius[1] < obvious_spec.radius[1]
    assert subtle_spec.count[1] <= obvious_spec.count[0]                   # one lesion, where obvious has one or two


def test_lesion_parameters_can_be_overridden_and_are_validated():
    dataset = SyntheticHeadCT(image_size=32, lesion_radius=[0.2, 0.25], lesion_count=[3, 3])
    assert dataset.lesion_spec("subtle").radius == (0.2, 0.25) and dataset.lesion_spec("subtle").count == (3, 3)
    with pytest.raises(ValueError, match="lesion_radius"):
        SyntheticHeadCT(image_size=32, lesion_radius=[0.3, 0.1])


def test_three_channels_replicate_the_gray_image():
    subset = SyntheticHeadCT(image_size=32, channels=3, n_train=2, n_val=0, n_test=2).load("obvious")
    images = subset.train.images
    assert images.shape == (2, 3, 32, 32) and torch.equal(images[:, 0], images[:, 2])


def test_unknown_subset_is_a_clear_error():
    with pytest.raises(Exception, match="has no subset 'nope'; its subsets: obvious, subtle"):
        SyntheticHeadCT(image_size=32).load("nope")


def test_phantoms_are_drawn_once_per_machine_through_the_decode_cache(tmp_path, monkeypatch):
    from medad.datasets import synthetic

    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDAD_NO_CACHE", raising=False)
    drawn = []
    render = synthetic.PhantomRenderer.render
    monkeypatch.setattr(synthetic.PhantomRenderer, "render", lambda self, rng, lesions: drawn.append(1) or
                        render(self, rng, lesions))
    first = SyntheticHeadCT(image_size=32, n_train=6, n_val=2, n_test=4, n_anomaly_pool=2).load("subtle")
    assert len(drawn) == 14
    again = SyntheticHeadCT(image_size=32, n_train=6, n_val=2, n_test=4, n_anomaly_pool=2, channels=3).load("subtle")
    assert len(drawn) == 14                                   # read back, not drawn again (any channel count)
    assert torch.equal(again.test.images[:, :1], first.test.images) and again.test.ids == first.test.ids
    assert torch.equal(again.train.roi_masks, first.train.roi_masks) and torch.equal(again.test.masks, first.test.masks)
    SyntheticHeadCT(image_size=32, n_train=6, n_val=2, n_test=4, n_anomaly_pool=2,
                    lesion_contrast=[0.2, 0.3]).load("subtle")
    assert len(drawn) == 14 + 4                               # other lesions: the anomalous parts are drawn anew
    monkeypatch.setenv("MEDAD_NO_CACHE", "1")
    uncached = SyntheticHeadCT(image_size=32, n_train=6, n_val=2, n_test=4, n_anomaly_pool=2).load("subtle")
    assert torch.equal(uncached.train.images, first.train.images)
    monkeypatch.delenv("MEDAD_NO_CACHE")
    monkeypatch.setattr(synthetic, "RENDERER_VERSION", synthetic.RENDERER_VERSION + 1)
    count = len(drawn)
    SyntheticHeadCT(image_size=32, n_train=6, n_val=2, n_test=4, n_anomaly_pool=2).load("subtle")
    assert len(drawn) == count + 14                           # a new drawing replaces the cached phantoms
    assert len(list((tmp_path / "cache" / "synthetic" / "subtle-train").glob("*.npz"))) == 1
