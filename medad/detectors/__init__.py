"""Detectors: importing this package registers every built-in detector."""

from medad.detectors import ae  # noqa: F401  (registers "ae")
from medad.detectors import fanogan, ganomaly, multikd  # noqa: F401  (the study's three: "f-anogan", "ganomaly", "multi-kd")
from medad.detectors import mamanet, proxyano  # noqa: F401  (the memory detectors: "mama-net", "proxyano")
from medad.detectors import coronet, sure_roi  # noqa: F401  (the chest X-ray detectors: "sure-roi", "coronet", "coronet-semi")
from medad.detectors.base import Detector, NonFiniteLossError, TrainLog

__all__ = ["Detector", "NonFiniteLossError", "TrainLog"]
