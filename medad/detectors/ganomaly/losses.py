"""GANomaly losses (Akcay et al., ACCV 2018, eq. 1-4; the study's section IV.B.2), mean-reduced as in
the reference code, and its anomaly score."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def generator_losses(images: torch.Tensor, fake: torch.Tensor, latent: torch.Tensor, latent_fake: torch.Tensor,
                     real_features: torch.Tensor, fake_features: torch.Tensor) -> dict[str, torch.Tensor]:
    """L_adv = mean (f(x) − f(x̂))² (feature matching), L_con = mean |x − x̂|, L_enc = mean (z − ẑ)²."""
    return {
        "adversarial": (fake_features - real_features.detach()).pow(2).mean(),
        "contextual": (fake - images).abs().mean(),
        "encoder": (latent_fake - latent).pow(2).mean(),
    }


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = ½ [BCE(D(x), 1) + BCE(D(x̂), 0)]."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return 0.5 * (real + fake)


def latent_score(latent: torch.Tensor, latent_fake: torch.Tensor) -> torch.Tensor:
    """The anomaly score: mean over the latent dimensions of (z − ẑ)², per image ``(N,)``."""
    return (latent - latent_fake).pow(2).mean(dim=1)
