"""f-AnoGAN (Schlegl et al., 2019): networks, losses and the ``f-anogan`` detector."""

from medad.detectors.fanogan.detector import FAnoGANDetector

__all__ = ["FAnoGANDetector"]
