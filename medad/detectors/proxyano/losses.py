"""ProxyAno's losses (Zhou et al., IEEE TMI, Eqs. 7-11).

Stage 1 (Eq. 7): ``L_p = ||Dec_p(G(Enc_p(I))) - P||^2`` with ``P`` the SLIC superpixel image.
Stage 2 (Eqs. 8-11), ``I_hat = F_g(P_hat)``, ``I_hat' = F_g(P')``::

    L_rec    = ||I_hat - I||^2           + lambda_g ADV(I_hat  vs I)
    L_global = ||I_hat' - I||^2          + lambda_g ADV(I_hat' vs I)
    L_local  = ||M . I_hat' - M . I||^2  + lambda_g ADV(M . I_hat' vs M . I)
    L        = L_rec + lambda_global L_global + lambda_local L_local   (0.01, 0.25, 0.5 in the paper)

[R] (spec-proxyano.md Sec. 3): squared errors are means over pixels, the local one over the masked
pixels only; ADV is the GAN loss with one shared discriminator, binary cross-entropy, the generator in
the non-saturating form ``-log D(fake)``; the discriminator's three terms carry the same 1 / 0.25 / 0.5
weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the pixels where ``mask (B, 1, H, W)`` is 1 (all channels)."""
    weight = mask.expand_as(prediction)
    return ((prediction - target).pow(2) * weight).sum() / weight.sum().clamp_min(1.0)


def _bce(logits: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


def stage2_generator_loss(discriminator: nn.Module, images: torch.Tensor, recon: torch.Tensor, repaired: torch.Tensor,
                          mask: torch.Tensor, lambda_g: float = 0.01, lambda_global: float = 0.25,
                          lambda_local: float = 0.5) -> dict[str, torch.Tensor]:
    """Eq. 11 for the IRM: ``recon = F_g(P_hat)``, ``repaired = F_g(P')``; one discriminator pass over the three fakes."""
    batch = len(images)
    logits = discriminator(torch.cat([recon, repaired, mask * repaired]))
    adv_rec, adv_global, adv_local = (_bce(part, real=True) for part in logits.split(batch))
    rec = F.mse_loss(recon, images) + lambda_g * adv_rec
    global_term = F.mse_loss(repaired, images) + lambda_g * adv_global
    local_term = masked_mse(repaired, images, mask) + lambda_g * adv_local
    total = rec + lambda_global * global_term + lambda_local * local_term
    return {"loss": total, "rec": rec, "global": global_term, "local": local_term}


def stage2_discriminator_loss(discriminator: nn.Module, images: torch.Tensor, recon: torch.Tensor,
                              repaired: torch.Tensor, mask: torch.Tensor, lambda_global: float = 0.25,
                              lambda_local: float = 0.5) -> torch.Tensor:
    """The discriminator's side of the three ADV terms (real ``I`` and ``M . I`` vs the detached fakes)."""
    batch = len(images)
    logits = discriminator(torch.cat([images, mask * images, recon.detach(), repaired.detach(),
                                      (mask * repaired).detach()]))
    real, real_masked, fake_rec, fake_global, fake_local = logits.split(batch)
    real_loss = _bce(real, True)
    return (real_loss + _bce(fake_rec, False)
            + lambda_global * (real_loss + _bce(fake_global, False))
            + lambda_local * (_bce(real_masked, True) + _bce(fake_local, False)))
