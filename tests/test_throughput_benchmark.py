"""benchmarks/throughput.py's bookkeeping: FLOP counting (also through a double backward) and per-phase rates."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.xdist_group("test_throughput_benchmark")  # its tests share a module fixture: one worker builds it


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", REPO_ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_count_of_a_convolution_forward_and_backward(throughput):
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    forward = 2 * 2 * 8 * 16 * 16 * 3 * 3 * 3  # 2 x N x C_out x H x W x C_in x k x k
    with throughput.FlopCount() as flops:
        conv(x)
    assert flops.get_total_flops() == forward
    with throughput.FlopCount() as flops:
        conv(x).sum().backward()
    assert flops.get_total_flops() == 3 * forward  # + gradients of the input and of the weights


def test_flop_count_runs_through_a_gradient_penalty(throughput):
    from medad.detectors.fanogan.losses import gradient_penalty

    critic = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    real, fake = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    critic(real)
    with throughput.FlopCount() as flops:
        gradient_penalty(critic, real, fake, torch.Generator().manual_seed(0)).backward()
    assert flops.get_total_flops() > 0


def test_phase_rates_per_phase_images_per_second_and_gflop_per_image(throughput):
    # (wall, cpu, first loss name, FLOPs so far): two steps of phase "a", then two of "b"; batch of 4
    stamps = [(0.0, 0.0, "a", 0), (1.0, 2.0, "a", 8e9), (3.0, 6.0, "a", 16e9),
              (4.0, 8.0, "b", 16e9), (4.5, 9.0, "b", 20e9)]
    rates = throughput.phase_rates(stamps, batch_size=4)
    assert rates["a"] == pytest.approx((4 / 1.5, 4 / 3.0, 2, 2.0))
    assert rates["b"] == pytest.approx((8.0, 4.0, 1, 1.0))
