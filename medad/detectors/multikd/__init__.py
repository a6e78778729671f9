"""Multi-KD (Salehi et al., 2021): source/cloner networks, source weights, losses and the ``multi-kd`` detector."""

from medad.detectors.multikd.detector import MultiKDDetector

__all__ = ["MultiKDDetector"]
