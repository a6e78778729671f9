"""Shared network building blocks.

The DCGAN encoder/decoder pair (Radford et al., 2016) as the GANomaly reference code builds it
(Akcay et al., ACCV 2018, samet-akcay/ganomaly ``networks.py``): 4x4 stride-2 convolutions that halve
the side down to 4x4, then a 4x4 valid convolution to a ``latent``-dimensional 1x1 code; the decoder
mirrors it with transposed convolutions. Used by ``ae`` and by the GAN detectors.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def check_dcgan_size(image_size: int) -> int:
    """The number of stride-2 blocks for ``image_size``; ValueError unless it is a power of two >= 16."""
    return _check_power_of_two(image_size)


def _check_power_of_two(image_size: int) -> int:
    depth = int(math.log2(image_size))
    if image_size < 16 or 2 ** depth != image_size:
        raise ValueError(f"DCGAN blocks need image_size a power of two >= 16, got {image_size}")
    return depth


class DCGANEncoder(nn.Module):
    """Image ``(N, C, S, S)`` -> code ``(N, latent, 1, 1)``.

    Layer 1: conv 4x4/2 ``channels -> width`` + LeakyReLU(0.2) (no BatchNorm); then conv 4x4/2 doubling the
    width + BatchNorm + LeakyReLU until the side is 4; then conv 4x4/1 (valid) to ``latent``. ``features``
    is everything before the last conv (GANomaly's discriminator features f(x)).
    """

    def __init__(self, image_size: int, channels: int, latent: int, width: int = 64,
                 batch_norm: bool = True) -> None:
        super().__init__()
        depth = _check_power_of_two(image_size)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for _ in range(depth - 3):  # side: S/2 -> 4
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False)]
            layers += [nn.BatchNorm2d(width * 2)] if batch_norm else []
            layers += [nn.LeakyReLU(0.2, inplace=True)]
            width *= 2
        self.features = nn.Sequential(*layers)
        self.feature_channels = width
        self.head = nn.Conv2d(width, latent, 4, 1, 0, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class DCGANDecoder(nn.Module):
    """Code ``(N, latent, 1, 1)`` -> image ``(N, C, S, S)``; the mirror of :class:`DCGANEncoder`.

    ``output`` is the final activation: ``"tanh"`` (images in [-1, 1], the GAN convention) or
    ``"sigmoid"`` (images in [0, 1]). ``hidden`` is the activation of the inner blocks: ``"relu"``
    (DCGAN/GANomaly) or ``"leaky_relu"`` (slope 0.2; e.g. SURE-ROI, Wang 2022 §4.2.1).
    """

    def __init__(self, image_size: int, channels: int, latent: int, width: int = 64, output: str = "tanh",
                 hidden: str = "relu") -> None:
        super().__init__()
        depth = _check_power_of_two(image_size)
        top = width * 2 ** (depth - 3)
        hiddens = {"relu": lambda: nn.ReLU(inplace=True), "leaky_relu": lambda: nn.LeakyReLU(0.2, inplace=True)}
        if hidden not in hiddens:
            raise ValueError(f"hidden must be one of {sorted(hiddens)}, got {hidden!r}")
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent, top, 4, 1, 0, bias=False), nn.BatchNorm2d(top), hiddens[hidden]()]
        for _ in range(depth - 3):  # side: 4 -> S/2
            layers += [nn.ConvTranspose2d(top, top // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(top // 2), hiddens[hidden]()]
            top //= 2
        layers += [nn.ConvTranspose2d(top, channels, 4, 2, 1, bias=False)]
        activations = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
        if output not in activations:
            raise ValueError(f"output must be one of {sorted(activations)}, got {output!r}")
        layers.append(activations[output]())
        self.net = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)


def dcgan_init(module: nn.Module) -> None:
    """DCGAN weight init: conv weights ~ N(0, 0.02), BatchNorm weights ~ N(1, 0.02), biases 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class DCGANDiscriminator(nn.Module):
    """DCGAN/GANomaly discriminator: :class:`DCGANEncoder` features f(x), then a 4x4 valid conv to one logit.

    ``features`` gives f(x) (GANomaly's feature-matching target), ``logit`` the logit of "real" from features
    (for a loss: ``binary_cross_entropy_with_logits``, which autocast runs in float32, equals BCE on the
    sigmoid), ``classify`` its sigmoid probability, ``forward`` features then probability.
    """

    def __init__(self, image_size: int, channels: int, width: int = 64) -> None:
        super().__init__()
        self.body = DCGANEncoder(image_size, channels, 1, width)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body.features(images)

    def logit(self, features: torch.Tensor) -> torch.Tensor:
        return self.body.head(features).flatten()

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(images))
