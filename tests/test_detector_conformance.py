"""The detector conformance kit (``medad.testing``) on every registered detector: adding one adds its tests.

Each detector is fitted once with its ``smoke_params`` on a tiny, very obvious synthetic set; each check
is its own test (``pytest -k <name>`` picks one detector).
"""

from __future__ import annotations

import pytest

from medad.registry import DETECTORS
from medad.testing import CHECKS, ConformanceError, check_detector, parametrize_with_checks
from tests.support.detectors import WrongCountDetector


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
