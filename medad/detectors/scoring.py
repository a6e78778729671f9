"""Shared ways of turning pixel anomaly maps into image scores, and of scoring a set of images in batches."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from medad.datasets.base import ImageSet


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


def scores_in_random_order(score: Callable[[torch.Tensor], torch.Tensor], images: ImageSet, batch_size: int,
                           generator: torch.Generator) -> torch.Tensor:
    """``score`` of every image of ``images``, computed on batches of a random permutation drawn from
    ``generator`` and returned in the images' own order: ``(N,)``.

    A detector whose scores depend on their batch (GANomaly's reference protocol normalises each batch by its
    own BatchNorm statistics, as its reference code's test loader does with shuffled batches) would otherwise
    score single-class batches wherever a dataset lists its images class by class. For a detector that
    scores every image on its own, the order changes nothing.
    """
    order = torch.randperm(len(images), generator=generator)
    parts = [score(images.float_images(order[start:start + batch_size])).detach().reshape(-1).cpu()
             for start in range(0, len(images), batch_size)]
    shuffled = torch.cat(parts) if parts else torch.zeros(0)
    if shuffled.shape[0] != len(images):
        raise ValueError(f"{shuffled.shape[0]} scores for {len(images)} images")
    scores = torch.empty_like(shuffled)
    scores[order] = shuffled
    return scores
