"""GANomaly (Akcay et al., 2018): networks, losses and the ``ganomaly`` detector."""

from medad.detectors.ganomaly.detector import GanomalyDetector

__all__ = ["GanomalyDetector"]
