"""Convolution stacks shared by detectors: the U-Net double convolution and a PatchGAN discriminator."""

from __future__ import annotations

import torch
from torch import nn


class DoubleConv(nn.Module):
    """``[conv 3x3 -> BatchNorm -> ReLU] x 2`` (the U-Net block, Ronneberger et al. 2015)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al., CVPR 2017): a map of real/fake logits, one per patch.

    conv 4x4/2: ``C -> w -> 2w -> 4w``, conv 4x4/1 ``-> 8w``, conv 4x4/1 ``-> 1``; LeakyReLU(0.2),
    BatchNorm after every conv but the first and the last. Returns logits (apply BCE-with-logits).
    """

    def __init__(self, channels: int, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        current = width
        for out, stride in ((2 * width, 2), (4 * width, 2), (8 * width, 1)):
            layers += [nn.Conv2d(current, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, inplace=True)]
            current = out
        layers.append(nn.Conv2d(current, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
