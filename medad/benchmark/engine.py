"""``medad run``: expand the matrix, skip finished jobs, execute the rest, merge the CSVs, summarise."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

import medad
from medad.benchmark.config import RunConfig, parse_config
from medad.benchmark.executors import make_executor
from medad.benchmark.jobs import Job, expand_jobs
from medad.benchmark.resources import git_commit, hardware
from medad.benchmark.run_folder import RunFolder, now, ordered, write_text_atomic


@dataclass
class RunSummary:
    run_folder: RunFolder
    jobs: list[Job]
    counts: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.counts.get("failed", 0) == 0 and self.counts.get("done", 0) == len(self.jobs)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages results depend on."""
    versions = {"python": platform.python_version(), "medad": medad.__version__}
    for package in ("torch", "torchvision", "numpy", "pandas", "scikit-learn", "scikit-image", "pot"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def new_manifest(config: RunConfig, data_root: str | None, executor: str, argv: list[str]) -> dict[str, Any]:
    return {
        "run_id": None, "config": config.to_dict(), "data_root": data_root, "executor": executor,
        "command": argv, "versions": package_versions(), "git_commit": git_commit(Path(medad.__file__).parent),
        "hardware": hardware(), "start": now(), "end": None, "sessions": [], "status": "running",
    }


def config_from_manifest(manifest: dict[str, Any]) -> RunConfig:
    """The config a run folder was started with (validated again)."""
    raw = dict(manifest["config"])
    raw["datasets"] = [{k: v for k, v in d.items() if v is not None} for d in raw["datasets"]]
    return parse_config(raw, source="manifest.json")


def _with_skipped(run_folder: RunFolder, jobs: list[Job]) -> pd.DataFrame:
    """jobs.csv plus a ``skipped`` row for each job of the matrix that has no record (not run)."""
    frame = pd.read_csv(run_folder.path / "jobs.csv", keep_default_na=False)
    missing = [job for job in jobs if job.job_id not in set(frame["job_id"])]
    if missing:
        skipped = pd.DataFrame([{"run_id": run_folder.run_id, "job_id": job.job_id, **job.keys(),
                                 "detector_name": job.detector_name, "status": "skipped",
                                 "error": "not run: the run stopped early (--fail-fast)"} for job in missing])
        frame = ordered(pd.concat([frame, skipped], ignore_index=True), "jobs")
        write_text_atomic(run_folder.path / "jobs.csv", frame.to_csv(index=False))
    return frame


def run_matrix(config: RunConfig, run_folder: RunFolder, *, data_root: str | None = None, executor: str = "local",
               workers: int | None = None, resume: bool = False, progress: bool = True, fail_fast: bool = False,
               argv: list[str] | None = None, executor_options: dict[str, Any] | None = None) -> RunSummary:
    """Run every job of ``config`` not yet done in ``run_folder``; return the counts by status.

    ``executor_options`` go to :func:`make_executor` (``ray_address``, ``max_retries``, ``slurm_params``...).
    A resumed run may use another executor than the one it started with: done jobs are found in the folder.
    """
    executor_options = executor_options or {}
    argv = argv if argv is not None else sys.argv
    if resume:
        manifest = run_folder.read_manifest()
        data_root = manifest.get("data_root") if data_root is None else data_root
        removed = run_folder.remove_partial()
        manifest["sessions"].append({"resumed": now(), "partial_jobs_removed": removed, "command": argv,
                                     "executor": executor})
    else:
        if run_folder.manifest_path.exists():
            raise FileExistsError(f"{run_folder.path} already holds a run; use --resume {run_folder.path} or another --run-id")
        manifest = new_manifest(config, data_root, executor, argv)
        manifest["run_id"] = run_folder.run_id
    manifest["status"] = "running"
    run_folder.path.mkdir(parents=True, exist_ok=True)
    run_folder.write_manifest(manifest)

    jobs = expand_jobs(config, data_root)
    done = run_folder.done_job_ids()
    pending = [job for job in jobs if job.job_id not in done]
    if done:
        print(f"resuming: {len(done)} of {len(jobs)} jobs already done, {len(pending)} to run", file=sys.stderr)

    stop = {"failed": False}

    def on_record(record: dict[str, Any]) -> None:
        run_folder.merge(("jobs", "metrics"))
        if record["status"] == "failed":
            stop["failed"] = True
            print(f"job {record['job_id']} failed: {record['error']}", file=sys.stderr)

    if fail_fast:  # one job at a time, so that nothing starts after the first failure
        make_executor(executor, "cpu", 1, **executor_options).run(pending, run_folder, on_record, progress=progress,
                                                                  stop=lambda: stop["failed"])
    else:
        make_executor(executor, config.device, workers, **executor_options).run(pending, run_folder, on_record,
                                                                                progress=progress)

    run_folder.merge()
    jobs_frame = _with_skipped(run_folder, jobs)
    counts = {status: int((jobs_frame["status"] == status).sum()) for status in ("done", "failed", "skipped")}
    manifest.update(end=now(), status="complete" if counts["done"] == len(jobs) else "incomplete", counts=counts)
    run_folder.write_manifest(manifest)
    return RunSummary(run_folder, jobs, counts)
