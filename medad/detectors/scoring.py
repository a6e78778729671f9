"""Shared ways of turning pixel anomaly maps into image scores."""

from __future__ import annotations

import math

import torch


def top_fraction_mean(error_map: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of the largest ``fraction`` of each map's pixels: ``(N, H, W) -> (N,)``.

    ``fraction = 1`` is the plain mean. Per image only, so a score never depends on the batch.
    """
    flat = error_map.flatten(1)
    k = max(1, math.ceil(fraction * flat.shape[1]))
    if k == flat.shape[1]:
        return flat.mean(dim=1)
    return flat.topk(k, dim=1).values.mean(dim=1)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth ``(N, H, W)`` maps with a Gaussian of ``sigma`` pixels (reflect padding); ``sigma <= 0``: unchanged.

    Reconstruction errors of a lesion are spatially coherent while those of a slightly misplaced
    edge are thin lines; smoothing before pooling favours the former.
    """
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = maps[:, None]
    x = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, 1, -1))
    x = torch.nn.functional.pad(x, (0, 0, radius, radius), mode="reflect")
    x = torch.nn.functional.conv2d(x, kernel.view(1, 1, -1, 1))
    return x[:, 0]
