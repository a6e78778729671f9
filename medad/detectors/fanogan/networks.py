"""f-AnoGAN networks as the study's f-AnoGAN code builds them (A03ki/f-AnoGAN, the DCGAN-like model
derived from eriklindernoren/PyTorch-GAN; spec-reference-impls.md section 3.1).

No custom weight init (PyTorch defaults). The reference passes 0.8 as the second positional argument
of ``BatchNorm2d``, which is ``eps`` (not momentum): kept, since it changes the normalisation.
"""

from __future__ import annotations

import torch
from torch import nn

QUIRK_BN_EPS = 0.8  # BatchNorm2d(c, 0.8) in the reference: eps = 0.8


class Generator(nn.Module):
    """z ``(N, latent)`` -> image ``(N, C, S, S)`` in [-1, 1].

    Linear latent -> width·(S/4)² (+bias), reshape, BatchNorm(width), then two nearest x2 upsamplings,
    each followed by conv 3x3 + BatchNorm(eps 0.8) + LeakyReLU(0.2) (width -> width -> width/2), then
    conv 3x3 -> C and tanh. Only the Linear grows with the image size (about 13.2 M weights at 128 px).
    """

    def __init__(self, image_size: int, channels: int, latent: int = 100, width: int = 128) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"f-AnoGAN's generator needs image_size divisible by 4, got {image_size}")
        self.width, self.side = width, image_size // 4
        self.project = nn.Linear(latent, width * self.side ** 2)
        self.net = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, 1, 1), nn.BatchNorm2d(width, QUIRK_BN_EPS), nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width // 2, 3, 1, 1), nn.BatchNorm2d(width // 2, QUIRK_BN_EPS), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 2, channels, 3, 1, 1), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.project(z).view(len(z), self.width, self.side, self.side))


def critic_blocks(channels: int, width: int = 16) -> nn.Sequential:
    """Four blocks conv 3x3/2 -> LeakyReLU(0.2) -> Dropout2d(0.25) [-> BatchNorm(eps 0.8) from block 2]:
    ``channels -> width -> 2w -> 4w -> 8w``, the side divided by 16."""
    layers: list[nn.Module] = []
    widths = [channels, width, width * 2, width * 4, width * 8]
    for block, (c_in, c_out) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Conv2d(c_in, c_out, 3, 2, 1), nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(0.25)]
        if block > 0:
            layers.append(nn.BatchNorm2d(c_out, QUIRK_BN_EPS))
    return nn.Sequential(*layers)


def _feature_size(image_size: int, width: int) -> int:
    if image_size % 16:
        raise ValueError(f"f-AnoGAN's critic/encoder need image_size divisible by 16, got {image_size}")
    return width * 8 * (image_size // 16) ** 2


class Critic(nn.Module):
    """WGAN critic D: :func:`critic_blocks` -> flatten (8192 features at 128 px) -> Linear -> 1 (no activation).

    :meth:`features` is f(·), the flattened block output used by the izi_f loss and the score.
    """

    def __init__(self, image_size: int, channels: int, width: int = 16) -> None:
        super().__init__()
        self.blocks = critic_blocks(channels, width)
        self.head = nn.Linear(_feature_size(image_size, width), 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.blocks(images).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class Encoder(nn.Module):
    """E: the critic's four blocks (own weights) -> flatten -> Linear -> latent -> tanh (bounded code)."""

    def __init__(self, image_size: int, channels: int, latent: int = 100, width: int = 16) -> None:
        super().__init__()
        self.blocks = critic_blocks(channels, width)
        self.head = nn.Sequential(nn.Linear(_feature_size(image_size, width), latent), nn.Tanh())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(images).flatten(1))
