"""Reverse Distillation (Deng and Li, CVPR 2022): the one-class bottleneck, the student decoder, the loss and the
``reverse-distillation`` detector."""

from medad.detectors.reverse_distillation.detector import ReverseDistillationDetector

__all__ = ["ReverseDistillationDetector"]
