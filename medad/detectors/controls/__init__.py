"""Control detectors: structure-blind references that tell whether a detector is better than a shortcut.

``intensity`` (grey-level statistics), ``histogram`` (grey-level histogram, k nearest normals) and ``mean-image``
(per-pixel deviation from the average normal image, with a pixel map). They fit statistics of the training normals
only, use no labels and assume no direction; their rows are tagged ``role: control`` and never ranked as detectors.
"""

from medad.detectors.controls import histogram, intensity, mean_image  # noqa: F401
from medad.detectors.controls.base import CONTROL_ROLE, ConstantImagesError, ControlDetector

__all__ = ["CONTROL_ROLE", "ConstantImagesError", "ControlDetector"]
