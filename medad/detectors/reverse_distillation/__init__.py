"""Reverse Distillation (Deng and Li, CVPR 2022): the one-class bottleneck, the student decoder and the loss."""
