"""The detector conformance kit (``medad.testing``) on every registered detector: adding one adds its tests.

Each detector is fitted once with its ``smoke_params`` on a tiny, very obvious synthetic set; each check
is its own test (``pytest -k <name>`` picks one detector).
"""

from __future__ import annotations

import pytest
import torch

from medad.registry import DETECTORS
from medad.testing import (
    CHECKS,
    NONDETERMINISTIC_TOLERANCES,
    ConformanceError,
    ConformanceMeasurement,
    DetectorUnderTest,
    check_detector,
    parametrize_with_checks,
)
from tests.support.detectors import (
    JitteryTemplate,
    NumericsProbe,
    SigmoidBCEDetector,
    TemplateDistance,
    VeryJitteryTemplate,
    WrongCountDetector,
)


@parametrize_with_checks(DETECTORS.names())
def test_conformance(detector, check):
    check(detector)


def test_check_detector_reports_every_failed_check_readably():
    with pytest.raises(ConformanceError) as error:
        check_detector(WrongCountDetector, checks=["scores_finite_and_separating", "batch_independent"])
    message = str(error.value)
    assert "fails 2 of 2 conformance checks" in message
    assert "scores_finite_and_separating" in message and "batch_independent" in message
    assert set(CHECKS) >= {"checkpoint_round_trip", "no_test_labels_in_fit", "bf16_channels_last_runs"}


def test_the_kit_builds_the_detector_on_its_device_and_is_exact_on_the_cpu():
    assert DetectorUnderTest(TemplateDistance, device="cpu").build().device == torch.device("cpu")
    # the device reaches the detector's constructor (a detector that moves nothing can be built for CUDA here)
    assert DetectorUnderTest(TemplateDistance, device="cuda").build().device == torch.device("cuda")
    assert DetectorUnderTest(TemplateDistance, device="cpu").exact
    assert not DetectorUnderTest(TemplateDistance, device="cuda").exact
    assert DetectorUnderTest(TemplateDistance, device="cuda", deterministic=True).exact
    assert not DetectorUnderTest(TemplateDistance, device="cpu", deterministic=False).exact
    cases = parametrize_with_checks([TemplateDistance], device="cpu", deterministic=True).mark.args[1]
    assert {(case.values[0].device, case.values[0].deterministic) for case in cases} == {(torch.device("cpu"), True)}
    assert check_detector(TemplateDistance, checks=["checkpoint_round_trip"], device="cpu") == []


def test_the_kit_runs_its_checks_under_deterministic_algorithms_when_asked_and_restores_the_flags():
    before = torch.are_deterministic_algorithms_enabled()
    kit = DetectorUnderTest(NumericsProbe, device="cpu", deterministic=True)
    kit.run("checkpoint_round_trip")
    detector, _ = kit.fitted()
    assert detector.flags["probe_deterministic"] == "True"
    assert detector.flags["probe_tf32"] == "matmul=False cudnn=False highest"
    assert torch.are_deterministic_algorithms_enabled() == before


def test_without_deterministic_algorithms_the_kit_reports_a_measured_difference_within_tolerance():
    with pytest.warns(ConformanceMeasurement, match="jittery-template seeded: .* of the values' spread"):
        measured = check_detector(JitteryTemplate, checks=["seeded"], device="cpu", deterministic=False)
    assert len(measured) == 1 and f"tolerance {NONDETERMINISTIC_TOLERANCES['seeded']:g}" in measured[0]
    # the same detector fails the CPU's exact check: the CPU keeps its strength
    with pytest.raises(ConformanceError, match="a second fit with the same seed scores differently"):
        check_detector(JitteryTemplate, checks=["seeded"], device="cpu")


def test_without_deterministic_algorithms_a_difference_above_tolerance_still_fails():
    with pytest.raises(ConformanceError, match=r"seeded: ConformanceError: .* of the values' spread .*above the tolerance"):
        check_detector(VeryJitteryTemplate, checks=["seeded"], device="cpu", deterministic=False)


def test_the_bf16_check_on_the_cpu_refuses_what_cuda_autocast_refuses():
    check_detector(SigmoidBCEDetector, checks=["checkpoint_round_trip"])  # in fp32 the loss is fine
    with pytest.raises(ConformanceError, match="bf16_channels_last_runs: RuntimeError: torch.nn.functional.binary_cross_"
                                               "entropy and torch.nn.BCELoss are unsafe to autocast"):
        check_detector(SigmoidBCEDetector, checks=["bf16_channels_last_runs"])


@pytest.mark.slow
@pytest.mark.parametrize("name", DETECTORS.names())
def test_every_detector_trains_under_deterministic_algorithms_with_the_same_numbers_twice(name):
    """``deterministic: true`` on the CPU: no op of the detector lacks a deterministic kernel (torch would raise), fresh
    tensors filled with NaN by torch's deterministic mode are never read, and two same-seed fits score alike."""
    assert check_detector(name, checks=["seeded"], device="cpu", deterministic=True) == []
