"""Input conventions of the study's reference code (Esmaeili et al., IEEE Access 2023, section IV.C).

All three reference repositories load images through torchvision's ``ImageFolder`` (PIL -> RGB), so
a grayscale scan reaches their networks as three identical channels; the two GAN repositories then
normalise with mean 0.5 / std 0.5 (values in [-1, 1], matching their tanh generators), while
Multi-KD feeds plain [0, 1]. The harness hands detectors ``(N, C, H, W)`` floats in [0, 1] with
``C`` = 1 or 3; these helpers convert to and from what the networks expect.
"""

from __future__ import annotations

import torch

INPUT_RANGES = ("symmetric", "unit")  # [-1, 1] (the GAN repos' Normalize(0.5, 0.5)) or [0, 1] (the paper's wording)


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` or raise a ValueError naming ``key`` and the allowed values."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}; got {value!r}")
    return value


def network_channels_for(harness_channels: int, network_channels: int, key: str = "network_channels") -> int:
    """Check that images with ``harness_channels`` can feed a network of ``network_channels`` (1 -> 3 replicates)."""
    if network_channels not in (1, 3):
        raise ValueError(f"{key} must be 1 or 3, got {network_channels}")
    if harness_channels not in (1, network_channels):
        raise ValueError(f"{key}={network_channels} cannot take {harness_channels}-channel images")
    return network_channels


def to_network(images: torch.Tensor, channels: int, input_range: str) -> torch.Tensor:
    """[0, 1] images -> the network's input: grayscale replicated to ``channels``, scaled to ``input_range``."""
    if images.shape[1] != channels:
        images = images.expand(-1, channels, -1, -1)
    return images * 2.0 - 1.0 if input_range == "symmetric" else images.contiguous()


def from_network(images: torch.Tensor, channels: int, input_range: str) -> torch.Tensor:
    """Network output -> [0, 1] images with the harness's ``channels`` (replicated channels averaged back)."""
    if input_range == "symmetric":
        images = (images + 1.0) / 2.0
    if images.shape[1] != channels:
        images = images.mean(dim=1, keepdim=True)
    return images.clamp(0.0, 1.0)


def random_horizontal_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2 (torchvision's RandomHorizontalFlip), seeded."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    if not flip.any():
        return images
    flip = flip.to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
