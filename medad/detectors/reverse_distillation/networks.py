"""Reverse Distillation's trainable networks (Deng and Li, "Anomaly Detection via Reverse Distillation from One-Class
Embedding", CVPR 2022, section 3 and Fig. 3): the one-class bottleneck embedding (OCBE) and the student decoder D.

The frozen teacher E (a ResNet; WideResNet-50-2 in the paper) gives three feature maps f_E^1, f_E^2, f_E^3 (its
layer1, layer2 and layer3 outputs: ``C_1, C_2, C_3`` channels at 1/4, 1/8 and 1/16 of the input side; 256, 512,
1024 for WideResNet-50-2).

**OCBE = MFF + OCE** (section 3.2). Multi-scale feature fusion (MFF) brings f_E^1 and f_E^2 to f_E^3's resolution and
width and concatenates the three: f_E^1 through two 3x3 stride-2 convolutions (``C_1 -> C_2 -> C_3``), f_E^2 through
one (``C_2 -> C_3``), each convolution followed by BatchNorm and ReLU ("a 3x3 convolutional layer with stride 2 ...
followed by batch normalisation and ReLU"), giving ``3 C_3`` channels at 1/16. One-class embedding (OCE) is "the 4th
residual block of ResNet": three bottleneck residual blocks (the teacher's own block design, torchvision's
``Bottleneck``: 1x1, 3x3 (stride), 1x1 convolutions, expansion 4), the first with stride 2 and a 1x1 stride-2
projection shortcut, ``3 C_3 -> 2 C_3`` channels at 1/32 (2048 x 8 x 8 at 256 px). The reference code's bottleneck
also defines a 1x1 convolution ``4 C_3 -> 2 C_3`` (``conv4``/``bn4``) that its forward pass never uses; it is left out.

**Student decoder D** (section 3.1: "symmetric but reversed" to E): three stages that mirror E's layer3, layer2 and
layer1 (3, 4 and 6 blocks, the reference's ``de_wide_resnet50_2``) and output f_D^3, f_D^2, f_D^1 with E's widths and
resolutions. Each stage's first block doubles the resolution: its 3x3 convolution is replaced by a 2x2 stride-2
transposed convolution, and so is its shortcut (a 2x2 stride-2 transposed convolution + BatchNorm); the other blocks
are ordinary bottlenecks. Bottleneck width (the 3x3 layer's channels) = ``planes x width_per_group / 64`` with
``planes = output channels / 4``: WideResNet's 128 per group doubles it (``width_factor`` = 2).

Initialisation as the reference: Kaiming-normal (fan-out, ReLU) for every ``Conv2d``, BatchNorm weight 1 and bias 0,
PyTorch's default for the transposed convolutions.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

EXPANSION = Bottleneck.expansion  # 4: a bottleneck block's output width over its ``planes``
DECODER_BLOCKS = (3, 4, 6)        # de_wide_resnet50_2: blocks of the stages mirroring layer3, layer2, layer1
OCE_BLOCKS = 3                     # "the 4th residual block of ResNet" (layer4 of ResNet-50: 3 blocks)


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """One MFF step: 3x3 convolution, stride 2, no bias; BatchNorm; ReLU."""
    return [nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True)]


def init_like_resnet(module: nn.Module) -> None:
    """The reference's initialisation: Kaiming-normal (fan-out) convolutions, BatchNorm (1, 0); transposed
    convolutions keep PyTorch's default."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


class OneClassBottleneck(nn.Module):
    """OCBE: multi-scale feature fusion of the teacher's three maps, then the one-class embedding (OCE).

    ``channels``: the teacher's (C_1, C_2, C_3); ``width_factor``: the bottleneck blocks' width per group / 64
    (2 for WideResNet-50-2). Input: ``[f_E^1, f_E^2, f_E^3]``; output: ``(N, 2 C_3, H/32, W/32)``.
    """

    def __init__(self, channels: tuple[int, int, int], width_factor: int = 2, blocks: int = OCE_BLOCKS) -> None:
        super().__init__()
        c1, c2, c3 = channels
        if c3 % 2:
            raise ValueError(f"the teacher's third width must be even, got {c3}")
        self.mff_low = nn.Sequential(*conv_bn_relu(c1, c2), *conv_bn_relu(c2, c3))  # f_E^1: 1/4 -> 1/16
        self.mff_mid = nn.Sequential(*conv_bn_relu(c2, c3))                            # f_E^2: 1/8 -> 1/16
        planes, base_width = c3 // 2, 64 * width_factor  # 4 x planes = 2 C_3 out
        shortcut = nn.Sequential(nn.Conv2d(3 * c3, planes * EXPANSION, 1, stride=2, bias=False),
                                 nn.BatchNorm2d(planes * EXPANSION))
        layers = [Bottleneck(3 * c3, planes, stride=2, downsample=shortcut, base_width=base_width)]
        layers += [Bottleneck(planes * EXPANSION, planes, base_width=base_width) for _ in range(1, blocks)]
        self.oce = nn.Sequential(*layers)
        self.out_channels = planes * EXPANSION
        init_like_resnet(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        low, mid, high = features
        return self.oce(torch.cat([self.mff_low(low), self.mff_mid(mid), high], dim=1))


class DecoderBottleneck(nn.Module):
    """A bottleneck residual block run backwards: 1x1, then 3x3 (or, to double the resolution, a 2x2 stride-2
    transposed convolution), then 1x1 to ``planes x 4``; BatchNorm after each, ReLU after the first two and after
    the sum with the shortcut (``upsample``: a transposed convolution + BatchNorm where the shape changes)."""

    def __init__(self, in_channels: int, planes: int, upsample: bool = False, base_width: int = 64) -> None:
        super().__init__()
        width = planes * base_width // 64
        out_channels = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = (nn.ConvTranspose2d(width, width, 2, stride=2, bias=False) if upsample
                      else nn.Conv2d(width, width, 3, padding=1, bias=False))
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.upsample = (nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2, bias=False),
                                       nn.BatchNorm2d(out_channels)) if upsample else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.upsample is None else self.upsample(x)))


class ReverseDecoder(nn.Module):
    """Student D: from the OCBE's ``2 C_3`` channels at 1/32 back to the teacher's three maps, returned in the
    teacher's order ``[f_D^1, f_D^2, f_D^3]`` (``C_1`` at 1/4, ``C_2`` at 1/8, ``C_3`` at 1/16)."""

    def __init__(self, channels: tuple[int, int, int], width_factor: int = 2,
                 blocks: tuple[int, int, int] = DECODER_BLOCKS) -> None:
        super().__init__()
        c1, c2, c3 = channels
        if any(c % EXPANSION for c in channels):
            raise ValueError(f"the teacher's widths must be multiples of {EXPANSION}, got {channels}")
        base_width = 64 * width_factor
        stages, current = [], 2 * c3
        for out_channels, count in zip((c3, c2, c1), blocks):
            planes = out_channels // EXPANSION
            stage = [DecoderBottleneck(current, planes, upsample=True, base_width=base_width)]
            stage += [DecoderBottleneck(out_channels, planes, base_width=base_width) for _ in range(1, count)]
            stages.append(nn.Sequential(*stage))
            current = out_channels
        self.layer1, self.layer2, self.layer3 = stages  # mirror E's layer3, layer2, layer1
        init_like_resnet(self)

    def forward(self, embedding: torch.Tensor) -> list[torch.Tensor]:
        third = self.layer1(embedding)
        second = self.layer2(third)
        first = self.layer3(second)
        return [first, second, third]
