"""CoroNet (Khobahi, Agarwal & Soltanalian 2020): registers ``coronet`` and ``coronet-semi``."""

from medad.detectors.coronet.detector import CoroNetAE, CoroNetSemi
from medad.detectors.coronet.fpae import FPAE

__all__ = ["CoroNetAE", "CoroNetSemi", "FPAE"]
