"""PatchCore's image score (Roth et al., CVPR 2022, Sec. 3.3, Eqs. 6-7).

For the patch features ``P(x)`` of a test image and the memory bank ``M``::

    m_test,*, m* = argmax_{m_test in P(x)} argmin_{m in M} ||m_test - m||_2          (6)
    s* = ||m_test,* - m*||_2
    s  = (1 - exp||m_test,* - m*||_2 / sum_{m in N_b(m*)} exp||m_test,* - m||_2) * s*  (7)

``m_test,*`` is the test patch farthest from the bank, ``m*`` its nearest bank feature and ``N_b(m*)`` the ``b``
bank features nearest ``m*``. The weight grows when ``m*`` sits in a sparse part of the bank (its neighbours are
far from the test patch too), and shrinks where ``m*`` is one of many close normal features.

Choices where the paper is silent: ``N_b(m*)`` is searched in the whole bank and so holds ``m*`` itself (its own
nearest neighbour, distance 0) and its ``b - 1`` nearest others, as anomalib computes it; ``b = 1`` would make the
weight 0 for every image, so ``b = 1`` means no re-weighting: ``s = s*`` (anomalib's special case as well). The ratio
is computed as ``exp(s* - logsumexp(d))`` (the same value, without overflow for large distances).
"""

from __future__ import annotations

import torch

from medad.detectors.patchcore.search import k_nearest


def reweighted_scores(patch_distances: torch.Tensor, nearest_rows: torch.Tensor, patches: torch.Tensor,
                      bank: torch.Tensor, neighbours: int) -> torch.Tensor:
    """Eq. 7 per image. ``patch_distances (B, P)``: each test patch's distance to its nearest bank row
    ``nearest_rows (B, P)``; ``patches (B, P, D)`` the test patch features; ``bank (K, D)``; ``neighbours`` = b."""
    images = torch.arange(patch_distances.shape[0], device=patch_distances.device)
    farthest = patch_distances.argmax(dim=1)                      # m_test,* per image
    s_star = patch_distances[images, farthest]                     # s*
    if neighbours <= 1:
        return s_star
    m_test = patches[images, farthest].float()                     # (B, D)
    m_star = bank[nearest_rows[images, farthest]].float()          # (B, D)
    support = k_nearest(m_star, bank, neighbours)                  # N_b(m*): (B, b), m* itself first
    distances = (m_test[:, None] - bank[support].float()).pow(2).sum(dim=-1).sqrt()  # (B, b)
    weight = 1 - torch.exp(s_star - torch.logsumexp(distances, dim=1))
    return weight * s_star
