"""ProxyAno's networks (Zhou et al., IEEE TMI, Sec. III, Fig. 2): PEM ``F_p = Dec_p o G o Enc_p`` and IRM ``F_g = Dec_g o Enc_g``.

The paper's architecture figure (Fig. 5) is not in the text; the encoder/decoder follow the spec's
recommendation [R] (spec-proxyano.md Sec. 2): U-Net-style double-conv stages *without* skip connections
(a skip would let information bypass the memory), ``depth`` max-pool downsamplings, a 1x1 conv to the
``d = 64``-channel code, and the mirror with bilinear upsampling and a sigmoid output. Widths at
``base_width = 32``: encoder 32, 64, 128, 256, 256; decoder 256 -> 128, 64, 32, 32. Both modules
share the design (two weight sets). At 256 px the code is ``64 x 16 x 16``.
"""

from __future__ import annotations

import torch
from torch import nn

from medad.detectors.blocks.conv import DoubleConv
from medad.detectors.blocks.deterministic import interpolate_bilinear
from medad.detectors.blocks.memory import NearestNeighbourMemory


def encoder_widths(base_width: int, depth: int) -> list[int]:
    """Stage widths: ``base * (1, 2, 4, 8, 8, ...)`` capped at ``8 * base`` (32, 64, 128, 256, 256 at base 32)."""
    return [base_width * min(2 ** stage, 8) for stage in range(depth + 1)]


class ProxyEncoder(nn.Module):
    """``(B, C, S, S) -> (B, code_dim, S / 2^depth, S / 2^depth)``: DC, then ``depth`` x (maxpool + DC), then 1x1 conv."""

    def __init__(self, channels: int, base_width: int = 32, depth: int = 4, code_dim: int = 64) -> None:
        super().__init__()
        widths = encoder_widths(base_width, depth)
        stages: list[nn.Module] = [DoubleConv(channels, widths[0])]
        for previous, current in zip(widths, widths[1:]):
            stages += [nn.MaxPool2d(2), DoubleConv(previous, current)]
        self.features = nn.Sequential(*stages)
        self.code = nn.Conv2d(widths[-1], code_dim, 1)  # no activation: the memory compares raw codes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.code(self.features(images))


class ProxyDecoder(nn.Module):
    """The mirror of :class:`ProxyEncoder`: 1x1 conv + BN + ReLU, ``depth`` x (bilinear x2 + DC), 1x1 conv, sigmoid."""

    def __init__(self, channels: int, base_width: int = 32, depth: int = 4, code_dim: int = 64) -> None:
        super().__init__()
        widths = encoder_widths(base_width, depth)
        top = widths[-1]
        self.lift = nn.Sequential(nn.Conv2d(code_dim, top, 1, bias=False), nn.BatchNorm2d(top), nn.ReLU(inplace=True))
        outs = [max(base_width, top // 2 ** (i + 1)) for i in range(depth)]  # 128, 64, 32, 32 at base 32
        self.stages = nn.ModuleList(DoubleConv(a, b) for a, b in zip([top] + outs[:-1], outs))
        self.head = nn.Conv2d(outs[-1], channels, 1)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        h = self.lift(code)
        for stage in self.stages:
            h = stage(interpolate_bilinear(h, scale_factor=2))
        return torch.sigmoid(self.head(h))


class ProxyExtractionModule(nn.Module):
    """PEM (Eqs. 1-3): ``P_hat = Dec_p(G(Enc_p(I)))`` with ``G`` the nearest-item memory (k items of dimension d)."""

    def __init__(self, channels: int, base_width: int = 32, depth: int = 4, code_dim: int = 64,
                 mem_items: int = 128, mem_decay: float = 0.99) -> None:
        super().__init__()
        self.encoder = ProxyEncoder(channels, base_width, depth, code_dim)
        self.memory = NearestNeighbourMemory(mem_items, code_dim, mem_decay)
        self.decoder = ProxyDecoder(channels, base_width, depth, code_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(P_hat, z = Enc_p(I) before the memory, item index per code position)``."""
        z = self.encoder(images)
        quantised, index = self.memory(z)
        return self.decoder(quantised), z, index


class ImageReconstructionModule(nn.Module):
    """IRM: ``I_hat = Dec_g(Enc_g(P))`` (no memory)."""

    def __init__(self, channels: int, base_width: int = 32, depth: int = 4, code_dim: int = 64) -> None:
        super().__init__()
        self.encoder = ProxyEncoder(channels, base_width, depth, code_dim)
        self.decoder = ProxyDecoder(channels, base_width, depth, code_dim)

    def forward(self, proxy: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(proxy))
