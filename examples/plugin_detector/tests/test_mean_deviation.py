"""The plugin's own test: medad's conformance kit, run as any plugin author would."""

from medad_plugin_example.detector import MeanDeviation

from medad.testing import check_detector, parametrize_with_checks


def test_mean_deviation_passes_every_conformance_check():
    check_detector(MeanDeviation)


@parametrize_with_checks([MeanDeviation])
def test_each_check(detector, check):
    check(detector)
