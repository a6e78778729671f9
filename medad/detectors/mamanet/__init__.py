"""MAMA Net (Chen et al., IEEE TMI 2021): attention blocks, networks, loss and the ``mama-net`` detector."""

from medad.detectors.mamanet.detector import MamaNetDetector

__all__ = ["MamaNetDetector"]
