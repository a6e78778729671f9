"""Where Multi-KD's source network gets its weights (the shared :class:`~medad.detectors.blocks.backbone.Backbone`
loads them).

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

from medad.detectors.blocks.backbone import ARCHITECTURES, pretrained_files, weights_tag
from medad.detectors.pretrained import hub_checkpoint

IMAGENET_URL = ARCHITECTURES["vgg16"].imagenet_url
IMAGENET_FILE = Path(IMAGENET_URL).name  # vgg16-397923af.pth
WHAT = "multi-kd source (VGG16)"
HINT = (f"Or give a local file as the multi-kd parameter `source: /path/to/{IMAGENET_FILE}`; `source: random` "
        "runs without pretrained weights (rows marked weights=random).")

__all__ = ["HINT", "IMAGENET_FILE", "IMAGENET_URL", "WHAT", "hub_checkpoint_path", "source_files", "weights_tag"]


def hub_checkpoint_path() -> Path:
    """Where torchvision's weights API caches (and looks for) ``vgg16-397923af.pth``."""
    return hub_checkpoint(IMAGENET_URL)


def source_files(source: str) -> list[tuple[Path, str]]:
    """(file, download URL or "") the ``source`` setting reads."""
    return pretrained_files("vgg16", source)
