"""Executors past one process: Ray tasks, SLURM arrays (submitit's local executor), the multi-GPU local pool.

The Ray and SLURM runs must give the same metrics.csv as the local executor for the same seeds; a Ray
worker killed mid-job is retried; a job that fails by itself runs once; --resume works across executors.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from medad.benchmark.config import ConfigError, load_config, parse_config
from medad.benchmark.engine import config_from_manifest, run_matrix
from medad.benchmark.executors import ProcessPoolExecutor, make_executor, visible_gpu_ids
from medad.benchmark.executors.remote import JobResources, job_resources
from medad.benchmark.fit_sharing import as_unit
from medad.benchmark.jobs import expand_jobs
from medad.benchmark.run_folder import RunFolder
from medad.cli import main
from tests.conftest import REPO_ROOT, write_config

pytestmark = pytest.mark.xdist_group("test_cluster_executors")  # its tests share a module fixture: one worker builds it

AE = {"name": "ae", "params": {"epochs": 2, "batch_size": 16, "width": 8, "latent": 16}}
SUBSETS = ("obvious", "subtle")
PROBES = "tests.support.cluster_probes"


def run(config_path: Path, folder: Path, executor: str = "local", resume: bool = False, **options) -> RunFolder:
    """Run (or resume) the matrix of ``config_path`` into ``folder`` with ``executor``."""
    run_folder = RunFolder(folder)
    config = config_from_manifest(run_folder.read_manifest()) if resume else load_config(config_path)
    run_matrix(config, run_folder, executor=executor, resume=resume, progress=False, argv=["test"],
               executor_options=options)
    return run_folder


def table(run_folder: RunFolder, name: str) -> pd.DataFrame:
    frame = pd.read_csv(run_folder.path / f"{name}.csv")
    keys = [c for c in ("dataset", "subset", "detector", "seed", "metric", "threshold_policy", "part", "sample_id")
            if c in frame.columns]
    return frame.sort_values(keys).reset_index(drop=True)


def assert_same_results(left: RunFolder, right: RunFolder) -> None:
    """Same rows in metrics.csv and scores.csv; values equal within 1e-6."""
    for name in ("metrics", "scores"):
        pd.testing.assert_frame_equal(table(left, name), table(right, name), check_exact=False, atol=1e-6, rtol=0)


def workers(run_folder: RunFolder) -> dict[str, str]:
    """job id -> the ``worker`` column (host:label:pid) of jobs.csv."""
    jobs = pd.read_csv(run_folder.path / "jobs.csv", keep_default_na=False)
    assert jobs["job_id"].is_unique, "a job appears twice in jobs.csv"
    return dict(zip(jobs["job_id"], jobs["worker"]))


def statuses(run_folder: RunFolder) -> dict[str, str]:
    jobs = pd.read_csv(run_folder.path / "jobs.csv", keep_default_na=False)
    assert jobs["job_id"].is_unique, "a job appears twice in jobs.csv"
    return dict(zip(jobs["job_id"], jobs["status"]))


@pytest.fixture(scope="module")
def ae_config(tmp_path_factory) -> Path:
    """The default config shortened: ae on tiny synthetic phantoms, two subsets, two epochs."""
    return write_config(tmp_path_factory.mktemp("config") / "tiny.yaml", detectors=[AE], subsets=SUBSETS)


@pytest.fixture(scope="module")
def local_run(ae_config, tmp_path_factory) -> RunFolder:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a Ray or SLURM task asking for 1 CPU runs with 1 thread
    try:
        return run(ae_config, tmp_path_factory.mktemp("local") / "tiny")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})  # workers import tests.support
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_run(ae_config, ray_session, tmp_path_factory) -> RunFolder:
    return run(ae_config, tmp_path_factory.mktemp("ray") / "tiny", executor="ray")


# --- Ray ---------------------------------------------------------------------------------------------------
def test_ray_run_gives_the_local_run_metrics(local_run, ray_run):
    assert_same_results(local_run, ray_run)
    assert set(statuses(ray_run).values()) == {"done"}
    assert all(":ray:" in worker for worker in workers(ray_run).values())
    assert RunFolder(ray_run.path).read_manifest()["executor"] == "ray"


def test_resume_works_across_executors(local_run, ray_run, tmp_path):
    job_id = "synthetic__subtle__ae__seed0"
    for started, finisher in ((ray_run, "local"), (local_run, "ray")):
        folder = tmp_path / f"{finisher}" / "tiny"  # the run id (folder name) stays the same
        shutil.copytree(started.path, folder)
        shutil.rmtree(folder / "jobs" / job_id)  # as if the run had been stopped before that job finished
        before = workers(started)
        resumed = run(Path("unused"), folder, executor=finisher, resume=True)
        assert_same_results(local_run, resumed)
        after = workers(resumed)
        assert ({j: w for j, w in after.items() if j != job_id} == {j: w for j, w in before.items() if j != job_id})
        assert f":{'main' if finisher == 'local' else 'ray'}:" in after[job_id]
        assert resumed.read_manifest()["sessions"][-1]["executor"] == finisher


def _descends_from_this_process(pid: int) -> bool:
    """Whether ``pid`` was started (through the raylet) by this test process: no other session's Ray is touched."""
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])  # the parent's pid
        except (OSError, ValueError, IndexError):
            return False
        if pid == os.getpid():
            return True
    return False


def _kill_first_ray_task(killed: list[int], stop: threading.Event, title: bytes = b"ray::medad:") -> None:
    """SIGKILL the first Ray worker process seen running a medad job (Ray titles it ``ray::<task name>``)."""
    while not stop.is_set():
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    command = handle.read()
            except OSError:
                continue
            if command.startswith(title) and _descends_from_this_process(int(entry)):
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
                return
        time.sleep(0.02)


def run_with_a_killed_worker(config_path: Path, folder: Path, **options) -> tuple[RunFolder, int]:
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_ray_task, args=(killed, stop), daemon=True)
    killer.start()
    try:
        run_folder = run(config_path, folder, executor="ray", **options)
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1, "no Ray worker was seen running a job"
    return run_folder, killed[0]


def test_a_ray_worker_killed_mid_job_is_retried_and_each_job_recorded_once(ae_config, ray_session, local_run, tmp_path):
    run_folder, killed = run_with_a_killed_worker(ae_config, tmp_path / "tiny", max_retries=1)
    assert statuses(run_folder) == {job: "done" for job in statuses(local_run)}
    assert all(not worker.endswith(f":{killed}") for worker in workers(run_folder).values())
    assert_same_results(local_run, run_folder)


def test_a_job_lost_past_its_retries_is_recorded_failed_then_resumed(ae_config, ray_session, local_run, tmp_path):
    run_folder, killed = run_with_a_killed_worker(ae_config, tmp_path / "tiny", max_retries=0)
    jobs = pd.read_csv(run_folder.path / "jobs.csv", keep_default_na=False).set_index("job_id")
    assert sorted(jobs["status"]) == ["done", "failed"]
    assert jobs.loc[jobs["status"] == "failed", "error"].iloc[0].startswith("lost after 0 retries")
    assert run_folder.read_manifest()["status"] == "incomplete"
    resumed = run(Path("unused"), run_folder.path, executor="ray", resume=True)
    assert set(statuses(resumed).values()) == {"done"}
    assert_same_results(local_run, resumed)


def test_a_job_failing_by_itself_runs_once_and_is_recorded_failed(ray_session, tmp_path):
    count_file = tmp_path / "fits.txt"
    config = write_config(tmp_path / "failing.yaml", detectors=[
        {"name": f"{PROBES}:CountedFailure", "label": "fails", "params": {"count_file": str(count_file)}},
        {"name": "tests.support.detectors:TemplateDistance", "label": "template"}])
    run_folder = run(config, tmp_path / "failing", executor="ray", max_retries=2)
    jobs = pd.read_csv(run_folder.path / "jobs.csv", keep_default_na=False).set_index("detector")
    assert jobs.loc["fails", "status"] == "failed"
    assert "deliberate failure inside fit" in jobs.loc["fails", "error"]
    assert jobs.loc["template", "status"] == "done"
    assert len(count_file.read_text().splitlines()) == 1, "a job that failed by itself was run again"


class _RecordingTask:
    """Stands in for a Ray remote function: keeps the options of each submission."""

    def __init__(self) -> None:
        self.submitted: list[dict] = []

    def options(self, **options):
        self.submitted.append(options)
        return self

    def remote(self, *args):
        return len(self.submitted)


def test_a_ray_task_asks_for_the_resources_its_config_states(tmp_path):
    from medad.benchmark.executors.ray import RayExecutor

    raw = {"name": "r", "image_size": 32, "device": "auto", "resources": {"cpus": 2, "memory_gb": 1.5},
           "datasets": [{"name": "synthetic", "subsets": ["obvious"]}],
           "detectors": [{"name": "ae"}, {"name": "ae", "label": "ae-cpu", "resources": {"gpus": 0, "cpus": 1}}]}
    jobs = expand_jobs(parse_config(raw))
    task, executor = _RecordingTask(), RayExecutor(max_retries=3)
    for job in jobs:
        executor._submit(None, task, job, "r", gpus_available=True)
    first, second = task.submitted
    assert (first["num_cpus"], first["num_gpus"], first["memory"]) == (2, 1, int(1.5 * 2**30))
    assert (second["num_cpus"], second["num_gpus"]) == (1, 0)
    assert first["max_retries"] == 3 and first["retry_exceptions"] is False
    assert first["name"] == f"medad:{jobs[0].job_id}"


def test_job_resources_default_to_one_cpu_and_a_gpu_only_where_the_cluster_has_one():
    raw = {"name": "r", "image_size": 32, "datasets": [{"name": "synthetic", "subsets": ["obvious"]}],
           "detectors": [{"name": "ae"}]}
    job = expand_jobs(parse_config(raw))[0]
    assert job_resources(job, gpus_available=True) == JobResources(cpus=1, gpus=1, memory_gb=None, time_min=720)
    assert job_resources(job, gpus_available=False).gpus == 0
    cpu_job = expand_jobs(parse_config({**raw, "device": "cpu"}))[0]
    assert job_resources(cpu_job, gpus_available=True).gpus == 0


def test_config_resources_are_validated_and_survive_the_manifest():
    raw = {"name": "r", "image_size": 32, "resources": {"cpus": 4, "time_min": 30},
           "datasets": [{"name": "synthetic", "subsets": ["obvious"]}],
           "detectors": [{"name": "ae", "resources": {"gpus": 2}}]}
    config = parse_config(raw)
    assert expand_jobs(config)[0].resources == {"cpus": 4, "time_min": 30, "gpus": 2}
    assert config_from_manifest({"config": config.to_dict()}) == config  # what --resume reads back
    with pytest.raises(ConfigError, match=r"resources\.gpu: unknown resource; did you mean 'gpus'\? Allowed: cpus, gpus"):
        parse_config({**raw, "resources": {"gpu": 1}})
    with pytest.raises(ConfigError, match=r"detectors\[0\]\.resources\.cpus: expected float >= 1"):
        parse_config({**raw, "detectors": [{"name": "ae", "resources": {"cpus": 0}}]})


@pytest.mark.parametrize("submitit", ["as installed", "missing"])
def test_cluster_options_need_their_executor(ae_config, tmp_path, capsys, monkeypatch, submitit):
    if submitit == "missing":  # as after the README's install (.[dev]): the option's typo is still what is named
        monkeypatch.setitem(sys.modules, "submitit", None)
    assert main(["run", "--config", str(ae_config), "--results", str(tmp_path), "--ray-address", "auto"]) == 2
    assert "--ray-address needs --executor ray" in capsys.readouterr().err
    assert main(["run", "--config", str(ae_config), "--results", str(tmp_path), "--executor", "slurm",
                 "--slurm-param", "partition"]) == 2
    assert "--slurm-param expects KEY=VALUE" in capsys.readouterr().err


# --- SLURM through submitit ----------------------------------------------------------------------------------
def test_slurm_array_on_submitits_local_executor_gives_the_local_run_metrics(ae_config, local_run, tmp_path):
    pytest.importorskip("submitit")
    run_folder = run(ae_config, tmp_path / "tiny", executor="slurm", slurm_cluster="local")
    assert_same_results(local_run, run_folder)
    assert set(statuses(run_folder).values()) == {"done"}
    assert any((run_folder.path / "submitit").glob("*_log.out")), "submitit wrote no job logs"


class _LostHandle:
    """A submitit job whose node went away: no result."""

    job_id = "4242_0"

    def result(self):
        import submitit

        raise submitit.core.utils.UncompletedJobError("Job 4242_0 (task: 0) with path ... has not produced any output")


def test_a_slurm_task_lost_is_submitted_again_then_recorded_failed(ae_config, tmp_path):
    submitit = pytest.importorskip("submitit")
    from medad.benchmark.executors.slurm import SlurmExecutor

    job = expand_jobs(load_config(ae_config))[0]
    run_folder, records = RunFolder(tmp_path / "tiny"), []
    executor = SlurmExecutor(cluster="local", max_retries=1)
    assert executor._collect(submitit, _LostHandle(), [as_unit(job)], 0, run_folder, records.append) is True
    assert records == [] and run_folder.job_record(job.job_id) is None
    assert executor._collect(submitit, _LostHandle(), [as_unit(job)], 1, run_folder, records.append) is False
    record = run_folder.job_record(job.job_id)
    assert record["status"] == "failed" and record["error"].startswith("lost after 1 retries (SLURM job 4242_0)")
    assert records == [record]


# --- the local multi-GPU pool, with the GPU count faked -------------------------------------------------------
def test_visible_gpu_ids_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpu_ids() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpu_ids() == ["3", "5"]
    with pytest.raises(ValueError, match="--workers 3 but only 2 GPUs"):
        make_executor("local", "auto", 3)


def run_device_probes(executor, tmp_path, seeds: tuple[int, ...]) -> tuple[list, list[dict], pd.Series, RunFolder]:
    """Run the device probe on SUBSETS x ``seeds`` with ``executor``; check every job finished once. Returns the
    jobs, their records, the CUDA_VISIBLE_DEVICES each (subset, seed) saw, and the run folder."""
    probe = {"name": f"{PROBES}:DeviceProbe", "label": "probe", "params": {"barrier_dir": str(tmp_path / "barrier")}}
    config = load_config(write_config(tmp_path / "probe.yaml", detectors=[probe], subsets=SUBSETS, seeds=seeds))
    jobs = expand_jobs(config)
    run_folder = RunFolder(tmp_path / "pool")
    records: list[dict] = []
    executor.run(jobs, run_folder, records.append, progress=False)
    run_folder.merge()
    assert sorted(r["job_id"] for r in records) == sorted(job.job_id for job in jobs)
    assert {r["status"] for r in records} == {"done"}
    metrics = pd.read_csv(run_folder.path / "metrics.csv", dtype={"cuda_visible_devices": str})
    return jobs, records, metrics.groupby(["subset", "seed"])["cuda_visible_devices"].unique(), run_folder


def test_local_pool_gives_each_worker_one_gpu_and_spreads_jobs_over_all(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    executor = make_executor("local", "auto", None)
    monkeypatch.undo()  # the workers are fresh processes; this one goes back to its real torch
    assert isinstance(executor, ProcessPoolExecutor) and executor.gpu_ids == ["0", "1"]

    jobs, records, seen, _ = run_device_probes(executor, tmp_path, seeds=(0,))
    # the barrier holds each worker's first job until both workers have one: with two jobs, each runs exactly one
    assert all(len(values) == 1 for values in seen)
    gpu_of_worker = {r["job_id"]: r["worker"].split(":")[1].rsplit("-gpu", 1)[1] for r in records}
    for job in jobs:  # the GPU a job saw is the one its worker was started with
        assert seen[(job.subset, job.seed)][0] == gpu_of_worker[job.job_id]
    assert set(gpu_of_worker.values()) == {"0", "1"}, "the jobs did not spread over both workers"


# --- several jobs per GPU, with the GPU count and memory faked ------------------------------------------------
def fake_gpus(monkeypatch, count: int, free_mb: float | None, cores: int) -> None:
    """Make this process see ``count`` GPUs with ``free_mb`` free each (None: unreadable) and ``cores`` cores."""
    from medad.benchmark import executors

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(executors, "gpu_free_memory_mb", lambda n: [free_mb] * n)
    monkeypatch.setattr(executors, "usable_cores", lambda: cores)


def test_default_workers_per_gpu_from_free_memory_measured_peaks_and_cores():
    from medad.benchmark.executors import MAX_WORKERS_PER_GPU, default_workers_per_gpu

    assert default_workers_per_gpu([80_000.0], None, cores=16) == MAX_WORKERS_PER_GPU == 4  # memory for 13: capped
    assert default_workers_per_gpu([80_000.0], None, cores=16, cap=8) == 8
    # an 8 GB card: unknown peaks are planned at 4 GB + 0.5 GB of CUDA context each, 80 % of the free memory holds
    # one; a measured peak of 1 GB: 6400 MB // 1.5 GB = four
    assert default_workers_per_gpu([8_000.0], None, cores=16) == 1
    assert default_workers_per_gpu([8_000.0], 1_000.0, cores=16, cap=8) == 4
    assert default_workers_per_gpu([80_000.0, 9_000.0], 2_000.0, cores=16) == 2    # the fullest GPU decides
    assert default_workers_per_gpu([80_000.0] * 2, 500.0, cores=6) == 3              # a core for each worker
    assert default_workers_per_gpu([80_000.0] * 4, 500.0, cores=2) == 1              # never fewer than one
    assert default_workers_per_gpu([80_000.0, None], 500.0, cores=16) == 1           # memory unknown: one


def test_local_gpu_pool_packs_workers_per_gpu_and_splits_the_cores(monkeypatch):
    fake_gpus(monkeypatch, count=2, free_mb=80_000.0, cores=16)
    pool = make_executor("local", "auto", None, jobs=100)
    assert isinstance(pool, ProcessPoolExecutor)
    assert (pool.workers, pool.workers_per_gpu, pool.threads_per_worker) == (8, 4, 2)
    assert [pool.gpu_of(i) for i in range(8)] == ["0", "1"] * 4                      # four workers on each GPU
    assert pool.placement() == {"workers": 8, "threads": 2, "workers_per_gpu": 4, "gpus": 2}
    few = make_executor("local", "auto", None, jobs=3)                                # no idle workers
    assert (few.workers, few.threads_per_worker) == (3, 5)
    measured = make_executor("local", "auto", None, jobs=100, job_gpu_mb=30_000.0)    # measured peaks: 2 fit
    assert (measured.workers, measured.workers_per_gpu, measured.threads_per_worker) == (4, 2, 4)
    asked = make_executor("local", "auto", 3, jobs=100, workers_per_gpu=2)            # --workers: the total
    assert (asked.workers, asked.workers_per_gpu, asked.threads_per_worker) == (3, 2, 5)
    assert [asked.gpu_of(i) for i in range(3)] == ["0", "1", "0"]
    with pytest.raises(ValueError, match="--workers 5 but only 2 GPUs .* 2 worker\\(s\\) per GPU; give --workers-per-gpu 3"):
        make_executor("local", "auto", 5, workers_per_gpu=2)
    with pytest.raises(ValueError, match="--workers-per-gpu must be >= 1"):
        make_executor("local", "auto", None, workers_per_gpu=0)
    fake_gpus(monkeypatch, count=1, free_mb=None, cores=16)                         # memory unreadable: one
    assert make_executor("local", "auto", None, jobs=100).workers == 1


def test_workers_sharing_a_gpu_see_that_gpu_and_run_their_share_of_the_cores(tmp_path, monkeypatch):
    fake_gpus(monkeypatch, count=2, free_mb=80_000.0, cores=8)
    executor = make_executor("local", "auto", None, jobs=4, workers_per_gpu=2)
    monkeypatch.undo()  # the workers are fresh processes; this one goes back to its real torch
    assert (executor.workers, executor.threads_per_worker) == (4, 2)

    _, records, seen, run_folder = run_device_probes(executor, tmp_path, seeds=(0, 1))
    for record in records:  # worker i runs on GPU i mod 2, and its jobs saw that GPU alone
        name = record["worker"].split(":")[1]
        index, gpu = name.removeprefix("worker").split("-gpu")
        assert gpu == str(int(index) % 2)
        assert list(seen[(record["subset"], record["seed"])]) == [gpu]
        assert (record["threads"], record["workers_per_gpu"]) == (2, 2)
    jobs_csv = pd.read_csv(run_folder.path / "jobs.csv")
    assert set(jobs_csv["threads"]) == {2} and set(jobs_csv["workers_per_gpu"]) == {2}


def test_a_ray_task_asks_for_its_share_of_a_gpu():
    from medad.benchmark.executors.ray import RayExecutor

    raw = {"name": "r", "image_size": 32, "device": "auto", "datasets": [{"name": "synthetic", "subsets": ["obvious"]}],
           "detectors": [{"name": "ae"}, {"name": "ae", "label": "ae-whole", "resources": {"gpus": 1, "cpus": 2}},
                         {"name": "ae", "label": "ae-cpu", "resources": {"gpus": 0}}]}
    jobs = expand_jobs(parse_config(raw))
    task, executor = _RecordingTask(), RayExecutor(workers_per_gpu=4)
    for job in jobs:
        executor._submit(None, task, job, "r", gpus_available=True)
    shared, whole, cpu = task.submitted
    assert (shared["num_gpus"], shared["num_cpus"]) == (0.25, 1)        # four such tasks fill one GPU
    assert (whole["num_gpus"], whole["num_cpus"]) == (1, 2)             # what a config states wins
    assert cpu["num_gpus"] == 0
    assert job_resources(jobs[0], gpus_available=True, workers_per_gpu=3).gpus == 0.3333
    assert make_executor("ray", "auto", None, workers_per_gpu=3).placement() == {"workers_per_gpu": 3,
                                                                                  "gpu_per_task": 0.3333}


class _RecordingArray:
    """Stands in for a submitit executor: keeps its parameters and runs each submission at once, in this process."""

    def __init__(self) -> None:
        self.params: dict = {}
        self.submitted: list[list] = []

    def update_parameters(self, **params) -> None:
        self.params.update(params)

    def batch(self):
        import contextlib

        return contextlib.nullcontext()

    def submit(self, function, pack, *args):
        self.submitted.append([job.job_id for unit in pack for job in unit.jobs])

        class Done:
            job_id = "1_0"
            done = staticmethod(lambda: True)
            result = staticmethod(lambda: function(pack, *args))
        return Done()


def test_slurm_packs_workers_per_gpu_jobs_into_one_gpu_task(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from medad.benchmark.executors.slurm import SlurmExecutor

    array = _RecordingArray()
    monkeypatch.setattr(submitit, "AutoExecutor", lambda folder, cluster: array)
    probe = {"name": f"{PROBES}:DeviceProbe", "label": "probe", "params": {"barrier_dir": str(tmp_path / "barrier"),
                                                                          "workers": 1}}
    config = load_config(write_config(tmp_path / "probe.yaml", detectors=[probe], subsets=SUBSETS, seeds=(0, 1)))
    jobs = [replace(job, device="auto") for job in expand_jobs(config)]              # GPU jobs, run on this CPU
    run_folder, records = RunFolder(tmp_path / "packed"), []
    SlurmExecutor(cluster="slurm", workers_per_gpu=2, poll_s=0.01).run(jobs, run_folder, records.append, progress=False)
    assert array.submitted == [[jobs[0].job_id, jobs[1].job_id], [jobs[2].job_id, jobs[3].job_id]]
    assert (array.params["gpus_per_node"], array.params["cpus_per_task"]) == (1, 2)   # one GPU, a core per job
    assert sorted(r["job_id"] for r in records) == sorted(job.job_id for job in jobs)
    assert {r["status"] for r in records} == {"done"} and {r["workers_per_gpu"] for r in records} == {2}
    pids = {r["job_id"]: r["worker"].rsplit(":", 1)[1] for r in records}
    assert pids[jobs[0].job_id] != pids[jobs[1].job_id], "the two jobs of a task did not run side by side"


def test_slurm_gives_a_job_that_states_a_whole_gpu_a_task_of_its_own_as_ray_does(tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    from medad.benchmark.executors.slurm import SlurmExecutor

    array = _RecordingArray()
    monkeypatch.setattr(submitit, "AutoExecutor", lambda folder, cluster: array)
    whole = {"name": "tests.support.detectors:TemplateDistance", "label": "whole", "resources": {"gpus": 1, "cpus": 2}}
    config = load_config(write_config(tmp_path / "whole.yaml", detectors=[whole], subsets=SUBSETS))
    jobs = [replace(job, device="auto") for job in expand_jobs(config)]              # GPU jobs, run on this CPU
    run_folder, records = RunFolder(tmp_path / "whole"), []
    SlurmExecutor(cluster="slurm", workers_per_gpu=4, poll_s=0.01).run(jobs, run_folder, records.append, progress=False)
    assert array.submitted == [[job.job_id] for job in jobs]                         # what a config states wins
    assert (array.params["gpus_per_node"], array.params["cpus_per_task"]) == (1, 2)
    assert {r["status"] for r in records} == {"done"} and {r["workers_per_gpu"] for r in records} == {1}
    # the rule Ray's fractions follow: a stated half GPU shares it with one other job, the default 1/N with N - 1
    from medad.benchmark.executors.remote import gpu_share, jobs_per_gpu
    from medad.benchmark.executors.slurm import packs

    units = [as_unit(job) for job in jobs + jobs]
    for stated, size in ((0.5, 2), (gpu_share(4), 4), (gpu_share(3), 3), (1, 1), (2, 1)):
        resources = JobResources(cpus=1, gpus=stated, memory_gb=None, time_min=10)
        assert jobs_per_gpu(stated) == size
        assert [len(pack) for pack in packs(units, resources)] == [size] * (4 // size) + [4 % size] * (4 % size > 0)


@pytest.mark.processes
def test_a_slurm_pack_whose_unit_process_dies_keeps_every_other_outcome(tmp_path, monkeypatch):
    """One unit's process dies (``os._exit``, as the OOM killer ends it) in its second job: that job is recorded
    failed with the exit code; the unit's first job, and the other unit of the pack, keep their results."""
    submitit = pytest.importorskip("submitit")
    from medad.benchmark.executors.slurm import SlurmExecutor
    from medad.benchmark.fit_sharing import FitUnit

    array = _RecordingArray()
    monkeypatch.setattr(submitit, "AutoExecutor", lambda folder, cluster: array)
    dies = {"name": f"{PROBES}:DiesScoringTheSecondJob", "label": "dies",
            "params": {"score_file": str(tmp_path / "scored.txt")}}
    lives = {"name": "tests.support.detectors:TemplateDistance", "label": "lives"}
    config = load_config(write_config(tmp_path / "c.yaml", detectors=[dies, lives], subsets=SUBSETS))
    job = {(job.detector, job.subset): replace(job, device="auto") for job in expand_jobs(config)}
    dying = FitUnit("fit-dies", (job["dies", "obvious"], job["dies", "subtle"]))     # one process, one job after another
    run_folder, records = RunFolder(tmp_path / "packed"), []
    SlurmExecutor(cluster="slurm", workers_per_gpu=2, poll_s=0.01).run(
        [dying, as_unit(job["lives", "obvious"])], run_folder, records.append, progress=False)
    assert len(array.submitted) == 1 and len(records) == 3                          # one task, each job recorded once
    recorded = {r["job_id"]: r for r in records}
    lost = recorded[job["dies", "subtle"].job_id]
    assert lost["status"] == "failed" and "the process of its unit died (exit code 1)" in lost["error"]
    assert recorded[job["dies", "obvious"].job_id]["status"] == "done"              # finished before: kept
    assert recorded[job["lives", "obvious"].job_id]["status"] == "done"             # the other unit: kept
    metrics = pd.read_csv(run_folder.path / "jobs" / job["lives", "obvious"].job_id / "metrics.csv")
    assert (metrics["metric"] == "roc_auc").sum() == 1
