"""ProxyAno's Pseudo Abnormal Proxy Constructor, PAPC (Zhou et al., IEEE TMI, Sec. III-C, Fig. 4).

A patch of random size is cropped from a normal image and pasted onto the normal proxy at a random
position; the mask ``M`` records the pasted area (Eq. 10). Training only.

[R] (spec-proxyano.md Sec. 3): one axis-aligned rectangle per sample, every sample, every step; height
and width drawn independently from ``U[min_fraction, max_fraction] x side`` (16-80 px at 256 px =
0.0625-0.3125); the source is another image of the batch (the batch rolled by one); crop and paste
positions are drawn independently, both fully inside the image.
"""

from __future__ import annotations

import torch


def paste_random_patches(proxies: torch.Tensor, sources: torch.Tensor, generator: torch.Generator,
                         min_fraction: float = 0.0625, max_fraction: float = 0.3125) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P', M)``: ``proxies (B, C, H, W)`` with one rectangle of ``sources`` pasted each; ``M (B, 1, H, W)`` in {0, 1}."""
    if not 0.0 < min_fraction <= max_fraction <= 1.0:
        raise ValueError(f"need 0 < min_fraction <= max_fraction <= 1, got {min_fraction}, {max_fraction}")
    if proxies.shape != sources.shape:
        raise ValueError(f"proxies and sources differ in shape: {tuple(proxies.shape)} vs {tuple(sources.shape)}")
    batch, _, height, width = proxies.shape
    pasted = proxies.clone()
    mask = torch.zeros(batch, 1, height, width, dtype=proxies.dtype, device=proxies.device)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    for i in range(batch):
        h = draw(max(1, round(min_fraction * height)), max(1, round(max_fraction * height)))
        w = draw(max(1, round(min_fraction * width)), max(1, round(max_fraction * width)))
        sy, sx = draw(0, height - h), draw(0, width - w)
        py, px = draw(0, height - h), draw(0, width - w)
        pasted[i, :, py:py + h, px:px + w] = sources[i, :, sy:sy + h, sx:sx + w]
        mask[i, :, py:py + h, px:px + w] = 1.0
    return pasted, mask
