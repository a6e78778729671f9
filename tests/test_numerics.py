"""The run's arithmetic settings: ``deterministic`` and ``precision`` (fp32 = TF32 off, tf32 tagged), set per job."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from medad.benchmark.config import ConfigError, load_config, narrow, parse_config
from medad.benchmark.jobs import expand_jobs
from medad.benchmark.numerics import (
    CUBLAS_WORKSPACE_ENV,
    NumericsState,
    check_precision_on,
    configure_numerics,
    numerics,
    set_cublas_workspace,
)
from medad.cli import main
from tests.conftest import write_config

PROBE = "tests.support.detectors:NumericsProbe"


@pytest.fixture
def restore_numerics(monkeypatch):
    """Put the process's flags and the cuBLAS variable back after a test that sets them."""
    monkeypatch.delenv(CUBLAS_WORKSPACE_ENV, raising=False)
    previous = NumericsState.current()
    yield
    previous.apply()


def flags() -> dict:
    return {"deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic, "benchmark": torch.backends.cudnn.benchmark,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_precision": torch.get_float32_matmul_precision()}


FP32 = {"matmul_tf32": False, "cudnn_tf32": False, "matmul_precision": "highest"}


def test_each_job_sets_every_flag_so_no_setting_of_a_previous_job_leaks(restore_numerics):
    torch.backends.cudnn.benchmark = True  # what a previous job (or PyTorch's default for cuDNN's TF32) left
    torch.backends.cudnn.allow_tf32 = True
    configure_numerics("fp32", False)
    assert flags() == {"deterministic": False, "cudnn_deterministic": False, "benchmark": False, **FP32}
    assert CUBLAS_WORKSPACE_ENV not in os.environ
    configure_numerics("fp32", True)
    assert flags() == {"deterministic": True, "cudnn_deterministic": True, "benchmark": False, **FP32}
    assert os.environ[CUBLAS_WORKSPACE_ENV] == ":4096:8"
    configure_numerics("tf32", False)
    assert flags() == {"deterministic": False, "cudnn_deterministic": False, "benchmark": False, "matmul_tf32": True,
                       "cudnn_tf32": True, "matmul_precision": "high"}
    configure_numerics("bf16", False)  # autocast does the bf16; what stays float32 gets no TF32
    assert flags() == {"deterministic": False, "cudnn_deterministic": False, "benchmark": False, **FP32}


def test_numerics_block_restores_the_flags_it_found(restore_numerics):
    configure_numerics("tf32", False)
    before = flags()
    with numerics("fp32", True):
        assert flags()["deterministic"] and not flags()["matmul_tf32"]
    assert flags() == before


def test_cublas_workspace_keeps_a_deterministic_setting_and_replaces_any_other():
    environ = {}
    set_cublas_workspace(environ)
    assert environ == {CUBLAS_WORKSPACE_ENV: ":4096:8"}
    environ = {CUBLAS_WORKSPACE_ENV: ":16:8"}
    set_cublas_workspace(environ)
    assert environ[CUBLAS_WORKSPACE_ENV] == ":16:8"
    environ = {CUBLAS_WORKSPACE_ENV: ":0:0"}
    set_cublas_workspace(environ)
    assert environ[CUBLAS_WORKSPACE_ENV] == ":4096:8"


def test_tf32_is_refused_on_the_cpu_and_accepted_on_cuda():
    with pytest.raises(ValueError, match="precision tf32 is TensorFloat-32 on CUDA GPUs; on cpu it would be fp32"):
        check_precision_on(torch.device("cpu"), "tf32")
    check_precision_on(torch.device("cuda"), "tf32")
    check_precision_on(torch.device("cpu"), "bf16")


def config(**top) -> dict:
    return {"name": "t", "image_size": 32, "datasets": [{"name": "synthetic"}], "detectors": [{"name": "ae"}], **top}


def test_deterministic_is_a_config_key_a_set_override_and_a_narrow_option(tmp_path):
    assert parse_config(config()).deterministic is False
    assert parse_config(config(deterministic=True)).deterministic is True
    with pytest.raises(ConfigError, match="deterministic: expected bool, got str"):
        parse_config(config(deterministic="yes"))
    with pytest.raises(ConfigError, match="deterministic: true turns TF32 off, and precision is tf32"):
        parse_config(config(deterministic=True, precision="tf32"))
    path = write_config(tmp_path / "c.yaml", detectors=[{"name": "ae"}])
    loaded = load_config(path, ["deterministic=true"])
    assert loaded.deterministic is True and all(job.deterministic for job in expand_jobs(loaded))
    assert narrow(load_config(path), deterministic=True).deterministic is True
    assert narrow(loaded, precision="bf16").deterministic is True
    with pytest.raises(ConfigError, match="--deterministic: true turns TF32 off, and --precision is tf32"):
        narrow(loaded, precision="tf32")


def test_deterministic_run_sets_the_flags_before_the_detector_is_built_and_tags_every_row(tmp_path, restore_numerics,
                                                                                           capsys):
    path = write_config(tmp_path / "c.yaml", detectors=[{"name": PROBE, "label": "probe"}], seeds=(0, 1))
    assert main(["run", "--config", str(path), "--results", str(tmp_path), "--run-id", "det", "--quiet",
                 "--deterministic"]) == 0
    rows = pd.read_csv(tmp_path / "det" / "metrics.csv", dtype=str)
    assert set(rows["deterministic"].str.lower()) == {"true"}  # pandas writes the merged tag as True
    assert set(rows["probe_deterministic"]) == {"True"} and set(rows["probe_cublas"]) == {":4096:8"}
    assert set(rows["probe_cudnn"]) == {"deterministic=True benchmark=False"}
    assert set(rows["probe_tf32"]) == {"matmul=False cudnn=False highest"}
    assert json.loads((tmp_path / "det" / "manifest.json").read_text())["config"]["deterministic"] is True

    # the next run in the same process: its jobs turn deterministic algorithms off again, and carry no tag
    assert main(["run", "--config", str(path), "--results", str(tmp_path), "--run-id", "plain", "--quiet"]) == 0
    rows = pd.read_csv(tmp_path / "plain" / "metrics.csv", dtype=str)
    assert "deterministic" not in rows.columns and set(rows["probe_deterministic"]) == {"False"}
    assert set(rows["probe_cudnn"]) == {"deterministic=False benchmark=False"}

    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path / "plain"), "--deterministic", "--quiet"]) == 2
    assert "--deterministic: this run was started without it" in capsys.readouterr().err


def test_tf32_on_the_cpu_is_refused_before_the_run(tmp_path, capsys):
    path = write_config(tmp_path / "c.yaml", detectors=[{"name": PROBE, "label": "probe"}])
    assert main(["run", "--config", str(path), "--results", str(tmp_path), "--run-id", "t", "--quiet",
                 "--precision", "tf32"]) == 2
    assert "precision: tf32 is TensorFloat-32 on CUDA GPUs and this run's device is the CPU" in capsys.readouterr().err


def test_extend_keeps_the_runs_deterministic_setting():
    from medad.benchmark.engine import extend_config

    run = parse_config(config(deterministic=True))
    with pytest.raises(ConfigError, match="--extend: deterministic false but the run's is true: rows would not compare"):
        extend_config(run, parse_config(config(seeds=[1])))
    assert extend_config(run, parse_config(config(seeds=[1], deterministic=True))).deterministic is True


# --- timings run under the job's flags (calibration, throughput benchmark) ----------------------------------------
FIT_PROBE = "tests.support.detectors:FitFlagsProbe"
LEFT_OVER = NumericsState(deterministic=False, warn_only=True, cudnn_deterministic=True, cudnn_benchmark=True,
                          matmul_tf32=True, cudnn_tf32=True, matmul_precision="high")  # what earlier code left set


@pytest.mark.parametrize(("precision", "deterministic"), [("fp32", False), ("fp32", True), ("bf16", False),
                                                          ("tf32", False)])
def test_a_calibration_and_a_throughput_benchmark_fit_under_the_flags_the_job_sets(tmp_path, monkeypatch,
                                                                                   restore_numerics, precision,
                                                                                   deterministic):
    """On the CPU the flags are settable without CUDA, so what a fit runs under is observable here: a job, the cost
    estimate's calibration and benchmarks/throughput.py must read the same flags during their fits."""
    import importlib.util
    from dataclasses import replace
    from types import SimpleNamespace

    from medad.benchmark import numerics as numerics_module
    from medad.benchmark.estimate import estimate_jobs
    from medad.benchmark.job_runner import compute_job
    from tests.conftest import REPO_ROOT
    from tests.support.detectors import FitFlagsProbe

    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    if precision == "tf32":  # a CUDA setting, refused on this CPU: lifted here, the flags are set all the same
        monkeypatch.setattr(numerics_module, "check_precision_on", lambda device, precision: None)
    raw = config(detectors=[{"name": FIT_PROBE, "label": "probe"}])
    raw["datasets"] = [{"name": "synthetic", "subsets": ["obvious"], "params": {"n_train": 16, "n_val": 8, "n_test": 16}}]
    job = replace(expand_jobs(parse_config(raw))[0], precision=precision, deterministic=deterministic)
    FitFlagsProbe.seen.clear()
    LEFT_OVER.apply()
    assert compute_job(job, "r").record["status"] == "done"
    (during_job,) = FitFlagsProbe.seen
    assert during_job["matmul_tf32"] is during_job["cudnn_tf32"] is (precision == "tf32")
    assert during_job["deterministic"] is deterministic and during_job["cudnn_benchmark"] is False

    FitFlagsProbe.seen.clear()
    LEFT_OVER.apply()
    estimate_jobs([job], n_cal=16, use_cache=False)  # the dry run's estimate: a calibration of the job's setting
    assert FitFlagsProbe.seen and all(seen == during_job for seen in FitFlagsProbe.seen)
    assert NumericsState.current() == LEFT_OVER  # restored after the timing

    spec = importlib.util.spec_from_file_location("throughput", REPO_ROOT / "benchmarks" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    FitFlagsProbe.seen.clear()
    LEFT_OVER.apply()
    settings = SimpleNamespace(device="cpu", image_size=32, channels=1, batch_size=4, steps=1, score_images=4,
                               memory_format="auto", precision=precision, deterministic=deterministic)
    throughput.measure(FIT_PROBE, settings, {}, count_flops=False)
    assert FitFlagsProbe.seen == [during_job]
    assert NumericsState.current() == LEFT_OVER  # restored after the benchmark

