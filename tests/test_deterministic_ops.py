"""Bilinear resizing and adaptive average pooling in their deterministic matrix form (used under deterministic
algorithms on CUDA, where torch's backward kernels are refused) equal torch's ops, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medad.detectors.blocks import deterministic
from medad.detectors.blocks.deterministic import AdaptiveAvgPool2d, adaptive_avg_pool2d, interpolate_bilinear


@pytest.fixture
def matrix_form_on_cpu(monkeypatch):
    """Deterministic algorithms on, and the CPU treated as a device whose backward kernels are refused (as CUDA's)."""
    monkeypatch.setattr(deterministic, "NONDETERMINISTIC_BACKWARD_DEVICES", {"cpu"})
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def _value_and_gradient(op, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = op(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    (out * weights).sum().backward()
    return out.detach(), x.grad


RESIZES = [dict(scale_factor=2), dict(size=(32, 32)), dict(size=(9, 5)), dict(size=(3, 4))]


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 2, 7, 5)])
@pytest.mark.parametrize("resize", RESIZES, ids=str)
def test_bilinear_matrix_form_equals_torch_interpolate(matrix_form_on_cpu, monkeypatch, shape, resize):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    expected = _value_and_gradient(lambda t: F.interpolate(t, mode="bilinear", align_corners=False, **resize), x)
    monkeypatch.setattr(F, "interpolate", lambda *a, **k: pytest.fail("torch's interpolate was called"))
    actual = _value_and_gradient(lambda t: interpolate_bilinear(t, **resize), x)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("shape", "size"), [((2, 3, 8, 8), 3), ((1, 2, 10, 7), (4, 2)), ((2, 4, 5, 5), 1),
                                             ((1, 1, 6, 9), (None, 3))])
def test_pooling_matrix_form_equals_torch_adaptive_avg_pool(matrix_form_on_cpu, monkeypatch, shape, size):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    expected = _value_and_gradient(lambda t: F.adaptive_avg_pool2d(t, size), x)
    monkeypatch.setattr(F, "adaptive_avg_pool2d", lambda *a, **k: pytest.fail("torch's adaptive_avg_pool2d was called"))
    actual = _value_and_gradient(lambda t: adaptive_avg_pool2d(t, size), x)
    module = _value_and_gradient(AdaptiveAvgPool2d(size), x)
    for got, by_module, want in zip(actual, module, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(by_module, want, rtol=1e-5, atol=1e-6)


def test_torch_ops_run_unchanged_where_no_gradient_would_be_refused(monkeypatch):
    """The CPU, deterministic mode off, or no gradient: torch's own op, so the numbers of such runs do not move."""
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(2), requires_grad=True)
    calls = []
    original = F.interpolate
    monkeypatch.setattr(F, "interpolate", lambda *a, **k: calls.append(k) or original(*a, **k))
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        interpolate_bilinear(x, scale_factor=2)  # deterministic, but on the CPU: torch's op
        monkeypatch.setattr(deterministic, "NONDETERMINISTIC_BACKWARD_DEVICES", {"cpu"})
        with torch.no_grad():
            interpolate_bilinear(x, scale_factor=2)  # no gradient: torch's op
        torch.use_deterministic_algorithms(False)
        interpolate_bilinear(x, scale_factor=2)  # deterministic mode off: torch's op
    finally:
        torch.use_deterministic_algorithms(previous)
    assert len(calls) == 3
