"""Reverse Distillation's loss and anomaly map (Deng and Li, CVPR 2022, section 3.3, eq. 1-3).

Per scale k (the teacher's layer1..layer3), the cosine distance between teacher and student feature vectors at each
position (eq. 1)::

    M^k(h, w) = 1 - <f_E^k(h, w), f_D^k(h, w)> / (||f_E^k(h, w)|| ||f_D^k(h, w)||)

The loss (eq. 2) sums over the three scales the mean of M^k over positions (and over the batch):
``L = sum_k 1/(H_k W_k) sum_{h,w} M^k(h, w)`` (``form="per_position"``). The authors' code, which produced the
paper's numbers (and which anomalib and BMAD run), computes instead one cosine distance per image and scale between
the whole flattened maps, ``L = sum_k mean_n [1 - cos(vec f_E^k, vec f_D^k)]`` (``form="flattened"``): it weighs
positions by their feature norms and is what the detector trains with by default.

The anomaly map (eq. 3): each M^k upsampled to the image size (bilinear, corners aligned as the reference code) and
summed over k (``combine="sum"``, the paper's "accumulation" and the code's evaluation mode) or multiplied
(``"product"``, the code's other mode, BMAD's configs' choice).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

LOSS_FORMS = ("flattened", "per_position")
MAP_COMBINATIONS = ("sum", "product")


def distance_maps(teacher: list[torch.Tensor], student: list[torch.Tensor]) -> list[torch.Tensor]:
    """``M^k = 1 - cos`` over the channels at each position, per scale: ``(N, C_k, H_k, W_k) -> (N, H_k, W_k)``."""
    return [1 - F.cosine_similarity(t, s, dim=1) for t, s in zip(teacher, student, strict=True)]


def distillation_loss(teacher: list[torch.Tensor], student: list[torch.Tensor],
                      form: Literal[LOSS_FORMS] = "flattened") -> torch.Tensor:
    """The training loss summed over the scales, averaged over the batch (module docstring): a scalar."""
    if form == "per_position":
        return sum(maps.mean() for maps in distance_maps(teacher, student))
    if form != "flattened":
        raise ValueError(f"loss form must be one of {', '.join(LOSS_FORMS)}, got {form!r}")
    return sum((1 - F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)).mean()
               for t, s in zip(teacher, student, strict=True))


def anomaly_map(teacher: list[torch.Tensor], student: list[torch.Tensor], size: int,
                combine: Literal[MAP_COMBINATIONS] = "sum") -> torch.Tensor:
    """Eq. 3 before smoothing: the scales' distance maps upsampled to ``size`` x ``size`` and summed (or
    multiplied): ``(N, size, size)``."""
    if combine not in MAP_COMBINATIONS:
        raise ValueError(f"map combination must be one of {', '.join(MAP_COMBINATIONS)}, got {combine!r}")
    upsampled = [F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=True)[:, 0]
                 for maps in distance_maps(teacher, student)]
    result = upsampled[0]
    for maps in upsampled[1:]:
        result = result + maps if combine == "sum" else result * maps
    return result
