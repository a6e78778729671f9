"""The job matrix end to end: run folder, failing jobs, resume after a kill, worker pool, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from medad.benchmark.config import load_config
from medad.benchmark.engine import run_matrix
from medad.benchmark.jobs import expand_jobs
from medad.benchmark.run_folder import COLUMNS, RunFolder
from medad.cli import main
from tests.conftest import REPO_ROOT, write_config

TEMPLATE = "tests.support.detectors:TemplateDistance"
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def medad(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medad", *args], capture_output=True, text=True, env=ENV, **kwargs)


def test_run_folder_is_complete_and_tidy(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": TEMPLATE, "label": "template"}],
                          seeds=(0, 1), subsets=("obvious", "subtle"))
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    run = tmp_path / "r"
    for name in ("manifest.json", "jobs.csv", "metrics.csv", "scores.csv", "history.csv", "splits.csv"):
        assert (run / name).is_file(), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["end"] and manifest["versions"]["torch"]
    assert manifest["config"]["detectors"][0]["label"] == "template" and "git_commit" in manifest
    jobs = pd.read_csv(run / "jobs.csv")
    assert len(jobs) == 4 and (jobs["status"] == "done").all()
    assert (jobs[["wall_s", "train_s", "score_s", "peak_rss_mb"]] > 0).all().all()
    assert set(jobs["device"]) == {"cpu"}
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns[: len(COLUMNS["metrics"])]) == COLUMNS["metrics"]
    auc = metrics[metrics["metric"] == "roc_auc"]
    assert len(auc) == 4 and auc["value"].between(0, 1).all()
    oracle = metrics[metrics["threshold_policy"].isin(["youden", "best_f1"])]
    assert oracle["oracle"].all() and not metrics[metrics["threshold_policy"] == "val_q95"]["oracle"].any()
    scores = pd.read_csv(run / "scores.csv")
    assert len(scores[scores["part"] == "test"]) == 4 * 24 and set(scores["part"]) == {"test", "val"}
    assert not scores.duplicated(["subset", "seed", "part", "sample_id"]).any()
    splits = pd.read_csv(run / "splits.csv")
    assert len(splits) == 2 * (48 + 12 + 24 + 20) and not splits.duplicated(["subset", "sample_id"]).any()


def test_a_failing_job_is_recorded_and_the_others_go_on(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[
        {"name": "tests.support.detectors:FailingDetector", "label": "failing"},
        {"name": "tests.support.detectors:NaNLossDetector", "label": "nan-loss"},
        {"name": TEMPLATE, "label": "template"}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 1
    jobs = pd.read_csv(tmp_path / "r" / "jobs.csv").set_index("detector")
    assert jobs.loc["template", "status"] == "done"
    assert jobs.loc["failing", "status"] == "failed" and "deliberate failure inside fit" in jobs.loc["failing", "error"]
    assert jobs.loc["nan-loss", "status"] == "failed" and "NonFiniteLossError" in jobs.loc["nan-loss", "error"]
    record = json.loads((tmp_path / "r" / "jobs" / "synthetic__obvious__failing__seed0" / "job.json").read_text())
    assert "Traceback" in record["traceback"]
    metrics = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert set(metrics["detector"]) == {"template"}


def test_fail_fast_marks_the_rest_skipped(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[
        {"name": "tests.support.detectors:FailingDetector", "label": "failing"}, {"name": TEMPLATE, "label": "template"}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet", "--fail-fast"]) == 1
    jobs = pd.read_csv(tmp_path / "r" / "jobs.csv").set_index("detector")
    assert jobs.loc["failing", "status"] == "failed" and jobs.loc["template", "status"] == "skipped"


def test_missing_dataset_root_fails_that_job_with_a_clear_message(tmp_path, monkeypatch):
    from medad.benchmark import job_runner
    from medad.datasets.synthetic import SyntheticHeadCT

    monkeypatch.setattr(SyntheticHeadCT, "needs_download", True)
    job_runner._SUBSET_CACHE.clear()
    config_path = write_config(tmp_path / "c.yaml", detectors=[{"name": TEMPLATE, "label": "template"}])
    # the command stops in the pre-flight check, before a run folder exists ...
    assert main(["run", "--config", str(config_path), "--results", str(tmp_path), "--run-id", "p", "--quiet"]) == 2
    assert not (tmp_path / "p").exists()
    # ... and a job that meets it anyway (the Python engine, no pre-flight) fails with the same advice
    summary = run_matrix(load_config(config_path), RunFolder(tmp_path / "r"), progress=False)
    assert not summary.ok
    error = pd.read_csv(tmp_path / "r" / "jobs.csv")["error"][0]
    assert "--data-root" in error and "synthetic/" in error


@pytest.mark.processes
def test_resume_after_kill_runs_each_job_once(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": TEMPLATE, "label": "slow", "params": {"fit_seconds": 1.5}}],
                          seeds=(0, 1, 2, 3))
    run = tmp_path / "r"
    process = subprocess.Popen([sys.executable, "-m", "medad", "run", "--config", str(config), "--results", str(tmp_path),
                                "--run-id", "r", "--quiet"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while time.time() < deadline and len(list((run / "jobs").glob("*/job.json"))) < 1:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = {p.parent.name: json.loads(p.read_text()) for p in (run / "jobs").glob("*/job.json")}
    assert 1 <= len(first) < 4, "the kill should land part-way"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "running"

    resumed = medad("run", "--resume", str(run))  # not --quiet: the resume's summary is an INFO line
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(first)} of 4 jobs already done" in resumed.stderr
    for job_id, record in first.items():  # finished jobs were not run again
        assert json.loads((run / "jobs" / job_id / "job.json").read_text())["started"] == record["started"]
    jobs = pd.read_csv(run / "jobs.csv")
    assert len(jobs) == 4 and jobs["job_id"].is_unique and (jobs["status"] == "done").all()
    metrics = pd.read_csv(run / "metrics.csv")
    assert not metrics.duplicated(["seed", "metric", "threshold_policy"]).any()
    assert len(metrics[metrics["metric"] == "roc_auc"]) == 4
    scores = pd.read_csv(run / "scores.csv")
    assert not scores.duplicated(["seed", "part", "sample_id"]).any()
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"


def test_resume_of_a_finished_run_runs_nothing(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": TEMPLATE, "label": "t"}])
    main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"])
    before = (tmp_path / "r" / "jobs" / "synthetic__obvious__t__seed0" / "job.json").read_text()
    assert main(["run", "--resume", str(tmp_path / "r"), "--quiet"]) == 0
    assert (tmp_path / "r" / "jobs" / "synthetic__obvious__t__seed0" / "job.json").read_text() == before


def test_an_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": TEMPLATE, "label": "t"}])
    main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_workers_1_and_2_give_the_same_metrics_and_scores(tmp_path):
    import torch

    tiny_ae = {"name": "ae", "label": "ae", "params": {"epochs": 1, "width": 4, "latent": 8, "batch_size": 16}}
    config_path = write_config(tmp_path / "c.yaml", detectors=[{"name": TEMPLATE, "label": "t"}, tiny_ae],
                               seeds=(0, 1), subsets=("obvious", "subtle"))
    config = load_config(config_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread per job, as each pool worker has on this machine
    try:
        serial = run_matrix(config, RunFolder(tmp_path / "serial"), workers=1, progress=False)
    finally:
        torch.set_num_threads(threads)
    pooled = run_matrix(config, RunFolder(tmp_path / "pooled"), workers=2, progress=False)
    assert serial.ok and pooled.ok
    for table, columns in (("metrics", ["dataset", "subset", "detector", "seed", "metric", "threshold_policy"]),
                           ("scores", ["dataset", "subset", "detector", "seed", "part", "sample_id"])):
        a = pd.read_csv(tmp_path / "serial" / f"{table}.csv").sort_values(columns).reset_index(drop=True)
        b = pd.read_csv(tmp_path / "pooled" / f"{table}.csv").sort_values(columns).reset_index(drop=True)
        value = "value" if table == "metrics" else "score"
        assert len(a) == len(b) and (a[columns].astype(str) == b[columns].astype(str)).all().all()
        pd.testing.assert_series_equal(a[value], b[value], atol=0, rtol=0)
    workers = set(pd.read_csv(tmp_path / "pooled" / "jobs.csv")["worker"].str.split(":").str[1])
    assert workers <= {"worker0", "worker1"} and workers
    assert set(pd.read_csv(tmp_path / "serial" / "jobs.csv")["worker"].str.split(":").str[1]) == {"main"}


def test_a_cpu_run_gets_one_single_threaded_worker_per_core_as_memory_allows(monkeypatch):
    from medad.benchmark import executors
    from medad.benchmark.executors import InProcessExecutor, ProcessPoolExecutor, make_executor

    monkeypatch.delenv("MEDAD_WORKERS", raising=False)
    monkeypatch.setattr(executors, "usable_cores", lambda: 4)
    monkeypatch.setattr(executors, "available_memory_gb", lambda: 64.0)
    pool = make_executor("local", "cpu", None, jobs=18)
    assert isinstance(pool, ProcessPoolExecutor) and pool.workers == 4 and pool.threads_per_worker == 1
    assert make_executor("local", "cpu", None, jobs=3).workers == 3          # no idle workers
    assert isinstance(make_executor("local", "cpu", None, jobs=1), InProcessExecutor)
    monkeypatch.setattr(executors, "available_memory_gb", lambda: 5.2)   # two workers' worth of memory
    capped = make_executor("local", "cpu", None, jobs=18)
    assert capped.workers == 2 and capped.threads_per_worker == 2
    assert isinstance(make_executor("local", "cpu", 1, jobs=18), InProcessExecutor)   # --workers 1: in this process
    monkeypatch.setenv("MEDAD_WORKERS", "1")
    assert isinstance(make_executor("local", "cpu", None, jobs=18), InProcessExecutor)
    monkeypatch.setenv("MEDAD_WORKERS", "two")
    with pytest.raises(ValueError, match="MEDAD_WORKERS='two'"):
        make_executor("local", "cpu", None, jobs=18)
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        make_executor("local", "cpu", 0, jobs=18)


def test_a_pool_takes_each_detectors_jobs_side_by_side(tmp_path):
    from medad.benchmark.executors.local import queue_order

    config = load_config(write_config(tmp_path / "c.yaml", detectors=[{"name": "ae"}, {"name": TEMPLATE, "label": "t"}],
                                      seeds=(0, 1), subsets=("obvious", "subtle")))
    jobs = expand_jobs(config)
    assert [j.detector for j in jobs[:4]] == ["ae", "ae", "t", "t"]            # the matrix: subset, detector, seed
    ordered = [unit.leader for unit in queue_order(jobs)]  # lone jobs: units of one
    assert [j.detector for j in ordered] == ["ae"] * 4 + ["t"] * 4
    assert [j.job_id for j in ordered if j.detector == "ae"] == [j.job_id for j in jobs if j.detector == "ae"]


def test_jobs_expand_dataset_by_subset_by_detector_by_seed(tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml", detectors=[{"name": "ae"}, {"name": TEMPLATE, "label": "t"}],
                                      seeds=(0, 1), subsets=("obvious", "subtle")))
    jobs = expand_jobs(config)
    assert len(jobs) == 8 and len({j.job_id for j in jobs}) == 8
    assert jobs[0].job_id == "synthetic__obvious__ae__seed0"


def test_cli_end_to_end_with_run_benchmark_script(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "ae", "params": {"epochs": 1, "width": 8, "latent": 8}}])
    result = subprocess.run([sys.executable, str(REPO_ROOT / "run_benchmark.py"), "--config", str(config), "--results",
                             str(tmp_path), "--run-id", "cli", "--quiet", "--device", "cpu"],
                            capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "roc_auc" in result.stdout and "synthetic/obvious" in result.stdout
    assert f"run folder: {tmp_path / 'cli'}" in result.stdout


def test_cli_reports_config_errors_with_exit_status_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nimage_size: 32\ndatasets: [{name: synthetic}]\ndetectors: [{name: ae, params: {epoch: 1}}]\n")
    result = medad("run", "--config", str(bad), "--results", str(tmp_path))
    assert result.returncode == 2 and "detectors[0].params.epoch: unknown parameter" in result.stderr


def test_precision_and_memory_format_reach_the_job_and_bf16_rows_are_tagged(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "ae", "params": {"epochs": 1, "width": 4}}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "fp32", "--quiet"]) == 0
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "bf16", "--quiet",
                 "--precision", "bf16", "--memory-format", "channels_last"]) == 0
    plain = pd.read_csv(tmp_path / "fp32" / "metrics.csv")
    mixed = pd.read_csv(tmp_path / "bf16" / "metrics.csv")
    assert "precision" not in plain.columns  # fp32 is the default and carries no tag
    assert set(mixed["precision"]) == {"bf16"}
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert (manifest["config"]["precision"], manifest["config"]["memory_format"]) == ("bf16", "channels_last")
    job = expand_jobs(load_config(config))[0]
    assert (job.precision, job.memory_format) == ("fp32", "auto")
    resumed = medad("run", "--resume", str(tmp_path / "fp32"), "--precision", "bf16", "--quiet")
    assert resumed.returncode != 0 and "this run was started with precision fp32" in resumed.stderr


def test_each_job_keeps_its_log_with_a_line_per_epoch_and_no_live_log_is_left(tmp_path):
    from medad.detectors.base import TrainLog

    lines = []
    log = TrainLog(sink=lines.append)
    for epoch in log.epochs(2):
        log.log(epoch, 0, loss=1.0 + epoch)
        log.log(epoch, 1, loss=2.0 + epoch)
    assert [line.split(": ", 1)[1] for line in lines] == ["loss=1.5", "loss=2.5"]   # each epoch's own mean
    assert lines[0].startswith("epoch 1/2 (") and lines[1].startswith("epoch 2/2 (")
    lines.clear()
    for epoch in log.epochs(2):  # a second phase numbering its epochs on after the first (f-AnoGAN's encoder)
        log.log(2 + epoch, 0, encoder=3.0 + epoch)
    assert [line.split(": ", 1)[1] for line in lines] == ["encoder=3", "encoder=4"]

    tiny_ae = {"name": "ae", "params": {"epochs": 2, "width": 4, "latent": 8, "batch_size": 16}}
    config = load_config(write_config(tmp_path / "c.yaml", detectors=[tiny_ae]))
    assert run_matrix(config, RunFolder(tmp_path / "r"), workers=1, progress=False).ok
    text = (tmp_path / "r" / "jobs" / "synthetic__obvious__ae__seed0" / "log.txt").read_text()
    assert "synthetic__obvious__ae__seed0: ae (ae) on synthetic/obvious, seed 0" in text
    assert "epoch 1/2" in text and "epoch 2/2" in text and "mse=" in text and "ROC AUC" in text
    assert "done in" in text.splitlines()[-1]
    assert not list((tmp_path / "r" / "jobs").glob(".*.log"))                        # the live log is gone


def test_the_manifest_and_every_job_row_say_how_the_jobs_were_placed(tmp_path):
    import torch

    config = load_config(write_config(tmp_path / "c.yaml", detectors=[{"name": TEMPLATE, "label": "t"}], seeds=(0, 1)))
    summary = run_matrix(config, RunFolder(tmp_path / "r"), workers=1, progress=False)
    assert summary.ok
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["placement"] == {"workers": 1, "threads": torch.get_num_threads()}
    assert set(pd.read_csv(tmp_path / "r" / "jobs.csv")["threads"]) == {torch.get_num_threads()}
    run_matrix(config, RunFolder(tmp_path / "r"), workers=1, progress=False, resume=True)   # a session of its own
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["sessions"][-1]["placement"]["workers"] == 1
