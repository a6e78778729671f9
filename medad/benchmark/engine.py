"""``medad run``: expand the matrix, skip finished jobs, execute the rest, merge the CSVs, summarise."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import platform
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

import medad
from medad.atomic_files import WriteError, write_text_atomic
from medad.benchmark.config import ConfigError, RunConfig, apply_overrides, parse_config
from medad.benchmark.executors import make_executor
from medad.benchmark.fit_sharing import fit_units
from medad.benchmark.jobs import Job, expand_jobs
from medad.benchmark.numerics import set_cublas_workspace
from medad.benchmark.preflight import PreflightError
from medad.benchmark.recorded_splits import SplitCheck, check_recorded_splits, pending_units, with_recorded_splits
from medad.benchmark.resources import git_commit, hardware
from medad.benchmark.run_folder import ID_DTYPES, RunFolder, now, ordered
from medad.benchmark.run_lock import run_lock
from medad.evaluation.shortcut import SHORTCUT_FILE, control_labels, shortcut_frame

log = logging.getLogger(__name__)


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
    for package in ("torch", "torchvision", "numpy", "scipy", "pandas", "scikit-learn", "scikit-image", "pillow", "pot",
                    "pydicom", "ray", "submitit"):
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
    frame = pd.read_csv(run_folder.path / "jobs.csv", keep_default_na=False, dtype=ID_DTYPES)
    missing = [job for job in jobs if job.job_id not in set(frame["job_id"])]
    if missing:
        skipped = pd.DataFrame([{"run_id": run_folder.run_id, "job_id": job.job_id, **job.keys(),
                                 "detector_name": job.detector_name, "status": "skipped",
                                 "error": "not run: the run stopped early (--fail-fast)"} for job in missing])
        frame = ordered(pd.concat([frame, skipped], ignore_index=True), "jobs")
        write_text_atomic(run_folder.path / "jobs.csv", frame.to_csv(index=False))
    return frame


def _union(first: list, second: list) -> list:
    return first + [item for item in second if item not in first]


def config_with_detectors(run: RunConfig, names: list[str], overrides: list[str] | None = None) -> RunConfig:
    """The run's config (its datasets, seeds and settings) with the detectors ``names``, for ``medad run --extend RUN
    --detectors a,b`` without ``--config``: a name the run has as a label (or, where no label is so, as a registry
    name) keeps the run's entries; any other becomes a new entry of that registered detector with its default
    hyper-parameters. ``overrides`` (``--set``) apply as to a config file; names unknown to the registry are a
    ConfigError listing the known ones."""
    raw = run.to_dict()
    raw["datasets"] = [{k: v for k, v in d.items() if v is not None} for d in raw["datasets"]]
    labels = {d.label for d in run.detectors}
    entries: list[dict[str, Any]] = []
    for name in dict.fromkeys(names):
        known = [d for d in raw["detectors"] if d["label"] == name] if name in labels else \
            [d for d in raw["detectors"] if d["name"] == name]
        entries += known or [{"name": name}]
    raw["detectors"] = entries
    return parse_config(apply_overrides(raw, overrides or []), source="--extend RUN --detectors")


def extend_config(run: RunConfig, more: RunConfig) -> RunConfig:
    """The run's config grown by ``more``'s datasets, subsets, detectors and seeds (``medad run --extend``).

    What the run already has must not change: a dataset in both must have the same parameters and root (its
    split would differ), a detector label in both the same entry; the precision and deterministic setting must be
    the run's. A new
    detector without its own input size keeps ``more``'s ``image_size`` and ``channels``.
    """
    if more.precision != run.precision:
        raise ConfigError(f"--extend: precision {more.precision} but the run's is {run.precision}: rows would not compare")
    if more.deterministic != run.deterministic:
        raise ConfigError(f"--extend: deterministic {str(more.deterministic).lower()} but the run's is "
                          f"{str(run.deterministic).lower()}: rows would not compare")
    datasets = {d.name: copy.deepcopy(d) for d in run.datasets}
    for entry in more.datasets:
        known = datasets.get(entry.name)
        if known is None:
            datasets[entry.name] = copy.deepcopy(entry)
        elif (known.params, known.root) != (entry.params, entry.root):
            raise ConfigError(f"--extend: dataset {entry.name!r} has other params or root than in the run "
                              f"({known.params} vs {entry.params}): its split would not be the run's; extend with the "
                              "run's dataset entry, or start a new run")
        else:
            known.subsets = _union(known.subsets, entry.subsets)
    detectors = {d.label: copy.deepcopy(d) for d in run.detectors}
    for entry in more.detectors:
        entry = copy.deepcopy(entry)
        entry.image_size = entry.image_size or (more.image_size if more.image_size != run.image_size else None)
        entry.channels = entry.channels or (more.channels if more.channels != run.channels else None)
        known = detectors.get(entry.label)
        if known is None:
            detectors[entry.label] = entry
        elif known != entry:
            raise ConfigError(f"--extend: detector label {entry.label!r} is in the run with other settings; give the "
                              "new entry its own 'label'")
    return replace(copy.deepcopy(run), datasets=list(datasets.values()), detectors=list(detectors.values()),
                   seeds=_union(list(run.seeds), list(more.seeds)))


class RunInterrupted(Exception):
    """The run was stopped by Ctrl-C (or SIGTERM): finished jobs are kept, the run folder says ``interrupted``."""

    def __init__(self, run_path: Path, done: int, total: int) -> None:
        super().__init__(f"interrupted: {done} of {total} jobs done; resume with: medad run --resume {run_path}")
        self.run_path, self.done, self.total = run_path, done, total


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While running, SIGTERM (a scheduler's stop, ``kill``) ends the run like Ctrl-C: cleanly and resumable."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):  # noqa: ARG001 - the signal handler's signature
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def measured_gpu_peak_mb(run_folder: RunFolder, pending: list[Job]) -> float | None:
    """The largest GPU memory peak (MB) the run's finished jobs measured for the detectors of ``pending``, or None
    when a pending detector has no measured job yet (a new run: the executor assumes its documented default)."""
    peaks: dict[str, float] = {}
    for record in run_folder.records():
        try:
            peak = float(record.get("peak_gpu_mb"))
        except (TypeError, ValueError):
            continue
        if record.get("status") == "done" and math.isfinite(peak):
            peaks[record["detector"]] = max(peak, peaks.get(record["detector"], 0.0))
    needed = {job.detector for job in pending}
    if not needed or not needed <= set(peaks):
        return None
    return max(peaks[label] for label in needed)


def run_matrix(config: RunConfig, run_folder: RunFolder, *, data_root: str | None = None, executor: str = "local",
               workers: int | None = None, resume: bool = False, progress: bool = True, fail_fast: bool = False,
               argv: list[str] | None = None, executor_options: dict[str, Any] | None = None, extend: bool = False,
               overrides: list[str] | None = None, workers_per_gpu: int | None = None,
               recorded_splits: SplitCheck | None = None) -> RunSummary:
    """Run every job of ``config`` not yet done in ``run_folder``; return the counts by status.

    ``executor_options`` go to :func:`make_executor` (``ray_address``, ``max_retries``, ``slurm_params``...).
    A resumed run may use another executor than the one it started with: done jobs are found in the folder.
    The run holds the folder's lock throughout (:mod:`medad.benchmark.run_lock`): a second process on the
    same folder is refused. Ctrl-C or SIGTERM stops it cleanly (:class:`RunInterrupted`); a file that
    cannot be written stops it with a :class:`~medad.atomic_files.WriteError` naming the path; either way
    every finished job is kept and ``--resume`` goes on from there. ``extend`` (with ``resume``) records
    ``config`` (the run's, grown by :func:`extend_config`) as the run's config: only its new cells run.
    ``overrides`` (the ``--set`` items) are recorded in the manifest. ``workers_per_gpu``: jobs sharing each GPU
    (default: from the GPUs' free memory, the peaks this run's finished jobs measured, and the cores); how the
    executor placed its workers (``workers``, ``threads``, ``workers_per_gpu``) is recorded in the manifest.
    A resumed or extended run's new cells are tested on the splits the run recorded
    (:mod:`medad.benchmark.recorded_splits`; ``recorded_splits``: that check, already made by the caller): where
    the dataset's files changed, nothing runs (:class:`~medad.benchmark.preflight.PreflightError`).
    """
    with run_lock(run_folder.path), _sigterm_as_interrupt():
        return _run_locked(config, run_folder, data_root=data_root, executor=executor, workers=workers,
                           resume=resume or extend, progress=progress, fail_fast=fail_fast,
                           argv=argv if argv is not None else sys.argv, executor_options=executor_options or {},
                           extend=extend, overrides=overrides or [], workers_per_gpu=workers_per_gpu,
                           recorded_splits=recorded_splits)


def _run_locked(config: RunConfig, run_folder: RunFolder, *, data_root: str | None, executor: str, workers: int | None,
                resume: bool, progress: bool, fail_fast: bool, argv: list[str], executor_options: dict[str, Any],
                extend: bool, overrides: list[str], workers_per_gpu: int | None,
                recorded_splits: SplitCheck | None) -> RunSummary:
    manifest = run_folder.read_manifest() if resume else {}
    data_root = manifest.get("data_root") if resume and data_root is None else data_root
    jobs = expand_jobs(config, data_root)
    if resume:
        if recorded_splits is None:
            recorded_splits = check_recorded_splits(run_folder, config, data_root, pending_units(run_folder, jobs))
            for note in recorded_splits.notes:
                log.warning("%s", note)
        if recorded_splits.problems:
            raise PreflightError(recorded_splits.problems)
        jobs = with_recorded_splits(jobs, recorded_splits.parts)
        removed = run_folder.remove_partial()
        session = {"extended" if extend else "resumed": now(), "partial_jobs_removed": removed, "command": argv,
                   "executor": executor, "medad": medad.__version__,
                   "git_commit": git_commit(Path(medad.__file__).parent), "recorded_splits": recorded_splits.notes}
        if extend:
            manifest["config"] = config.to_dict()
            session["overrides"] = overrides
        manifest["sessions"].append(session)
    else:
        if run_folder.manifest_path.exists():
            raise FileExistsError(f"{run_folder.path} already holds a run; use --resume {run_folder.path} or another --run-id")
        manifest = new_manifest(config, data_root, executor, argv)
        manifest["run_id"] = run_folder.run_id
        manifest["overrides"] = overrides
    done = run_folder.done_job_ids()
    pending = [job for job in jobs if job.job_id not in done]
    if done:
        log.info("resuming: %d of %d jobs already done, %d to run", len(done), len(jobs), len(pending))
    # jobs whose training is identical: one fit, run by one worker; a fit a finished job used is trained anew, new id
    recorded = {r["fit_id"] for r in run_folder.records() if r.get("status") == "done" and isinstance(r.get("fit_id"), str)}
    units = fit_units(pending, config.share_fits, recorded)
    if len(units) < len(pending):
        log.info("%d jobs to run share %d fits", len(pending), len(units))
    if config.deterministic:  # before any worker starts: each inherits it before its first cuBLAS call
        set_cublas_workspace()
    if fail_fast:  # one job at a time, so that nothing starts after the first failure
        runner = make_executor(executor, "cpu", 1, **executor_options)
    else:
        runner = make_executor(executor, config.device, workers, jobs=len(units), workers_per_gpu=workers_per_gpu,
                               job_gpu_mb=measured_gpu_peak_mb(run_folder, pending), **executor_options)
    placement = runner.placement() if hasattr(runner, "placement") else {}
    if resume:
        manifest["sessions"][-1]["placement"] = placement
    else:
        manifest["placement"] = placement
    manifest["status"] = "running"
    run_folder.write_manifest(manifest)

    stop = {"failed": False}

    def on_record(record: dict[str, Any]) -> None:
        run_folder.merge(("jobs", "metrics"))
        if record["status"] == "failed":
            stop["failed"] = True
            log.warning("job %s failed: %s", record["job_id"], record["error"])

    try:
        if fail_fast:
            runner.run(units, run_folder, on_record, progress=progress, stop=lambda: stop["failed"])
        else:
            runner.run(units, run_folder, on_record, progress=progress)
    except KeyboardInterrupt:
        _leave_resumable(run_folder, manifest, "interrupted")
        raise RunInterrupted(run_folder.path, len(run_folder.done_job_ids()), len(jobs)) from None
    except WriteError:
        _leave_resumable(run_folder, manifest, "incomplete")
        raise

    write_shortcut(run_folder, run_folder.merge())
    jobs_frame = _with_skipped(run_folder, jobs)
    counts = {status: int((jobs_frame["status"] == status).sum()) for status in ("done", "failed", "skipped")}
    manifest.update(end=now(), status="complete" if counts["done"] == len(jobs) else "incomplete", counts=counts,
                    splits=run_folder.split_summaries())
    run_folder.write_manifest(manifest)
    return RunSummary(run_folder, jobs, counts)


def write_shortcut(run_folder: RunFolder, tables: dict[str, pd.DataFrame]) -> None:
    """Write the run's ``shortcut.csv`` (:func:`medad.evaluation.shortcut.shortcut_frame`: every detector against the
    controls) from its merged ``tables``; a failure is logged, never fatal: the jobs' results are all on disk and
    ``medad report`` computes the same check again."""
    try:
        frame = shortcut_frame(tables["scores"], control_labels(tables["metrics"]))
        write_text_atomic(run_folder.path / SHORTCUT_FILE, frame.to_csv(index=False))
    except Exception as error:  # a derived table must not fail a finished run
        log.warning("%s was not written (%s: %s); medad report %s computes the shortcut check again", SHORTCUT_FILE,
                    type(error).__name__, error, run_folder.path)


def _leave_resumable(run_folder: RunFolder, manifest: dict[str, Any], status: str) -> None:
    """After a stop: no half-written job folder, the merged CSVs of what finished, the manifest's status.
    Best effort: a full disk may refuse the writes, and the job folders (the truth) stay either way."""
    run_folder.remove_partial()
    with contextlib.suppress(OSError):
        run_folder.merge()
    manifest.update(end=now(), status=status)
    with contextlib.suppress(OSError):
        run_folder.write_manifest(manifest)
