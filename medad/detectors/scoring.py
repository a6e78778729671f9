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
