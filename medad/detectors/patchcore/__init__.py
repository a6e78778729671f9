"""PatchCore (Roth et al., CVPR 2022): patch features, the coreset memory bank, nearest-neighbour search, Eq. 7's
image score and the ``patchcore`` detector."""

from medad.detectors.patchcore.detector import PatchCoreDetector

__all__ = ["PatchCoreDetector"]
