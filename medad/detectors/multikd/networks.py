"""Multi-KD networks (Salehi et al., CVPR 2021, "Multiresolution Knowledge Distillation for Anomaly
Detection"; official code Niousha12/Knowledge_Distillation_AD ``models/network.py``; spec section 5.1-5.2).

Source S: torchvision's VGG16 ``features`` (31 modules, no BatchNorm), read at its critical points
(CPs) pool2, pool3, pool4, pool5: the shared pretrained feature extractor
(:class:`~medad.detectors.blocks.backbone.Backbone`, ``vgg16``, [0, 1] inputs without ImageNet
standardisation, as the reference feeds them), its weights set by the ``source`` parameter (:mod:`.source`).
Cloner C: the reference's config "B": a VGG-like stack of 13 bias-free 3x3 convolutions, Xavier-uniform initialised, BatchNorm + ReLU after each except the last conv of a
stage (conv + ReLU), a 2x2 max-pool closing each stage; all convolutions are 16 wide except the last
of stages 2-5, which match the source's CP widths (128, 256, 512, 512), ≈344 k weights.
"""

from __future__ import annotations

import torch
from torch import nn

from medad.detectors.blocks.backbone import Backbone, check_width_divisor

CRITICAL_STAGES = (1, 2, 3, 4)  # 0-based stages whose pool outputs are the CPs: pool2..pool5
CRITICAL_POINTS = tuple(f"pool{stage + 1}" for stage in CRITICAL_STAGES)
SCORE_POINTS = (1, 2, 3)  # the test score uses pool3, pool4, pool5 (positions in the CP list)


class ReLUGuidable(nn.ReLU):
    """ReLU whose backward pass can be switched to guided backpropagation (Springenberg et al., 2015):
    only positive gradients pass where the forward output was positive."""

    guided = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLU.apply(x) if self.guided else torch.relu(x)


class _GuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


class TappedVGG(nn.Module):
    """A VGG-style stack that returns the max-pool outputs of the critical stages (the CP activations)."""

    def __init__(self, stages: tuple[tuple[int, ...], ...], batch_norm: bool, bias: bool, guidable: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        self.taps: list[int] = []
        relu = ReLUGuidable if guidable else nn.ReLU
        channels = 3
        for index, stage in enumerate(stages):
            for position, width in enumerate(stage):
                layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=bias))
                if batch_norm and position < len(stage) - 1:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(relu() if guidable else relu(inplace=True))
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
            if index in CRITICAL_STAGES:
                self.taps.append(len(layers) - 1)
        self.features = nn.Sequential(*layers)
        self.cp_channels = [stages[i][-1] for i in CRITICAL_STAGES]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        outputs, x = [], images
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs

    def set_guided(self, guided: bool) -> None:
        """Switch guided backpropagation on or off in every :class:`ReLUGuidable`."""
        for module in self.modules():
            if isinstance(module, ReLUGuidable):
                module.guided = guided


class Source(Backbone):
    """S: the frozen VGG16 trunk read at the CPs, returned as the list ``[pool2, pool3, pool4, pool5]``."""

    def __init__(self, width_divisor: int = 1, weights: str = "random", what: str = "", hint: str = "") -> None:
        super().__init__("vgg16", CRITICAL_POINTS, weights=weights, width_divisor=width_divisor, normalize=False,
                         what=what, hint=hint)
        self.cp_channels = [self.channels[point] for point in CRITICAL_POINTS]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(super().forward(images).values())


def build_source(width_divisor: int = 1, weights: str = "random", what: str = "", hint: str = "") -> Source:
    """S: VGG16 ``features`` (torchvision layout: conv with bias + ReLU, max-pools; module indices match
    ``torchvision.models.vgg16().features`` so its state dict loads directly), channel counts divided by
    ``width_divisor``, with ``weights`` (``random``, ``imagenet`` or a path: see :mod:`.source`)."""
    return Source(check_width_divisor(width_divisor, "source_width_divisor"), weights, what, hint)


def build_cloner(source: nn.Module, width: int = 16, equal_size: bool = False) -> TappedVGG:
    """C: config "B" (``width``-wide except the CP stages' last convs, which match the source) or, with
    ``equal_size``, config "A" (the source's widths). Bias-free, BatchNorm, Xavier-uniform init."""
    widths = [tuple(layer.out_channels for layer in stage) for stage in _conv_stages(source)]
    if not equal_size:
        widths = [tuple([width] * (len(stage) - 1) + [stage[-1] if index in CRITICAL_STAGES else width])
                  for index, stage in enumerate(widths)]
    cloner = TappedVGG(tuple(widths), batch_norm=True, bias=False, guidable=True)
    for layer in cloner.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
    return cloner


def _conv_stages(network: nn.Module) -> list[list[nn.Conv2d]]:
    stages, current = [], []
    for layer in network.features:
        if isinstance(layer, nn.Conv2d):
            current.append(layer)
        elif isinstance(layer, nn.MaxPool2d):
            stages.append(current)
            current = []
    return stages
