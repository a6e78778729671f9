"""CoroNet's COVID-19 identification network (CIN): ImageNet ResNet-18 with a new head (§III-B).

The machine that runs a benchmark may be offline, so the ImageNet weights are never downloaded:
they come from a local file (``weights_path``) or from torch's hub cache (where
``torchvision.models.resnet18(weights=...)`` leaves ``resnet18-f37072fd.pth``). Anything else is a
clear error; ``weights="none"`` trains from a random init and the detector marks its rows so.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

WEIGHT_CHOICES = ("imagenet", "none")


def cached_imagenet_path() -> Path:
    """Where torch's hub cache keeps torchvision's ImageNet ResNet-18 weights."""
    filename = Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def build_cin(classes: int, weights: str = "imagenet", weights_path: str | None = None) -> nn.Module:
    """ResNet-18 whose ``fc`` is ``Linear(512, classes)``; ImageNet weights from a local file or the cache."""
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"cin_weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    model = resnet18(weights=None)
    if weights == "imagenet":
        path = Path(weights_path) if weights_path else cached_imagenet_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"ImageNet ResNet-18 weights not found at {path}: give cin_weights_path (a torchvision "
                f"resnet18 state dict such as {cached_imagenet_path().name}), put the file in torch's hub cache, "
                f"or set cin_weights: none to train from scratch (rows are then marked weights=none)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ValueError(f"{path} is not a torchvision ResNet-18 state dict: {error}") from None
    model.fc = nn.Linear(model.fc.in_features, classes)
    return model
