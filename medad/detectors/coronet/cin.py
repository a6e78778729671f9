"""CoroNet's COVID-19 identification network (CIN): ImageNet ResNet-18 with a new head (§III-B).

The ImageNet weights come from a local file (``weights_path``) or from torch's hub cache (where
``torchvision.models.resnet18(weights=...)`` leaves ``resnet18-f37072fd.pth``; downloaded there when
the machine is online), hash-checked and loaded weights-only (:mod:`medad.detectors.pretrained`).
Anything else is a clear error; ``weights="none"`` trains from a random init and the detector marks its
rows so.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from medad.detectors.blocks.deterministic import AdaptiveAvgPool2d
from medad.detectors.pretrained import PretrainedWeightsError, hub_checkpoint, local_state_dict, torchvision_state_dict

WEIGHT_CHOICES = ("imagenet", "none")
# torchvision's ResNet18_Weights.IMAGENET1K_V1.url, spelled out so that listing detectors (every ``medad`` command
# and pool worker) does not import torchvision.models; a test keeps the two equal
IMAGENET_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


WHAT = "coronet-semi CIN (ResNet-18)"
HINT = ("Or give the file's path as cin_weights_path (a torchvision resnet18 state dict), or set cin_weights: none "
        "to train from scratch (rows are then marked weights=none).")


def cached_imagenet_path() -> Path:
    """Where torch's hub cache keeps torchvision's ImageNet ResNet-18 weights."""
    return hub_checkpoint(IMAGENET_URL)


def build_cin(classes: int, weights: str = "imagenet", weights_path: str | None = None) -> nn.Module:
    """ResNet-18 whose ``fc`` is ``Linear(512, classes)``; ImageNet weights from a local file or the cache."""
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"cin_weights must be one of {WEIGHT_CHOICES}, got {weights!r}")
    from torchvision.models import ResNet18_Weights, resnet18

    model = resnet18(weights=None)
    if weights == "imagenet":
        if weights_path:
            state = local_state_dict(weights_path, what=WHAT, releases=(IMAGENET_URL,), hint=HINT)
        else:
            state = torchvision_state_dict(ResNet18_Weights.IMAGENET1K_V1, what=WHAT, hint=HINT)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise PretrainedWeightsError(f"{weights_path or cached_imagenet_path()} is not a torchvision ResNet-18 "
                                         f"state dict: {str(error).splitlines()[0]}") from None
    model.fc = nn.Linear(model.fc.in_features, classes)
    model.avgpool = AdaptiveAvgPool2d(model.avgpool.output_size)  # differentiable under deterministic algorithms on CUDA
    return model
