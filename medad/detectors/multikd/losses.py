"""Multi-KD losses (Salehi et al., CVPR 2021, eq. 1-3; the study's section IV.B.3) as the reference code
computes them: per critical point k, the direction term 1 − cos(vec a_s^k, vec a_c^k) per sample and the
value term mean (a_s^k − a_c^k)² per sample; ``total = Σ_k direction_k + λ·Σ_k value_k``.

NB: the reference weights the *value* (MSE) term by λ (``lamda`` = 0.01) and the direction term by 1,
and sums 1 − cos over the CPs (the study writes L_dir = 1 − Σ cos); we follow the code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_terms(cloner_points: list[torch.Tensor], source_points: list[torch.Tensor],
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (Σ_k value_k, Σ_k direction_k) over the given CPs, each ``(N,)``."""
    value = direction = 0
    for cloned, target in zip(cloner_points, source_points):
        cloned, target = cloned.flatten(1), target.flatten(1)
        value = value + (cloned - target).pow(2).mean(dim=1)
        direction = direction + 1 - F.cosine_similarity(cloned, target, dim=1)
    return value, direction
