"""MAMA Net's encoder / hash memory / decoder (Chen et al., IEEE TMI 2021, Sec. III-D and IV-A; Fig. 2).

Shapes at 128 px (``widths = (64, 256, 512)``, ``dec_sa3_out = 1024``; spec-mamanet.md Sec. 2)::

    x C x128x128 -DA-> Conv_1 64x64x64 -DA-> Conv_2 256x32x32 -DA-> Conv_3 512x16x16
    Conv_3 -SA-> semantic basis 512x16x16;  z = flatten(Conv_3) -> hash memory -> z_hat 512x16x16
    concat(z_hat, SB) 1024x16x16 -SA-> 1024x16x16 -UA-> 512x32x32 -SA-> 512x32x32 -UA-> 64x64x64
    -UA (sigmoid)-> x_hat C x128x128

[!] the paper's decoder text says two SA + three UA in one place and two UA + two SA in another; the
listed shapes need three up-samplings, so the decoder is 2 SA + 3 UA [R]. ``use_semantic_basis=False``
is the paper's ablation (the decoder sees ``z_hat`` only).

Memory update (``mem_update``; the paper gives no update rule):

- ``"prototype"`` (the default: the paper's description, see :class:`~medad.detectors.blocks.memory.
  PrototypeHashMemory`): slots track the codes addressed to them (EMA, idle slots re-seeded), the hash
  layer is trained straight-through, the read reaches the encoder straight-through, fixed at test.
- ``"gradient"`` (for comparison): the slots are an ``nn.Parameter`` learned by back-propagation through
  the read; with the frozen hash the read passes no gradient to the encoder, and the decoder learns to
  ignore it (measured on the synthetic phantoms).
- ``"write"`` (for comparison): Sec. III-C's prose, "given the feature embedding vector z ... it is first
  stored at memory slots ... the corresponding embedding feature is taken from memory slots to feed the
  decoder". In training every code is written to the next slot (first in, first out) and the read never
  returns a slot written in the same step (leave-self-out: a code reads another image's stored code, as
  at test), passing its gradient to the encoder straight through [R]; the detector refills all slots with
  the final encoder's codes after training and the memory is frozen at test (Sec. III-A).
- ``"bypass"`` (an ablation, not the method): no memory; the decoder gets z itself.

``hash_train="auto"`` trains the hash layer under ``prototype`` and freezes it otherwise.

``wide_output_block`` [R]: the paper does not give ``C'`` (the patch-attention width) and the spec takes
``C' = C''``; for the last UA block ``C''`` is the image's channel count (1 for CT), which squeezes the
whole output through one channel and left the output flat for some seeds. ``True`` uses ``C'`` = the
block's input width there (64 in the paper) and keeps ``C' = C''`` everywhere else; ``False`` is the
spec's literal choice.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medad.detectors.blocks.memory import HashMemory, PrototypeHashMemory
from medad.detectors.mamanet.attention import MultiScaleAttention

MEM_UPDATES = ("prototype", "gradient", "write", "bypass")
HASH_TRAINING = ("auto", "frozen", "ste")


def encoder_sizes(image_size: int, downs: int = 3) -> list[int]:
    """Spatial side after each DA block: a 3x3 stride-2 pad-1 conv gives ``ceil(s / 2)`` (228 -> 114 -> 57 -> 29)."""
    sizes = [image_size]
    for _ in range(downs):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


class MamaNetwork(nn.Module):
    """Encoder (3 DA) -> hash memory (+ SA semantic basis) -> decoder (2 SA + 3 UA), sigmoid output in [0, 1]."""

    def __init__(self, image_size: int, channels: int, *, widths: tuple[int, int, int] = (64, 256, 512),
                 dec_sa3_out: int = 1024, mem_size: int = 2000, hash_bits: int = 128, addressing: str = "hard",
                 soft_topk: int = 5, soft_tau: float = 1.0, hash_train: str = "auto",
                 use_semantic_basis: bool = True, mem_update: str = "prototype", wide_output_block: bool = True,
                 mem_decay: float = 0.99, reseed_after: int = 50, **block: Any) -> None:
        super().__init__()
        if mem_update not in MEM_UPDATES:
            raise ValueError(f"mem_update must be one of {MEM_UPDATES}, got {mem_update!r}")
        if hash_train not in HASH_TRAINING:
            raise ValueError(f"hash_train must be one of {HASH_TRAINING}, got {hash_train!r}")
        self.mem_update = mem_update
        if hash_train == "auto":
            hash_train = "ste" if mem_update == "prototype" else "frozen"
        w1, w2, w3 = widths
        self.sizes = encoder_sizes(image_size)
        self.use_semantic_basis = use_semantic_basis
        self.conv1 = MultiScaleAttention(channels, w1, "down", **block)
        self.conv2 = MultiScaleAttention(w1, w2, "down", **block)
        self.conv3 = MultiScaleAttention(w2, w3, "down", **block)
        self.semantic_basis = MultiScaleAttention(w3, w3, "same", **block) if use_semantic_basis else None
        self.latent_shape = (w3, self.sizes[3], self.sizes[3])
        feature_dim = w3 * self.sizes[3] ** 2
        if mem_update == "prototype":
            self.memory = PrototypeHashMemory(mem_size, feature_dim, hash_bits, soft_tau=soft_tau, hash_train=hash_train,
                                              decay=mem_decay, reseed_after=reseed_after)
        else:
            self.memory = HashMemory(mem_size, feature_dim, hash_bits, addressing, soft_topk, soft_tau, hash_train)
        if mem_update == "write":  # slots are written, not learned
            self.memory.items.requires_grad_(False)
        self.register_buffer("write_pointer", torch.zeros((), dtype=torch.long))
        self.deconv3 = MultiScaleAttention(2 * w3 if use_semantic_basis else w3, dec_sa3_out, "same", **block)
        self.pre_deconv2 = MultiScaleAttention(dec_sa3_out, w3, "up", **block)
        self.deconv2_sa = MultiScaleAttention(w3, w3, "same", **block)
        self.deconv2 = MultiScaleAttention(w3, w1, "up", **block)
        self.output = MultiScaleAttention(w1, channels, "up", **{**block, "output": "sigmoid",
                                                                 "mid_channels": w1 if wide_output_block else None})

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``Conv_3``: the encoder's ``(B, 512, S/8, S/8)`` feature map (z before flattening, Eq. 10)."""
        return self.conv3(self.conv2(self.conv1(images)))

    def decode(self, z_hat: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
        """Eq. 11: reconstruct from the memory read ``z_hat`` and the semantic basis."""
        h = torch.cat([z_hat, basis], dim=1) if basis is not None else z_hat
        h = self.deconv3(h)
        h = self.deconv2_sa(self.pre_deconv2(h, output_size=(self.sizes[2], self.sizes[2])))
        h = self.deconv2(h, output_size=(self.sizes[1], self.sizes[1]))
        return self.output(h, output_size=(self.sizes[0], self.sizes[0]))

    @torch.no_grad()
    def write_memory(self, z: torch.Tensor) -> torch.Tensor:
        """``mem_update="write"``: store the codes ``z (B, ...)`` in the next slots, first in first out;
        return the slots written."""
        flat = z.detach().flatten(1)[-self.memory.mem_size:]
        index = (self.write_pointer + torch.arange(len(flat), device=flat.device)) % self.memory.mem_size
        self.memory.items[index] = flat.to(self.memory.items.dtype)  # autocast may hand bf16 codes
        self.write_pointer.copy_((self.write_pointer + len(flat)) % self.memory.mem_size)
        return index

    def read_memory(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_hat, addressed slots)`` under ``mem_update`` (see the module docstring)."""
        if self.mem_update == "bypass":
            return z, torch.zeros(len(z), dtype=torch.long, device=z.device)
        if self.mem_update == "write" and self.training:
            written = self.write_memory(z)  # Sec. III-C: "it is first stored at memory slots", then addressed
            z_hat, slots = self.memory(z, exclude=written)  # leave-self-out: another image's stored code
        else:
            z_hat, slots = self.memory(z)
        if self.mem_update == "write":  # straight-through: the read's gradient reaches the encoder [R]
            z_hat = z + (z_hat - z).detach()
        return z_hat, slots

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``recon`` (x_hat), ``z`` (Conv_3), ``z_hat`` (memory read) and ``slots`` (addressed indices)."""
        z = self.encode(images)
        z_hat, slots = self.read_memory(z)
        basis = self.semantic_basis(z) if self.semantic_basis is not None else None
        return {"recon": self.decode(z_hat, basis), "z": z, "z_hat": z_hat, "slots": slots}
