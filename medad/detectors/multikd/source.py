"""Where Multi-KD's source network gets its weights.

``source`` hyper-parameter:

- ``imagenet``: torchvision's ``VGG16_Weights.IMAGENET1K_V1`` (the file ``vgg16-397923af.pth`` the
  reference code asks for), through torchvision's weights API: read from torch's hub cache, downloaded
  into it when the machine is online. Offline and not cached, a :class:`SourceWeightsError` says which
  file to put where.
- ``random``: no pretrained weights; Xavier-uniform conv weights and zero biases (the reference's
  ``pretrain: False`` re-draws the conv weights with Xavier-uniform). Results are marked
  ``weights=random``: they are not the method.
- a path to a ``.pth``/``.pt`` state dict: a torchvision VGG16 (``features.N.*`` keys, classifier keys
  ignored) or a bare features dict (``N.*`` keys); marked ``weights=local:<file name>``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn

IMAGENET_FILE = "vgg16-397923af.pth"
IMAGENET_URL = f"https://download.pytorch.org/models/{IMAGENET_FILE}"


class SourceWeightsError(RuntimeError):
    """The source network's pretrained weights cannot be found or read."""


def hub_checkpoint_path() -> Path:
    """Where torchvision's weights API caches (and looks for) ``vgg16-397923af.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def weights_tag(source: str) -> str:
    """The ``weights`` column for a ``source`` setting: imagenet, random or local:<file name>."""
    if source in ("imagenet", "random"):
        return source
    return f"local:{Path(source).name}"


def _missing_message(reason: str) -> str:
    return (f"multi-kd: the VGG16 ImageNet weights are not available ({reason}). Download {IMAGENET_URL} "
            f"and put it at {hub_checkpoint_path()} (torchvision's cache; set TORCH_HOME to move it), or pass "
            f"its path as the multi-kd parameter `source: /path/to/{IMAGENET_FILE}`; "
            f"`source: random` runs without pretrained weights (rows marked weights=random).")


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """VGG16 ImageNet weights through torchvision's weights API (hub cache, else a download)."""
    from torchvision.models import VGG16_Weights

    try:
        return VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError, RuntimeError) as error:
        raise SourceWeightsError(_missing_message(f"{type(error).__name__}: {error}")) from error


def local_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict read (weights only) from ``path``; a clear error when it is missing or unreadable."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceWeightsError(f"multi-kd: source weights file {str(path)!r} does not exist; "
                                 f"give the path of a VGG16 state dict such as {IMAGENET_FILE} ({IMAGENET_URL}), "
                                 f"or `source: imagenet` / `source: random`")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors alike
        raise SourceWeightsError(f"multi-kd: cannot read source weights {str(path)!r}: {error}") from error
    if not isinstance(state, dict):
        raise SourceWeightsError(f"multi-kd: {str(path)!r} holds a {type(state).__name__}, expected a state dict")
    return state


def load_source_weights(network: nn.Module, source: str) -> None:
    """Fill the source network (a module with ``features``) according to ``source`` (module docstring)."""
    if source == "random":
        for layer in network.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)
        return
    state = imagenet_state_dict() if source == "imagenet" else local_state_dict(source)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} or state
    try:
        network.features.load_state_dict(features)
    except RuntimeError as error:
        where = "torchvision's VGG16 ImageNet weights" if source == "imagenet" else repr(source)
        raise SourceWeightsError(f"multi-kd: {where} do not fit the source network "
                                 f"(source_width_divisor must match the file): {error}") from error
