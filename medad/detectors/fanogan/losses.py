"""f-AnoGAN losses: WGAN-GP (Gulrajani et al., 2017) for stage 1 and izi_f (Schlegl et al., MedIA 2019,
eq. 7-8; the study's L_enc = L_izi + k·L_adv-fm, section IV.B.1) for stage 2 and the score."""

from __future__ import annotations

import torch
from torch import nn


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """mean over samples of (||∇_x̃ D(x̃)||₂ − 1)², x̃ = α·real + (1 − α)·fake.

    As the reference code: α is drawn per (sample, channel) (shape N×C×1×1, a quirk of PyTorch-GAN) and
    the gradient norm runs over all pixels of a sample. ``create_graph`` so the penalty trains D.
    """
    alpha = torch.rand(*real.shape[:2], 1, 1, generator=generator).to(real.device, non_blocking=True)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return (grad.flatten(1).norm(2, dim=1) - 1).pow(2).mean()


def izif_terms(images: torch.Tensor, reconstruction: torch.Tensor, image_features: torch.Tensor,
               reconstruction_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (image residual, feature residual): mean (x − G(E(x)))² over pixels and
    mean (f(x) − f(G(E(x))))² over the critic features; ``(N,)`` each."""
    image_term = (reconstruction - images).pow(2).flatten(1).mean(dim=1)
    feature_term = (reconstruction_features - image_features).pow(2).mean(dim=1)
    return image_term, feature_term
