"""benchmarks/gpu_check.py at CI size on the CPU: every section gives its rows, in one table and one JSON file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests import dataset_layouts as layouts
from tests.conftest import REPO_ROOT

SECTIONS = ("default run", "packing", "training", "conformance", "study estimate")


@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu_and_tables_every_section(tmp_path):
    layouts.oct(tmp_path / "data" / "oct" / "oct2017")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MEDAD_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--out", str(tmp_path / "out"),
                           "--detectors", "ae,coronet-semi", "--data-root", str(tmp_path / "data")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "small sizes" in done.stdout  # chosen by itself: no CUDA
    rows = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["rows"]
    assert [s for s in SECTIONS if not any(r["section"] == s and r["item"] != "section time" for r in rows)] == []
    assert not [r for r in rows if r["item"] == "error" or r["value"] == "error"]
    value = {r["item"]: r["value"] for r in rows}
    assert value["packing factor"] > 0 and value["1 process"] > 0
    for precision in ("fp32", "bf16"):  # every precision medad accepts, for each detector asked for
        assert any(item.startswith(f"ae {precision} train:") and rate > 0 for item, rate in value.items())
        assert any(item.startswith(f"coronet-semi {precision} train:") for item in value)
    assert value["ganomaly fit per 1000 training images"] > 0
    study = next(r for r in rows if r["item"] == "study total")
    assert study["unit"] == "device-hours" and "3 jobs, 3 fits, 0 unknown" in study["note"]   # OCT's three subsets
    text = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert all(section in text for section in SECTIONS) and text.strip() in done.stdout
