"""benchmarks/gpu_check.py at CI size on the CPU: every section gives its rows, in one table and one JSON file; its
study estimate shares fits as the dry run does; its deterministic conformance section runs in a process of its own."""

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
    assert study["unit"] == "device-hours" and "3 jobs, 1 fit, 0 unknown" in study["note"]   # OCT's three subsets
    fresh = next(r for r in rows if r["section"] == "conformance" and r["item"] == "process")
    assert "CUBLAS_WORKSPACE_CONFIG=:4096:8 from its start" in fresh["note"]
    assert next(r for r in rows if r["section"] == "conformance" and r["item"] == "ae")["value"] == "pass"
    text = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert all(section in text for section in SECTIONS) and text.strip() in done.stdout


@pytest.mark.processes
def test_the_conformance_section_runs_in_a_fresh_process_started_with_the_cublas_setting(monkeypatch):
    """cuBLAS fixes its workspace at a process's first matrix product on the GPU, which the earlier sections made:
    the deterministic checks run in a process that had CUBLAS_WORKSPACE_CONFIG from its start; this one's
    environment is left as it was."""
    import argparse
    import importlib.util

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # the child process finds its worker function by name
    spec.loader.exec_module(gpu_check)
    args = argparse.Namespace(device="cpu", small=False, detectors=["tests.support.detectors:TemplateDistance"],
                              conformance_budget_s=120.0)
    rows = gpu_check.conformance(args)
    fresh, checked = rows
    assert fresh["item"] == "process" and fresh["value"] != os.getpid()
    assert fresh["note"].startswith("CUBLAS_WORKSPACE_CONFIG=:4096:8 from its start")
    assert checked["item"] == "tests.support.detectors:TemplateDistance" and checked["value"] == "pass", checked
    assert "'deterministic': True" in checked["note"] and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
