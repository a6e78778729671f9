"""PatchCore's locally aware patch features (Roth et al., CVPR 2022, Sec. 3.1, Eqs. 1-2).

For a feature map ``phi_j`` of the pretrained network (hierarchy level ``j``: WideResNet-50-2's ``layer2`` and
``layer3``), the feature of position ``(h, w)`` aggregates its neighbourhood of patch size ``p``::

    N_p^(h,w) = {(a, b) | a in [h - floor(p/2), ..., h + floor(p/2)], b in [w - floor(p/2), ..., w + floor(p/2)]}
    phi_j(N_p^(h,w)) = f_agg({phi_j(a, b) | (a, b) in N_p^(h,w)})

with ``f_agg`` adaptive average pooling, p = 3: every channel averaged over the 3 x 3 neighbourhood (stride 1, zero
padding, the padded zeros counted in the average at the border, as the authors' and anomalib's code do). The deeper
map is brought to the resolution of the shallowest one by bilinear interpolation (``align_corners=False``), the maps
are concatenated along the channels, and the concatenation is reduced to the target dimension ``d`` (1024) by
adaptive average pooling along the channel axis: output channel ``i`` of ``d`` is the mean of input channels
``floor(i C / d)`` to ``ceil((i + 1) C / d) - 1`` (the paper: "adaptive average pooling ... to dimensionality d").
``target_dim`` 0 keeps all ``C`` concatenated channels (anomalib's PatchCore does not reduce: 1536 for layer2 +
layer3). The memory bank and the test image both go through this same function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def aggregate_neighbourhood(features: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Each channel of ``features (N, C, h, w)`` averaged over the ``patch_size`` x ``patch_size`` neighbourhood of
    every position (zero padding counted): the same shape back."""
    if patch_size == 1:
        return features
    return F.avg_pool2d(features, patch_size, stride=1, padding=patch_size // 2, count_include_pad=True)


def pool_channels(features: torch.Tensor, target_dim: int) -> torch.Tensor:
    """``(N, C, h, w) -> (N, target_dim, h, w)``: adaptive average pooling along the channel axis (0 or C: as it is)."""
    channels = features.shape[1]
    if target_dim in (0, channels):
        return features
    return F.adaptive_avg_pool3d(features[:, None], (target_dim, *features.shape[-2:]))[:, 0]


def patch_embedding(features: dict[str, torch.Tensor], patch_size: int, target_dim: int) -> torch.Tensor:
    """The patch features ``(N, D, h, w)`` of the backbone's ``{layer: map}`` (shallowest layer first): each map
    aggregated over its neighbourhoods, brought to the first map's resolution, concatenated, channel-pooled; float32."""
    maps = [aggregate_neighbourhood(value.float(), patch_size) for value in features.values()]
    size = maps[0].shape[-2:]
    maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps]
    return pool_channels(torch.cat(maps, dim=1), target_dim)
