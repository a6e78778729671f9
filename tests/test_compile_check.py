"""benchmarks/compile_check.py: eager against compiled fits of one detector, on the CPU."""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_compare_compiled_reports_rates_and_the_score_difference():
    spec = importlib.util.spec_from_file_location("compile_check", REPO_ROOT / "benchmarks" / "compile_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # dynamo's graph capture with the eager backend runs the same kernels: the scores must not move at all
    row = module.compare_compiled("ae", image_size=32, batch_size=8, steps=2, device="cpu", backend="eager")
    assert row["detector"] == "ae" and row["max_score_diff"] == 0.0 and row["max_abs_score"] > 0
    assert all(math.isfinite(row[key]) and row[key] > 0 for key in ("eager_img_per_s", "compiled_img_per_s", "eager_fit_s"))
