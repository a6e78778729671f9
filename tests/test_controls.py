"""The control detectors (``intensity``, ``histogram``, ``mean-image``): listed and described as controls, near 1 where
anomalies differ only in brightness, at chance where brightness is matched, clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medad.cli import main
from medad.datasets.base import ImageSet
from medad.detectors.base import NoPixelMap, TrainLog, score_map_or_none
from medad.detectors.controls import ConstantImagesError
from medad.detectors.controls.histogram import histogram_distances, histograms
from medad.detectors.controls.intensity import otsu_level
from medad.evaluation.metrics import roc_auc
from medad.registry import DETECTORS
from tests import dataset_layouts as layouts

CONTROLS = ("intensity", "histogram", "mean-image")
STRUCTURE_BLIND = ("intensity", "histogram")


def textures(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    """``n`` smooth random textures in [0, 1] around mid-grey, each with its own slight gain: (n, size, size)."""
    coarse = torch.from_numpy(rng.normal(0.0, 1.0, (n, 1, size // 4, size // 4)))
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    gain = rng.uniform(0.97, 1.03, (n, 1, 1))
    return np.clip((0.45 + 0.08 * smooth.numpy()) * gain, 0.0, 1.0)


def image_set(pixels: np.ndarray, labels: np.ndarray, prefix: str) -> ImageSet:
    images = torch.from_numpy(np.round(pixels * 255).astype(np.uint8))[:, None]
    return ImageSet(images, labels, [f"{prefix}{i}" for i in range(len(pixels))])


def shuffled_block(image: np.ndarray, rng: np.random.Generator, side: int = 12) -> np.ndarray:
    """``image`` with the pixels of one square block permuted: a structural anomaly with the very same grey levels."""
    out = image.copy()
    top, left = rng.integers(0, image.shape[0] - side, 2)
    block = out[top:top + side, left:left + side].ravel()
    out[top:top + side, left:left + side] = rng.permutation(block).reshape(side, side)
    return out


def fitted(name: str, train: ImageSet, **params):
    detector = DETECTORS.get(name)(image_size=train.image_size, channels=1, **params)
    detector.fit(train.without_labels(), None, TrainLog())
    return detector


@pytest.fixture(scope="module")
def normals():
    rng = np.random.default_rng(0)
    return image_set(textures(rng, 80), np.zeros(80), "train-"), textures(rng, 60)


def test_medad_list_marks_the_controls_and_describe_says_what_intensity_measures(capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    for name in CONTROLS:
        line = next(line for line in listing if line.split()[:1] == [name])
        assert line.split()[1] == "CONTROL" and "CONTROL" in line.split("needs:")[1]
    assert not any(line.split()[1:2] == ["CONTROL"] for line in listing if line.split()[:1] == ["ae"])
    assert "never ranked" in "\n".join(listing)
    assert main(["describe", "intensity"]) == 0
    text = capsys.readouterr().out
    assert "role: CONTROL" in text and "what it measures:" in text
    for words in ("the mean, the standard deviation, the 5th, 25th, 50th, 75th", "fraction of pixels above the background",
                  "regularised Mahalanobis distance", "brighter and darker than normal both score high"):
        assert words in " ".join(text.split()), words
    assert "shrinkage: float in (0, 1] = 0.1" in text


@pytest.mark.parametrize("name", CONTROLS)
def test_anomalies_that_differ_only_in_brightness_either_way_score_near_one(normals, name):
    train, test_normals = normals
    rng = np.random.default_rng(1)
    brighter, darker = textures(rng, 30) + 0.12, textures(rng, 30) - 0.12   # no direction assumed: both count
    pixels = np.clip(np.concatenate([test_normals, brighter, darker]), 0, 1)
    labels = np.r_[np.zeros(60), np.ones(60)]
    test = image_set(pixels, labels, "test-")
    scores = fitted(name, train).score(test.float_images()).numpy()
    assert roc_auc(labels, scores) > 0.97


@pytest.mark.parametrize("name", STRUCTURE_BLIND)
def test_anomalies_whose_grey_levels_are_the_normals_own_score_at_chance(normals, name):
    # each anomaly is a test normal with one block's pixels shuffled: a visible structural change whose grey levels
    # (and so every statistic and histogram) are exactly the normal's: a structure-blind control cannot tell them apart
    train, test_normals = normals
    rng = np.random.default_rng(2)
    anomalies = np.stack([shuffled_block(image, rng) for image in test_normals])
    labels = np.r_[np.zeros(60), np.ones(60)]
    test = image_set(np.concatenate([test_normals, anomalies]), labels, "test-")
    scores = fitted(name, train).score(test.float_images()).numpy()
    np.testing.assert_allclose(scores[60:], scores[:60], rtol=1e-6)
    assert roc_auc(labels, scores) == pytest.approx(0.5)


def test_mean_image_sees_where_a_pixel_is_and_maps_it(normals):
    train, test_normals = normals
    test = image_set(test_normals[:4], np.zeros(4), "t-")
    control = fitted("mean-image", train)
    images = test.float_images()
    images[1, :, 4:10, 4:10] = 1.0   # a bright square at one place
    maps = control.score_map(images)
    assert maps.shape == (4, 32, 32)
    assert float(maps[1, 4:10, 4:10].mean()) > 10 * float(maps[0].mean())
    assert int(maps[1].flatten().argmax()) // 32 in range(4, 10)
    assert control.score(images)[1] > control.score(images)[[0, 2, 3]].max()


def test_histogram_distances_are_hellinger_and_wasserstein_as_defined():
    p, q = torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 0.5, 0.5, 0.0]], dtype=torch.float64)
    # Hellinger: sqrt(1 - sum sqrt(p q)) = sqrt(1 - 0.5); W1: half the mass moves two bins of width 1/4
    assert float(histogram_distances(p, q, "hellinger")) == pytest.approx(np.sqrt(0.5))
    assert float(histogram_distances(p, q, "wasserstein")) == pytest.approx(0.5 * 2 / 4)
    image = torch.tensor([[[0.0, 0.3], [0.6, 1.0]]], dtype=torch.float64)
    assert histograms(image, 4).tolist() == [[0.25, 0.25, 0.25, 0.25]]


def test_otsu_splits_a_two_level_histogram_between_its_levels():
    histogram = np.zeros(256)
    histogram[20], histogram[200] = 700, 300
    assert 20 / 256 < otsu_level(histogram) <= 200 / 256


@pytest.mark.parametrize("name", CONTROLS)
def test_constant_training_images_are_refused_with_a_clear_error(name):
    levels = np.repeat(np.array([0.2, 0.4, 0.6, 0.8])[:, None, None], 16, axis=1).repeat(16, axis=2)
    train = image_set(levels, np.zeros(4), "flat-")
    with pytest.raises(ConstantImagesError, match=r"all 4 training images are constant .* levels found, of 255: "
                                                  r"51, 102, 153, 204\).*no variance to fit"):
        fitted(name, train)


@pytest.mark.parametrize("name", STRUCTURE_BLIND)
def test_a_whole_image_control_asked_for_pixel_maps_says_it_has_none(normals, name):
    train, _ = normals
    control = fitted(name, train)
    images = train.float_images()[:2]
    with pytest.raises(NoPixelMap, match=f"control '{name}' scores whole-image grey-level statistics.*has no pixel map"
                                         ".*'mean-image' control has one"):
        control.score_map(images)
    assert score_map_or_none(control, images) is None   # how the harness asks: no map, no pixel metrics


def test_a_run_on_a_dataset_of_constant_images_records_the_error_and_goes_on(tmp_path):
    root = tmp_path / "data" / "folder"
    for i in range(12):
        layouts.save(root / "normal" / f"n{i}.png", np.full((16, 16), 40 + i, np.uint8))
    for i in range(6):
        layouts.save(root / "abnormal" / f"a{i}.png", np.full((16, 16), 200, np.uint8))
    config = tmp_path / "c.yaml"
    config.write_text(f"name: flat\nimage_size: 16\ndevice: cpu\n"
                      f"datasets: [{{name: folder, root: '{root}', params: {{dedupe: false}}}}]\n"
                      "detectors: [{name: intensity}, {name: histogram}]\n")
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "flat", "--quiet",
                 "--reports", str(tmp_path / "rep")]) == 1
    jobs = pd.read_csv(tmp_path / "flat" / "jobs.csv")
    assert list(jobs["status"]) == ["failed", "failed"]
    assert jobs["error"].str.contains("ConstantImagesError: control '(?:intensity|histogram)': all \\d+ training images "
                                      "are constant").all()
