"""GANomaly networks (Akcay et al., ACCV 2018) as the official code builds them (samet-akcay/ganomaly
``networks.py``; spec-reference-impls.md section 4.1), from the shared DCGAN blocks of
:mod:`medad.detectors.nets` (bias-free 4x4 convolutions, BatchNorm from the second layer, DCGAN init).
"""

from __future__ import annotations

import torch
from torch import nn

from medad.detectors.nets import DCGANDecoder, DCGANEncoder, dcgan_init


class GanomalyGenerator(nn.Module):
    """Encoder-decoder-encoder G: ``z = G_E(x)``, ``x̂ = G_D(z)`` (tanh), ``ẑ = E(x̂)``; ≈38 M weights at 128 px."""

    def __init__(self, image_size: int, channels: int, latent: int = 100, width: int = 64) -> None:
        super().__init__()
        self.encoder1 = DCGANEncoder(image_size, channels, latent, width)
        self.decoder = DCGANDecoder(image_size, channels, latent, width, output="tanh")
        self.encoder2 = DCGANEncoder(image_size, channels, latent, width)
        dcgan_init(self)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x̂, z, ẑ) with z and ẑ of shape ``(N, latent)``."""
        latent = self.encoder1(images)
        fake = self.decoder(latent)
        return fake, latent.flatten(1), self.encoder2(fake).flatten(1)


class GanomalyDiscriminator(nn.Module):
    """D: the DCGAN encoder built with one output; ``features`` (1024x4x4 at 128 px) is f(·) of the
    feature-matching loss; the head gives one logit per image (the reference applies a sigmoid and
    BCE; we keep the logit and use the numerically stable BCE-with-logits, the same loss). ≈11 M weights."""

    def __init__(self, image_size: int, channels: int, width: int = 64) -> None:
        super().__init__()
        self.body = DCGANEncoder(image_size, channels, 1, width)
        dcgan_init(self)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits ``(N,)``, features)."""
        features = self.body.features(images)
        return self.body.head(features).flatten(), features

    def reinitialise(self) -> None:
        """The reference re-initialises D's weights when its loss collapses below 1e-5."""
        dcgan_init(self)
