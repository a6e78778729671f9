"""Detectors: importing this package registers every built-in detector.

``ae`` (the baseline); the study's three: ``f-anogan``, ``ganomaly``, ``multi-kd``; the memory detectors:
``mama-net``, ``proxyano``; the chest X-ray detectors: ``sure-roi``, ``coronet``, ``coronet-semi``.
"""

from medad.detectors import ae, coronet, fanogan, ganomaly, mamanet, multikd, padim, patchcore, proxyano, sure_roi  # noqa: F401
from medad.detectors.base import Detector, NonFiniteLossError, TrainLog

__all__ = ["Detector", "NonFiniteLossError", "TrainLog"]
