"""MAMA Net's multi-scale global spatial attention block (Chen et al., IEEE TMI 2021, Sec. III-B, Eqs. 1-4).

One block, three modes: ``same`` (SA, keeps the size), ``down`` (DA, halves it), ``up`` (UA, doubles
it). Two sub-layers in sequence:

(A) pixel-patch attention (Eqs. 1-2): ``PQ, PK, PV = Conv1x1(x)`` with ``C'`` channels; the weight at
    (i, j) is ``<Patch_Q(i,j), Patch_K(i,j)> / pS^2`` over the ``pS x pS`` patches centred there, and
    ``Out_P = PV * g(weight)``.
(B) resampling cross-attention (Eqs. 3-4, the paper's "channel attention"): ``CQ = G(Out_P)`` with
    ``G`` a 3x3 conv (SA), a 3x3 stride-2 conv (DA) or a 3x3 stride-2 transposed conv (UA);
    ``CK, CV = Conv1x1(Out_P)``; ``Output = CV . Softmax(CK^T CQ)``: every output position is a
    softmax-weighted mix of all input positions.

Recommendations followed (spec-mamanet.md, each a constructor argument) [R]: ``C' = C''`` unless
``mid_channels`` gives ``C'`` (the paper does not give it);
``patch_size = 3``; ``patch_gate = "sigmoid"`` (``"identity"`` is the literal Eq. 2); softmax over the
key axis with ``attn_scale = "sqrt"`` (1/sqrt(C''); ``"none"`` is the literal Eq. 4);
``residual_query = True`` adds ``CQ`` to the attention output (non-local-block style; ``False`` is the
literal Eq. 4, which the spec's prototype saw collapse to flat images); BatchNorm + ReLU after the
block unless ``output = "sigmoid"`` / ``"none"``; ``kv_pool_side`` (spec Sec. 10.16, a cost option, 0 =
off = the paper): keys and values are average-pooled to at most ``kv_pool_side x kv_pool_side`` tokens
before Eq. 4, which bounds the ``HqWq x HW`` attention matrix (on CPU the global one dominates the cost).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medad.detectors.blocks.deterministic import adaptive_avg_pool2d

MODES = ("same", "down", "up")


class MultiScaleAttention(nn.Module):
    """SA / DA / UA block: ``(B, C, H, W) -> (B, C'', Hq, Wq)``; for UA pass ``output_size``."""

    def __init__(self, in_channels: int, out_channels: int, mode: str = "same", *, patch_size: int = 3,
                 patch_gate: str = "sigmoid", attn_scale: str = "sqrt", residual_query: bool = True,
                 output: str = "bn_relu", kv_pool_side: int = 0, mid_channels: int | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if patch_gate not in ("sigmoid", "identity"):
            raise ValueError(f"patch_gate must be 'sigmoid' or 'identity', got {patch_gate!r}")
        if attn_scale not in ("sqrt", "none"):
            raise ValueError(f"attn_scale must be 'sqrt' or 'none', got {attn_scale!r}")
        if output not in ("bn_relu", "sigmoid", "none"):
            raise ValueError(f"output must be 'bn_relu', 'sigmoid' or 'none', got {output!r}")
        if patch_size < 1 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd and >= 1, got {patch_size}")
        if kv_pool_side < 0:
            raise ValueError(f"kv_pool_side must be >= 0 (0 = no pooling), got {kv_pool_side}")
        mid = mid_channels or out_channels  # C' = C'' [R] unless given
        self.kv_pool_side = kv_pool_side
        self.mode, self.patch_size, self.patch_gate = mode, patch_size, patch_gate
        self.residual_query, self.output = residual_query, output
        self.scale = None if attn_scale == "sqrt" else 1.0
        self.patch_qkv = nn.Conv2d(in_channels, 3 * mid, 1)  # PQ, PK, PV: three 1x1 convs in one
        if mode == "same":
            self.query = nn.Conv2d(mid, out_channels, 3, 1, 1)
        elif mode == "down":
            self.query = nn.Conv2d(mid, out_channels, 3, 2, 1)
        else:
            self.query = nn.ConvTranspose2d(mid, out_channels, 3, 2, 1)
        self.channel_kv = nn.Conv2d(mid, 2 * out_channels, 1)  # CK, CV
        self.norm = nn.BatchNorm2d(out_channels) if output == "bn_relu" else None

    def pixel_patch_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 2: ``PV`` gated by the mean over the pS x pS patch of ``<PQ, PK>`` (zero padding)."""
        pq, pk, pv = self.patch_qkv(x).chunk(3, dim=1)
        weight = F.avg_pool2d((pq * pk).sum(1, keepdim=True), self.patch_size, stride=1,
                              padding=self.patch_size // 2, count_include_pad=True)
        if self.patch_gate == "sigmoid":
            weight = torch.sigmoid(weight)
        return pv * weight

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | None = None) -> torch.Tensor:
        out_p = self.pixel_patch_attention(x)
        if self.mode == "up":
            size = output_size or (2 * x.shape[-2], 2 * x.shape[-1])
            cq = self.query(out_p, output_size=list(size))
        else:
            cq = self.query(out_p)
        ck, cv = self.channel_kv(out_p).chunk(2, dim=1)
        if self.kv_pool_side and max(ck.shape[-2:]) > self.kv_pool_side:
            pooled = adaptive_avg_pool2d(torch.cat([ck, cv], dim=1), self.kv_pool_side)
            ck, cv = pooled.chunk(2, dim=1)
        batch, channels, hq, wq = cq.shape
        # Eq. 4 as attention with queries CQ (HqWq tokens) over keys/values CK, CV (HW tokens)
        attended = F.scaled_dot_product_attention(
            cq.flatten(2).transpose(1, 2), ck.flatten(2).transpose(1, 2), cv.flatten(2).transpose(1, 2),
            scale=self.scale)
        out = attended.transpose(1, 2).reshape(batch, channels, hq, wq)
        if self.residual_query:
            out = out + cq
        if self.output == "bn_relu":
            return F.relu(self.norm(out))
        return torch.sigmoid(out) if self.output == "sigmoid" else out
