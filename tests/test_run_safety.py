"""A run folder under attack or bad luck: two processes, kill -9, Ctrl-C, full disks, bad ids, permissions.

Each test here failed on the code before the reliability issue (see the issue's note, point by point).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from medad.cli import main
from tests.conftest import REPO_ROOT, write_config

TEMPLATE = "tests.support.detectors:TemplateDistance"
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}


def medad(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medad", *args], capture_output=True, text=True, env=ENV, **kwargs)


def start(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "medad", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def slow_config(tmp_path: Path, seeds=(0, 1, 2, 3), seconds: float = 1.5) -> Path:
    return write_config(tmp_path / "c.yaml", seeds=seeds,
                        detectors=[{"name": TEMPLATE, "label": "slow", "params": {"fit_seconds": seconds}}])


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def command_line(pid: int) -> bytes:
    """The command line of ``pid``; empty for a short-lived child that exited after it was listed."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- 3. one process per run folder -----------------------------------------------------------------
@pytest.mark.processes
def test_a_second_process_on_a_running_run_is_refused_and_the_first_finishes(tmp_path):
    run, release = tmp_path / "r", tmp_path / "release"
    held = write_config(tmp_path / "held.yaml", seeds=(0, 1, 2, 3), detectors=[
        {"name": TEMPLATE, "label": "slow", "params": {"wait_for_file": str(release)}}])
    first = start("run", "--config", str(held), "--results", str(tmp_path), "--run-id", "r", "--quiet")
    wait_for(lambda: (run / "manifest.json").is_file())
    before = sorted(p.name for p in run.rglob("*"))
    second = medad("run", "--resume", str(run), "--quiet")
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr and "in use" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    again = medad("run", "--config", str(slow_config(tmp_path)), "--results", str(tmp_path), "--run-id", "r", "--quiet")
    assert again.returncode == 2 and f"pid {first.pid}" in again.stderr
    report = medad("report", str(run), "--reports", str(tmp_path / "reports"))  # a consistent snapshot meanwhile
    assert report.returncode == 0 and "in progress" in report.stderr, report.stderr
    assert set(before) <= {p.name for p in run.rglob("*")}
    release.touch()
    first.communicate(timeout=120)
    assert first.returncode == 0
    jobs = pd.read_csv(run / "jobs.csv")
    assert len(jobs) == 4 and jobs["job_id"].is_unique and (jobs["status"] == "done").all()
    assert len(pd.read_csv(run / "metrics.csv").query("metric == 'roc_auc'")) == 4


# --- 4. no orphaned workers ---------------------------------------------------------------------------
@pytest.mark.processes
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc")
def test_workers_die_with_a_killed_main_process_and_their_jobs_stay_pending(tmp_path):
    run, release = tmp_path / "r", tmp_path / "release"
    held = write_config(tmp_path / "held.yaml", seeds=tuple(range(6)), detectors=[
        {"name": TEMPLATE, "label": "slow", "params": {"wait_for_file": str(release)}}])
    main_process = start("run", "--config", str(held), "--results", str(tmp_path), "--run-id", "r", "--quiet",
                         "--workers", "2")

    def workers() -> list[int]:
        return [pid for pid in children(main_process.pid) if b"spawn_main" in command_line(pid)]

    wait_for(lambda: len(workers()) == 2, timeout=60)
    spawned = workers()
    time.sleep(1)  # still starting, or inside a job held until the release file appears: either way they must go
    main_process.send_signal(signal.SIGKILL)  # as the out-of-memory killer would
    main_process.communicate()
    wait_for(lambda: not [pid for pid in spawned if alive(pid)], timeout=10)  # gone within 10 s
    release.touch()
    time.sleep(1)
    written = list((run / "jobs").glob("*/job.json")) if (run / "jobs").is_dir() else []
    assert not written  # nobody ran on after the kill
    resumed = medad("run", "--resume", str(run), "--quiet", "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    jobs = pd.read_csv(run / "jobs.csv")
    assert len(jobs) == 6 and jobs["job_id"].is_unique and (jobs["status"] == "done").all()


# --- 5. Ctrl-C ----------------------------------------------------------------------------------------
@pytest.mark.processes
@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_cleanly_with_one_line_and_an_interrupted_manifest(tmp_path, workers):
    run = tmp_path / "r"
    # a terminal's foreground process: Ctrl-C not ignored, even where this test runs in a background job (whose
    # children inherit SIGINT ignored, and Python then keeps ignoring it)
    process = start("run", "--config", str(slow_config(tmp_path)), "--results", str(tmp_path), "--run-id", "r",
                    "--quiet", "--workers", workers, start_new_session=True,
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: any((run / "jobs").glob("*/job.json")) if (run / "jobs").is_dir() else False, timeout=90)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"medad run --resume {run}" in lines[0], err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert not list((run / "jobs").glob(".tmp-*"))
    resumed = medad("run", "--resume", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert (pd.read_csv(run / "jobs.csv")["status"] == "done").sum() == 4


# --- 6. bounded config parsing --------------------------------------------------------------------
def billion_laughs(path: Path, levels: int = 9) -> Path:
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    previous = "a"
    for name in "bcdefghijk"[: levels - 1]:
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]")
        previous = name
    lines += [f"name: *{previous}", "image_size: 64", "datasets: [{name: synthetic}]", "detectors: [{name: ae}]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS as on Linux")
def test_an_alias_bomb_fails_within_seconds_under_4gb_with_a_short_message(tmp_path):
    bomb = billion_laughs(tmp_path / "bomb.yaml")
    assert bomb.stat().st_size < 1000
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "medad", "run", "--config", str(bomb), "--results", str(tmp_path)],
                            capture_output=True, text=True, env=ENV, preexec_fn=_limit_address_space, timeout=120)
    assert result.returncode == 2 and time.time() - started < 30
    assert len(result.stderr.encode()) < 1024 and "bomb.yaml" in result.stderr and "aliases" in result.stderr
    assert not any(p.is_dir() for p in tmp_path.iterdir())


# --- 7 and 8: values and run ids are checked before a run folder is made ----------------------------------
def test_negative_epochs_are_rejected_before_a_run_folder_is_made(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "ae", "params": {"epochs": -3}}])
    results = tmp_path / "results"
    assert main(["run", "--config", str(config), "--results", str(results), "--run-id", "r", "--quiet"]) == 2
    assert "detectors[0].params.epochs: expected int >= 1, got -3" in capsys.readouterr().err
    assert not results.exists()


@pytest.mark.parametrize("run_id", ["../../outside", "ABSOLUTE", ".", "..", "a/b", "x y"])
def test_run_ids_stay_inside_the_results_folder(tmp_path, capsys, run_id):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": TEMPLATE, "label": "t"}])
    results, absolute = tmp_path / "deep" / "results", tmp_path / "absolute-run"
    run_id = str(absolute) if run_id == "ABSOLUTE" else run_id
    assert main(["run", "--config", str(config), "--results", str(results), "--run-id", run_id, "--quiet"]) == 2
    assert "is not a run id" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists() and not absolute.exists() and not (tmp_path / "outside").exists()


def test_a_config_name_that_is_a_path_is_refused(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", name="../../x", detectors=[{"name": TEMPLATE, "label": "t"}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path / "results"), "--quiet"]) == 2
    assert "name: '../../x' is not a run id" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


# --- 9. file-system errors --------------------------------------------------------------------------
def test_results_naming_a_file_is_one_clear_message(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": TEMPLATE, "label": "t"}])
    (tmp_path / "file").write_text("not a folder")
    assert main(["run", "--config", str(config), "--results", str(tmp_path / "file"), "--run-id", "r", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "a file, not a folder" in err and "Traceback" not in err


def test_a_full_disk_is_one_message_leaves_no_staging_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    from medad import atomic_files

    config = write_config(tmp_path / "c.yaml", seeds=(0, 1, 2), detectors=[{"name": TEMPLATE, "label": "t"}])
    real = atomic_files.os.replace
    calls = {"jobs": 0}

    def full_disk(source, target, *args, **kwargs):
        if "/jobs/" in str(target) and Path(target).name == "job.json":
            calls["jobs"] += 1
            if calls["jobs"] == 2:  # the second job's record does not fit on the disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(atomic_files.os, "replace", full_disk)
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "job.json" in err and f"--resume {tmp_path / 'r'}" in err
    assert "Traceback" not in err
    run = tmp_path / "r"
    assert not list((run / "jobs").glob(".tmp-*")) and not list(run.glob(".*.csv.*"))
    assert json.loads((run / "manifest.json").read_text())["status"] == "incomplete"
    monkeypatch.setattr(atomic_files.os, "replace", real)
    assert main(["run", "--resume", str(run), "--quiet"]) == 0
    assert (pd.read_csv(run / "jobs.csv")["status"] == "done").sum() == 3


def test_no_temporary_folders_are_left_outside_the_run(tmp_path, monkeypatch):
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "ae", "params": {"epochs": 1, "width": 4}}])
    raw = config.read_text() + "save_checkpoints: true\n"
    config.write_text(raw)
    assert main(["run", "--config", str(config), "--results", str(tmp_path / "results"), "--run-id", "r", "--quiet"]) == 0
    assert list(scratch.iterdir()) == []
    assert (tmp_path / "results" / "r" / "jobs" / "synthetic__obvious__ae__seed0" / "model.pt").is_file()


# --- 10. permissions ------------------------------------------------------------------------------
@pytest.mark.processes
def test_run_files_and_folders_are_world_readable_under_umask_022(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "ae", "params": {"epochs": 1, "width": 4}}])
    result = subprocess.run([sys.executable, "-m", "medad", "run", "--config", str(config), "--results",
                             str(tmp_path / "results"), "--reports", str(tmp_path / "reports"), "--run-id", "r",
                             "--quiet"], capture_output=True, text=True, env=ENV, preexec_fn=lambda: os.umask(0o022))
    assert result.returncode == 0, result.stderr
    paths = [p for root in (tmp_path / "results" / "r", tmp_path / "reports" / "r") for p in [root, *root.rglob("*")]]
    assert len(paths) > 15
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        wanted = 0o755 if path.is_dir() else 0o644
        assert mode == wanted, f"{path}: {oct(mode)}"


# --- 11. smaller ones ---------------------------------------------------------------------------------
def test_a_plugin_calling_sys_exit_fails_its_job_and_the_matrix_goes_on(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "tests.support.detectors:ExitingDetector",
                                                           "label": "exits"}, {"name": TEMPLATE, "label": "t"}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 1
    jobs = pd.read_csv(tmp_path / "r" / "jobs.csv").set_index("detector")
    assert jobs.loc["exits", "status"] == "failed" and "SystemExit: 3" in jobs.loc["exits", "error"]
    assert jobs.loc["t", "status"] == "done"


def test_a_wrong_score_count_names_the_detector_label(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "tests.support.detectors:WrongCountDetector",
                                                           "label": "short"}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 1
    error = pd.read_csv(tmp_path / "r" / "jobs.csv")["error"][0]
    assert "detector 'short' returned" in error


def test_a_damaged_job_json_is_named_and_its_job_run_again(tmp_path):
    config = write_config(tmp_path / "c.yaml", seeds=(0, 1), detectors=[{"name": TEMPLATE, "label": "t"}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    damaged = tmp_path / "r" / "jobs" / "synthetic__obvious__t__seed1" / "job.json"
    damaged.write_text('{"job_id": "synth')
    result = medad("run", "--resume", str(tmp_path / "r"), "--quiet")
    assert result.returncode == 0 and str(damaged) in result.stderr
    assert json.loads(damaged.read_text())["status"] == "done"


def test_report_of_a_run_without_metrics_csv_rebuilds_it_from_the_job_folders(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": TEMPLATE, "label": "t"}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    (tmp_path / "r" / "metrics.csv").unlink()
    result = medad("report", str(tmp_path / "r"), "--reports", str(tmp_path / "reports"))
    assert result.returncode == 0 and "metrics.csv was missing or empty: rebuilt from the job folders" in result.stderr
    page = (tmp_path / "reports" / "r" / "index.html").read_text()
    assert "rebuilt from the job folders" in page and "roc_auc" in page.lower()
