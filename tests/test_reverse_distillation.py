"""Reverse Distillation (Deng and Li, CVPR 2022): the networks' shapes at the paper's widths, the loss and the anomaly
map against independent NumPy/SciPy computations of eq. 1-3, and the detector on tiny backbones."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from medad.benchmark.job_runner import detector_tags, execute, fit_detector
from medad.benchmark.jobs import Job
from medad.detectors.base import TrainLog
from medad.detectors.reverse_distillation import ReverseDistillationDetector
from medad.detectors.reverse_distillation.losses import anomaly_map, distance_maps, distillation_loss
from medad.detectors.reverse_distillation.networks import OneClassBottleneck, ReverseDecoder
from medad.testing import smoke_subset
from tests import dataset_layouts as layouts

WIDE = (256, 512, 1024)  # WideResNet-50-2's layer1..layer3 widths
SMOKE = ReverseDistillationDetector.smoke_params


@pytest.fixture(scope="module")
def tiny_rd_fit():
    """One smoke fit (64 px, widths / 16, random teacher) on 32 normals, shared by the detector's tests."""
    subset = smoke_subset(image_size=64)
    subset = dataclasses.replace(subset, train=subset.train.subset(np.arange(32)))
    detector, log = ReverseDistillationDetector(image_size=64, channels=1, **SMOKE), TrainLog()
    fit_detector(detector, subset, log)
    return detector, subset, log


def features(seed: int, channels=(8, 16, 32), sides=(8, 4, 2), batch: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, s, s, generator=generator, dtype=torch.float64) for c, s in zip(channels, sides)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def independent_distance_maps(teacher, student) -> list[np.ndarray]:
    """Eq. 1 position by position with NumPy: 1 - cos(f_E(h, w), f_D(h, w))."""
    maps = []
    for t, s in zip(teacher, student):
        t, s = t.numpy(), s.numpy()
        n, _, h, w = t.shape
        maps.append(np.array([[[1 - cosine(t[i, :, y, x], s[i, :, y, x]) for x in range(w)] for y in range(h)]
                              for i in range(n)]))
    return maps


def test_the_bottleneck_and_decoder_at_the_papers_widths_give_back_the_teachers_shapes():
    """WideResNet-50-2 at 256 px: f_E = 256 x 64², 512 x 32², 1024 x 16²; OCBE -> 2048 x 8²; D mirrors E (shapes on
    the meta device: no memory, no arithmetic)."""
    with torch.device("meta"):
        teacher = [torch.empty(1, c, s, s) for c, s in zip(WIDE, (64, 32, 16))]
        bottleneck, decoder = OneClassBottleneck(WIDE, width_factor=2), ReverseDecoder(WIDE, width_factor=2)
        embedding = bottleneck(teacher)
        student = decoder(embedding)
    assert embedding.shape == (1, 2048, 8, 8)
    assert [tuple(f.shape) for f in student] == [tuple(f.shape) for f in teacher]
    # OCE = three bottleneck blocks of width 512 x 2; the decoder's stages hold 3, 4 and 6 blocks, each first one
    # upsampling with a 2x2 stride-2 transposed convolution (in its body and its shortcut)
    assert len(bottleneck.oce) == 3 and bottleneck.oce[0].conv2.out_channels == 1024
    assert [len(stage) for stage in (decoder.layer1, decoder.layer2, decoder.layer3)] == [3, 4, 6]
    for stage in (decoder.layer1, decoder.layer2, decoder.layer3):
        assert isinstance(stage[0].conv2, torch.nn.ConvTranspose2d) and stage[0].conv2.stride == (2, 2)
        assert isinstance(stage[0].upsample[0], torch.nn.ConvTranspose2d)
        assert all(block.upsample is None and block.conv2.kernel_size == (3, 3) for block in stage[1:])


def test_the_distance_maps_are_one_minus_the_cosine_at_each_position():
    teacher, student = features(0), features(1)
    for ours, theirs in zip(distance_maps(teacher, student), independent_distance_maps(teacher, student)):
        np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-10, atol=1e-12)


def test_the_loss_sums_over_the_three_scales_as_the_paper_and_as_its_code():
    teacher, student = features(2), features(3)
    # eq. 2: sum over scales of the mean over positions (and over the batch)
    paper = sum(m.mean() for m in independent_distance_maps(teacher, student))
    # the authors' code: one cosine per image and scale between the flattened maps, averaged over the batch
    code = sum(np.mean([1 - cosine(t[i].numpy().ravel(), s[i].numpy().ravel()) for i in range(len(t))])
               for t, s in zip(teacher, student))
    assert float(distillation_loss(teacher, student, "per_position")) == pytest.approx(paper, rel=1e-10)
    assert float(distillation_loss(teacher, student, "flattened")) == pytest.approx(code, rel=1e-10)
    assert abs(paper - code) > 1e-3  # the two forms differ here, so each check tells them apart
    assert float(distillation_loss(teacher, teacher, "flattened")) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="loss form must be one of flattened, per_position"):
        distillation_loss(teacher, student, "mse")


def test_the_anomaly_map_upsamples_each_scale_bilinearly_and_sums_or_multiplies_them():
    teacher, student = features(4), features(5)
    size = 16
    # bilinear with the corners aligned = SciPy's linear zoom on the sample grid (grid_mode=False)
    upsampled = [np.stack([ndimage.zoom(m, size / m.shape[-1], order=1, grid_mode=False) for m in maps])
                 for maps in independent_distance_maps(teacher, student)]
    np.testing.assert_allclose(anomaly_map(teacher, student, size, "sum").numpy(), sum(upsampled), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(anomaly_map(teacher, student, size, "product").numpy(),
                               upsampled[0] * upsampled[1] * upsampled[2], rtol=1e-9, atol=1e-12)


# --- the detector on tiny randomly initialised networks ------------------------------------------------------------
def test_the_teacher_is_frozen_and_only_the_bottleneck_and_decoder_learn(tiny_rd_fit):
    detector, subset, log = tiny_rd_fit
    assert not any(p.requires_grad for p in detector.teacher.parameters())
    unfitted = ReverseDistillationDetector(image_size=64, channels=1, **SMOKE)  # the same seed: the same initial weights
    for name, value in detector.teacher.state_dict().items():  # BatchNorm's running statistics too
        assert torch.equal(value, unfitted.teacher.state_dict()[name]), name
    assert not torch.equal(detector.decoder.layer3[0].conv1.weight, unfitted.decoder.layer3[0].conv1.weight)
    assert not torch.equal(detector.bottleneck.mff_low[0].weight, unfitted.bottleneck.mff_low[0].weight)
    losses = [value for _, _, name, value in log.rows if name == "loss"]
    assert len(losses) == SMOKE["epochs"] * math.ceil(len(subset.train) / SMOKE["batch_size"])
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses  # the student learns to restore the teacher


def test_the_teacher_cache_changes_nothing_but_the_speed(tiny_rd_fit):
    _, subset, _ = tiny_rd_fit
    train = subset.train.subset(np.arange(16)).without_labels()
    images = subset.test.float_images()[:6]
    scores = []
    for cache_mb in (1024.0, 0.0):
        detector = ReverseDistillationDetector(image_size=64, channels=1, **{**SMOKE, "epochs": 1, "teacher_cache_mb": cache_mb})
        detector.fit(train, None, TrainLog())
        scores.append(detector.score(images))
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-4, atol=1e-5)


def test_maps_are_at_the_image_size_and_the_score_is_their_maximum(tiny_rd_fit):
    detector, subset, _ = tiny_rd_fit
    images = subset.test.float_images()[:4]
    maps = detector.score_map(images)
    assert maps.shape == (4, 64, 64)
    torch.testing.assert_close(detector.score(images), maps.flatten(1).amax(dim=1))


def test_sizes_weights_and_the_papers_settings_are_checked_and_named():
    with pytest.raises(ValueError, match="image_size divisible by 32 .* at least 64, got 48"):
        ReverseDistillationDetector(image_size=48, channels=1, **SMOKE)
    with pytest.raises(ValueError, match="image_size divisible by 32"):
        ReverseDistillationDetector.check_input(96 + 16, 1, {})
    files = ReverseDistillationDetector.pretrained_files({})
    assert [path.name for path, _ in files] == ["wide_resnet50_2-95faca4d.pth"]
    assert ReverseDistillationDetector.pretrained_files({"weights": "random"}) == []
    small = ReverseDistillationDetector(image_size=64, channels=1, **SMOKE)
    assert small.weights == "random"
    assert detector_tags(small, SMOKE)["deviations"] == ("epochs 4 (paper: 200); map_sigma 1 (paper: 4); width_divisor 16 "
                                                         "(paper: 1); image_size 64 (paper: 256)")


def test_a_run_on_br35h_files_gives_image_and_pixel_metric_rows(tmp_path, monkeypatch):
    """Br35H in its publisher's layout with the Mask-RCNN outlines: image metrics and the pixel metrics of the map."""
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    layouts.br35h(tmp_path / "br35h" / "Br35H", mask_rcnn=True)
    job = Job(dataset="br35h", subset="default", detector="reverse-distillation", detector_name="reverse-distillation",
              seed=0, image_size=64, channels=1, device="cpu", score_batch_size=8, save_checkpoints=False,
              dataset_root=str(tmp_path / "br35h"), detector_params={**SMOKE, "epochs": 1})
    _, tables, _ = execute(job, "r")
    metrics = tables["metrics"]
    values = metrics.set_index("metric")["value"]
    for metric in ("roc_auc", "pr_auc", "pixel_roc_auc", "pixel_pr_auc", "aupro", "dice"):
        assert np.isfinite(values[metric]).all(), metric
    assert set(metrics["weights"]) == {"random"} and metrics["deviations"].str.contains("image_size 64").all()
