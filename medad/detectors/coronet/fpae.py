"""The feature-pyramid autoencoder (FPAE) of CoroNet (Khobahi, Agarwal & Soltanalian 2020, §III-A).

The paper gives only "a feature-pyramid autoencoder with a 7-layer convolutional encoder and a
7-layer decoder"; the layers below follow the authors' released ``FPAE.py`` (spec §1.2): all 3x3
convolutions with bias, a stem of three conv-ReLU-BN blocks, one stride-2 convolution applied three
times to build a 4-level pyramid, one conv tower (weights *and* BatchNorm layers shared by all four
scales, A12), bilinear x2 upsampling step by step back to full size, three smoothing convolutions, and
a transposed-convolution decoder with additive skips from the encoder's pre-activations and a global
input skip before the sigmoid. 53,659 parameters. The latent used by the consistency regulariser
(eq. 4) is the coarsest pyramid branch (8 x H/8 x W/8). H and W must be multiples of 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medad.detectors.blocks.deterministic import interpolate_bilinear


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1)


def _upsample_to(features: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear x2 steps (align_corners=False) until the side is ``size``, as the reference code does (A11)."""
    while features.shape[-1] < size:
        features = interpolate_bilinear(features, scale_factor=2)
    return features


class FPAE(nn.Module):
    """Feature-pyramid autoencoder: ``(N, 1, H, W)`` in [0, 1] -> reconstruction in [0, 1] and latent."""

    STEM = (1, 8, 16, 32)
    TOWER = (32, 24, 16, 12, 8)
    DECODER = (8, 12, 16, 24, 32, 16, 8)

    def __init__(self) -> None:
        super().__init__()
        self.input_norm = nn.BatchNorm2d(1)
        self.stem = nn.ModuleList(_conv(a, b) for a, b in zip(self.STEM, self.STEM[1:]))
        self.stem_norms = nn.ModuleList(nn.BatchNorm2d(c) for c in self.STEM[1:])
        self.down = _conv(32, 32, stride=2)
        self.tower = nn.ModuleList(_conv(a, b) for a, b in zip(self.TOWER, self.TOWER[1:]))
        self.tower_norms = nn.ModuleList(nn.BatchNorm2d(c) for c in self.TOWER[1:])
        self.smooth = nn.Sequential(_conv(32, 16), _conv(16, 8), _conv(8, 8))
        self.decoder = nn.ModuleList(nn.ConvTranspose2d(a, b, 3, 1, 1) for a, b in zip(self.DECODER, self.DECODER[1:]))
        self.output = nn.ConvTranspose2d(8, 1, 3, 1, 1)

    @staticmethod
    def _blocks(x: torch.Tensor, convs: nn.ModuleList, norms: nn.ModuleList) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """conv -> (keep pre-activation) -> ReLU -> BN for each block."""
        skips = []
        for conv, norm in zip(convs, norms):
            x = conv(x)
            skips.append(x)
            x = norm(F.relu(x))
        return x, skips

    def _pyramid(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if images.shape[-1] % 8 or images.shape[-2] % 8:
            raise ValueError(f"FPAE needs H and W divisible by 8, got {tuple(images.shape[-2:])}")
        level, skips = self._blocks(self.input_norm(images), self.stem, self.stem_norms)
        levels = [level]
        for _ in range(3):
            levels.append(self.down(levels[-1]))
        return levels, skips

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The latent z: the tower's output on the coarsest pyramid level (what eq. 4 compares)."""
        levels, _ = self._pyramid(images)
        return self._blocks(levels[-1], self.tower, self.tower_norms)[0]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction in [0, 1], latent z)."""
        levels, skips = self._pyramid(images)
        branch0, tower_skips = self._blocks(levels[0], self.tower, self.tower_norms)
        branches = [branch0] + [self._blocks(level, self.tower, self.tower_norms)[0] for level in levels[1:]]
        size = images.shape[-1]
        fused = self.smooth(torch.cat([branch0] + [_upsample_to(b, size) for b in branches[1:]], dim=1))
        # additive skips, deepest first: r6, r5, r4 (tower on the full-res level), then r3, r2, r1 (stem)
        skip_order = tower_skips[:3][::-1] + skips[::-1]
        x = fused
        for deconv, skip in zip(self.decoder, skip_order):
            x = F.relu(deconv(x) + skip)
        return torch.sigmoid(self.output(x) + images), branches[-1]


def fpae_loss(model: FPAE, images: torch.Tensor, lambda_latent: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. (3)-(4): ``MSE(F(x), x) + λ·MSE(E(x), E(F(x)))`` with the second pass not detached (reference code).

    Returns (total, reconstruction term, latent term).
    """
    reconstruction, latent = model(images)
    rec = (reconstruction - images).pow(2).mean()
    lat = (latent - model.encode(reconstruction)).pow(2).mean()
    return rec + lambda_latent * lat, rec, lat


def residual_tensor(images: torch.Tensor, healthy: FPAE, anomaly: FPAE) -> torch.Tensor:
    """Eq. (5)-(7): ``[|X−F_H(X)|, |X−F_A(X)|, |2X−F_H(X)−F_A(X)|]`` stacked to ``(N, 3, H, W)``."""
    rec_h, _ = healthy(images)
    rec_a, _ = anomaly(images)
    return torch.cat([(images - rec_h).abs(), (images - rec_a).abs(), (2 * images - rec_h - rec_a).abs()], dim=1)
