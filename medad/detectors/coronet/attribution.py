"""Meaningful-perturbation attribution maps (Fong & Vedaldi, ICCV 2017), as CoroNet uses them (§IV-C).

A coarse mask ``m`` in [0, 1] (CoroNet: 28x28 at 224 px, i.e. side/8) is upsampled to the image; the
perturbed image keeps the input where m = 1 and blurs it where m = 0. The mask is optimised to lower
the probability of the target class while deleting little and staying smooth::

    min_m  p_c(m·x + (1−m)·blur(x)) + λ1·mean|1 − m| + λ2·mean(|∇m|^β)

The deleted area ``1 − m`` is the evidence. The paper states none of the optimisation details; the
defaults (mask init 1, Adam lr 0.1, λ1 = 0.01, λ2 = 0.2, β = 3, Gaussian blur σ = 5 px at 224 px scaled
with the side) follow common re-implementations (spec §4, A17).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medad.detectors.blocks.deterministic import interpolate_bilinear
from medad.detectors.scoring import gaussian_blur


def total_variation(mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean ``|∇m|^β`` over both directions, per image ``(N,)``."""
    dx = (mask[..., :, 1:] - mask[..., :, :-1]).abs().pow(beta).flatten(1).mean(dim=1)
    dy = (mask[..., 1:, :] - mask[..., :-1, :]).abs().pow(beta).flatten(1).mean(dim=1)
    return dx + dy


def meaningful_perturbation(class_probability: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, *,
                            iterations: int = 300, lr: float = 0.1, l1: float = 0.01, tv: float = 0.2,
                            beta: float = 3.0, mask_stride: int = 8, blur_sigma: float | None = None) -> torch.Tensor:
    """Deletion maps ``(N, H, W)`` in [0, 1] (1 = deleting this region lowers the class probability most).

    ``class_probability`` maps images ``(N, C, H, W)`` to the target class's probability ``(N,)``; it must
    treat images independently (eval-mode networks), so optimising a batch equals optimising one image at a time.
    """
    n, channels, height, width = images.shape
    sigma = blur_sigma if blur_sigma is not None else 5.0 * width / 224.0
    blurred = gaussian_blur(images.reshape(n * channels, height, width), sigma).reshape(images.shape)
    mask = torch.ones(n, 1, max(1, height // mask_stride), max(1, width // mask_stride), device=images.device,
                      requires_grad=True)
    optimizer = torch.optim.Adam([mask], lr=lr)
    for _ in range(iterations):
        upsampled = interpolate_bilinear(mask, size=(height, width))
        perturbed = upsampled * images + (1.0 - upsampled) * blurred
        loss = class_probability(perturbed) + l1 * (1.0 - mask).abs().flatten(1).mean(dim=1) + tv * total_variation(mask, beta)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()
        optimizer.step()
        with torch.no_grad():
            mask.clamp_(0.0, 1.0)
    with torch.no_grad():
        upsampled = interpolate_bilinear(mask, size=(height, width))
    return (1.0 - upsampled[:, 0]).detach()
