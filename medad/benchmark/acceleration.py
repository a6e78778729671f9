"""How a job runs its networks on the device: tensor memory format and autocast precision.

Two run-wide settings (config keys ``memory_format`` and ``precision``, CLI ``--memory-format`` and
``--precision``):

- ``memory_format``: ``channels_last`` stores 4-D tensors as NHWC, which cuDNN's (and oneDNN's)
  fastest convolution kernels use; the numbers are those of ``contiguous`` up to floating-point
  rounding. ``auto`` (the default) = ``channels_last`` on CUDA and on the CPU: on the CPU, one thread per job
  at the default run's settings, it was faster or equal for every detector measured (a job's wall time,
  contiguous -> channels_last: coronet 27.6 -> 17.4 s, proxyano 44.3 -> 31.9 s, coronet-semi 78.9 -> 66.1 s,
  f-anogan 33.1 -> 28.1 s, ganomaly 32.7 -> 30.5 s; ae, multi-kd, mama-net and sure-roi within 1-3 %).
- ``precision``: ``fp32`` (the default: the papers' numbers; full float32, TF32 off on CUDA), ``tf32``
  (TensorFloat-32 matrix products and convolutions on CUDA: see :mod:`medad.benchmark.numerics`) or ``bf16``,
  automatic mixed precision (``torch.autocast``) for training and scoring. bfloat16 keeps float32's exponent range, so no
  gradient scaler is needed (float16 would need one per optimiser inside every detector's loop, so it
  is not offered). Results under ``tf32`` or ``bf16`` may differ from fp32 ones: their rows carry ``precision=tf32``
  or ``precision=bf16``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
PRECISIONS = ("fp32", "tf32", "bf16")


def resolve_memory_format(setting: str, device: torch.device) -> torch.memory_format:
    """``auto`` -> channels_last (the faster layout measured on CUDA and on the CPU); the named format otherwise.
    ``device`` is where the job runs (kept for devices whose faster layout would differ)."""
    if setting not in MEMORY_FORMATS:
        raise ValueError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got {setting!r}")
    if setting in ("channels_last", "auto"):
        return torch.channels_last
    return torch.contiguous_format


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """``torch.autocast`` to bfloat16 on ``device`` for ``bf16``; nothing for ``fp32`` and ``tf32`` (float32 tensors,
    whose TF32 flags :func:`medad.benchmark.numerics.configure_numerics` sets)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "bf16":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


def precision_tags(precision: str) -> dict[str, str]:
    """The CSV tag of a result computed under ``precision`` (none for the default fp32)."""
    return {} if precision == "fp32" else {"precision": precision}
