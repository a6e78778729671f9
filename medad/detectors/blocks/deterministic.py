"""Bilinear resizing and adaptive average pooling that stay differentiable under deterministic algorithms on CUDA.

torch has no deterministic CUDA kernel for the gradient of ``F.interpolate(mode="bilinear")`` nor of
``F.adaptive_avg_pool2d`` (their backward kernels add with atomics), so ``torch.use_deterministic_algorithms(True)``
(the run setting ``deterministic: true``) makes them raise there. Both are linear maps separable into rows and
columns: ``out = R @ x @ Cᵀ`` with a fixed ``R`` (out_h x in_h) and ``C`` (out_w x in_w), whose gradient is two
more matrix products, deterministic with cuBLAS's deterministic workspace. The functions here call torch's own
op everywhere else (the CPU, no gradient, deterministic mode off), so the numbers of a run without
``deterministic`` do not move; with it on CUDA, the matrix form equals torch's op up to float rounding.

- bilinear, ``align_corners=False``, no antialiasing (torch's default): output pixel ``i`` samples the input at
  ``s = (i + 0.5)·in/out − 0.5`` clamped at 0, mixing ``floor(s)`` and the next pixel (clamped at the border) by
  the fractional part;
- adaptive average pooling: output ``i`` is the mean of inputs ``floor(i·in/out)`` to ``ceil((i+1)·in/out) − 1``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# where torch's backward of these ops is nondeterministic, and so refused under deterministic algorithms
NONDETERMINISTIC_BACKWARD_DEVICES = {"cuda"}


def needs_deterministic_form(x: torch.Tensor) -> bool:
    """Whether torch would refuse the gradient of bilinear resizing / adaptive pooling of ``x``: deterministic
    algorithms on, ``x`` on a device whose kernel is nondeterministic, and a gradient to compute."""
    return (torch.are_deterministic_algorithms_enabled() and x.device.type in NONDETERMINISTIC_BACKWARD_DEVICES
            and torch.is_grad_enabled() and x.requires_grad)


def bilinear_matrix(out_size: int, in_size: int, scale: float | None = None) -> torch.Tensor:
    """``(out_size, in_size)`` weights of 1-D linear interpolation, ``align_corners=False``; ``scale`` is the input
    step per output pixel (default ``in_size / out_size``; torch uses ``1 / scale_factor`` when given one)."""
    step = in_size / out_size if scale is None else scale
    source = ((torch.arange(out_size, dtype=torch.float64) + 0.5) * step - 0.5).clamp(min=0.0)
    low = source.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    weight = source - low
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    rows = torch.arange(out_size)
    matrix.index_put_((rows, low), 1.0 - weight, accumulate=True)
    matrix.index_put_((rows, high), weight, accumulate=True)
    return matrix


def pooling_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """``(out_size, in_size)`` weights of 1-D adaptive average pooling (torch's windows)."""
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    for i in range(out_size):
        start, end = (i * in_size) // out_size, math.ceil((i + 1) * in_size / out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``rows @ x @ colsᵀ`` over the last two dimensions of ``x`` ``(N, C, H, W)``, in ``x``'s dtype and device."""
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return rows.to(x.device, dtype) @ x @ cols.to(x.device, dtype).T


def _pair(value: int | tuple[int | None, int | None] | list[int], default: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` from an int or a pair; a ``None`` entry keeps that side of ``default`` (as torch's pooling does)."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    return tuple(int(side if side is not None else fallback) for side, fallback in zip(pair, default))


def interpolate_bilinear(x: torch.Tensor, *, size: int | tuple[int, int] | None = None,
                         scale_factor: float | None = None) -> torch.Tensor:
    """``F.interpolate(x, size=..., scale_factor=..., mode="bilinear", align_corners=False)``, differentiable under
    deterministic algorithms on CUDA (module docstring)."""
    if not needs_deterministic_form(x):
        return F.interpolate(x, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=False)
    height, width = x.shape[-2:]
    if size is not None:
        out_h, out_w = _pair(size, (height, width))
        return _separable(x, bilinear_matrix(out_h, height), bilinear_matrix(out_w, width))
    out_h, out_w = math.floor(height * scale_factor), math.floor(width * scale_factor)
    return _separable(x, bilinear_matrix(out_h, height, 1.0 / scale_factor),
                      bilinear_matrix(out_w, width, 1.0 / scale_factor))


def adaptive_avg_pool2d(x: torch.Tensor, output_size: int | tuple[int, int]) -> torch.Tensor:
    """``F.adaptive_avg_pool2d``, differentiable under deterministic algorithms on CUDA (module docstring)."""
    if not needs_deterministic_form(x):
        return F.adaptive_avg_pool2d(x, output_size)
    out_h, out_w = _pair(output_size, tuple(x.shape[-2:]))
    return _separable(x, pooling_matrix(out_h, x.shape[-2]), pooling_matrix(out_w, x.shape[-1]))


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` through :func:`adaptive_avg_pool2d` (e.g. torchvision's ResNet head, trained)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.output_size)
