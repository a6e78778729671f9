"""How a job runs its networks on the device: tensor memory format and autocast precision.

Two run-wide settings (config keys ``memory_format`` and ``precision``, CLI ``--memory-format`` and
``--precision``):

- ``memory_format``: ``channels_last`` stores 4-D tensors as NHWC, which cuDNN's (and oneDNN's)
  fastest convolution kernels use; the numbers are those of ``contiguous`` up to floating-point
  rounding. ``auto`` (the default) = ``channels_last`` on CUDA, ``contiguous`` on the CPU (there the
  gain depends on the network: measured with ``benchmarks/throughput.py --memory-format``).
- ``precision``: ``fp32`` (the default: the papers' numbers) or ``bf16``, automatic mixed precision
  (``torch.autocast``) for training and scoring. bfloat16 keeps float32's exponent range, so no
  gradient scaler is needed (float16 would need one per optimiser inside every detector's loop, so it
  is not offered). Results under ``bf16`` may differ from fp32 ones: their rows carry ``precision=bf16``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
PRECISIONS = ("fp32", "bf16")


def resolve_memory_format(setting: str, device: torch.device) -> torch.memory_format:
    """``auto`` -> channels_last on CUDA, contiguous elsewhere; the named format otherwise."""
    if setting not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {setting!r}")
    if setting == "channels_last" or (setting == "auto" and device.type == "cuda"):
        return torch.channels_last
    return torch.contiguous_format


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``torch.autocast`` to bfloat16 on ``device`` for ``bf16``; nothing for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


def precision_tags(precision: str) -> dict[str, str]:
    """The CSV tag of a result computed under ``precision`` (none for the default fp32)."""
    return {} if precision == "fp32" else {"precision": precision}
