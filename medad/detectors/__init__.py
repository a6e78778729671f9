"""Detectors: importing this package registers every built-in detector.

``ae`` (the baseline); the study's three: ``f-anogan``, ``ganomaly``, ``multi-kd``; the memory detectors:
``mama-net``, ``proxyano``; the chest X-ray detectors: ``sure-roi``, ``coronet``, ``coronet-semi``; the
detectors on a pretrained feature extractor: ``patchcore``, ``padim``, ``reverse-distillation``; the structure-blind
controls (:mod:`medad.detectors.controls`): ``intensity``, ``histogram``, ``mean-image``.
"""

from medad.detectors import (  # noqa: F401
    ae,
    controls,
    coronet,
    fanogan,
    ganomaly,
    mamanet,
    multikd,
    padim,
    patchcore,
    proxyano,
    reverse_distillation,
    sure_roi,
)
from medad.detectors.base import Detector, NonFiniteLossError, TrainLog

__all__ = ["Detector", "NonFiniteLossError", "TrainLog"]
