"""Where Multi-KD's source network gets its weights.

``source`` hyper-parameter:

- ``imagenet``: torchvision's ``VGG16_Weights.IMAGENET1K_V1`` (the file ``vgg16-397923af.pth`` the
  reference code asks for): read from torch's hub cache (downloaded into it when the machine is online),
  its SHA-256 checked against the release and loaded weights-only (:mod:`medad.detectors.pretrained`).
  Offline and not cached, a :class:`PretrainedWeightsError` says which file to put where.
- ``random``: no pretrained weights; Xavier-uniform conv weights and zero biases (the reference's
  ``pretrain: False`` re-draws the conv weights with Xavier-uniform). Results are marked
  ``weights=random``: they are not the method.
- a path to a ``.pth``/``.pt`` state dict: a torchvision VGG16 (``features.N.*`` keys, classifier keys
  ignored) or a bare features dict (``N.*`` keys); marked ``weights=local:<file name>``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from medad.detectors.pretrained import PretrainedWeightsError, hub_checkpoint, local_state_dict, torchvision_state_dict

IMAGENET_FILE = "vgg16-397923af.pth"
IMAGENET_URL = f"https://download.pytorch.org/models/{IMAGENET_FILE}"
WHAT = "multi-kd source (VGG16)"
HINT = (f"Or give a local file as the multi-kd parameter `source: /path/to/{IMAGENET_FILE}`; `source: random` "
        "runs without pretrained weights (rows marked weights=random).")


def hub_checkpoint_path() -> Path:
    """Where torchvision's weights API caches (and looks for) ``vgg16-397923af.pth``."""
    return hub_checkpoint(IMAGENET_URL)


def weights_tag(source: str) -> str:
    """The ``weights`` column for a ``source`` setting: imagenet, random or local:<file name>."""
    if source in ("imagenet", "random"):
        return source
    return f"local:{Path(source).name}"


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """VGG16 ImageNet weights from torch's hub cache (downloaded there when online), hash-checked, weights only."""
    from torchvision.models import VGG16_Weights

    return torchvision_state_dict(VGG16_Weights.IMAGENET1K_V1, what=WHAT, hint=HINT)


def local_source_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A VGG16 state dict read (weights only) from ``path``."""
    return local_state_dict(path, what=WHAT, releases=(IMAGENET_URL,), hint=HINT)


def load_source_weights(network: nn.Module, source: str) -> None:
    """Fill the source network (a module with ``features``) according to ``source`` (module docstring)."""
    if source == "random":
        for layer in network.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        return
    state = imagenet_state_dict() if source == "imagenet" else local_source_state_dict(source)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} or state
    try:
        network.features.load_state_dict(features)
    except RuntimeError as error:
        where = "torchvision's VGG16 ImageNet weights" if source == "imagenet" else repr(source)
        raise PretrainedWeightsError(f"multi-kd: {where} do not fit the source network "
                                 f"(source_width_divisor must match the file): {error}") from error
