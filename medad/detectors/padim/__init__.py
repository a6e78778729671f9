"""PaDiM (Defard et al., ICPR 2021): per-position Gaussians over pretrained features and the ``padim`` detector."""

from medad.detectors.padim.detector import PaDiMDetector

__all__ = ["PaDiMDetector"]
