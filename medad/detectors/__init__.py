"""Detectors: importing this package registers every built-in detector."""

from medad.detectors import ae  # noqa: F401  (registers "ae")
from medad.detectors.base import Detector, NonFiniteLossError, TrainLog

__all__ = ["Detector", "NonFiniteLossError", "TrainLog"]
