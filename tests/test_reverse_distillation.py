"""Reverse Distillation (Deng and Li, CVPR 2022): the networks' shapes at the paper's widths, the loss and the anomaly
map against independent NumPy/SciPy computations of eq. 1-3, and the detector on tiny backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from medad.detectors.reverse_distillation.losses import anomaly_map, distance_maps, distillation_loss
from medad.detectors.reverse_distillation.networks import OneClassBottleneck, ReverseDecoder

WIDE = (256, 512, 1024)  # WideResNet-50-2's layer1..layer3 widths


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
