"""What the cluster executors (Ray, SLURM) share: the function a remote worker runs, and what a job asks for.

A remote task runs one unit of jobs sharing a fit (:mod:`medad.benchmark.fit_sharing`; most units are one job;
all jobs of a unit ask for the same resources, which are part of the training identity). A remote worker
computes the unit's jobs and sends their whole outputs (record, tables, file bytes) back to the
driver, which writes the run folder exactly as the local executor does; so the workers need the
datasets (read from ``--data-root`` as the workers see it) but no file system shared with the driver.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

from medad.benchmark.config import ConfigError
from medad.benchmark.executors.local import set_threads
from medad.benchmark.fit_sharing import FitUnit
from medad.benchmark.job_runner import JobOutput, compute_unit
from medad.benchmark.jobs import Job

# The time a SLURM job may run when the config states none (submitit's own default is 5 minutes).
DEFAULT_TIME_MIN = 720


@dataclass(frozen=True)
class JobResources:
    """What one job asks a cluster for: CPU cores, GPUs, memory (GiB, None: the cluster's default), minutes."""

    cpus: float
    gpus: float
    memory_gb: float | None
    time_min: int

    @property
    def threads(self) -> int:
        """torch threads for the job: one per requested core, so that results do not depend on the node's size."""
        return max(1, int(self.cpus))


def gpu_share(workers_per_gpu: int) -> float:
    """The GPU fraction one of ``workers_per_gpu`` jobs sharing a GPU asks for: 1/N, rounded down to Ray's
    granularity of 1e-4 so that N of them fit on one GPU."""
    return math.floor(10_000 / workers_per_gpu) / 10_000


def jobs_per_gpu(gpus: float) -> int:
    """How many jobs that each ask for ``gpus`` share one GPU: ``1 / gpus`` (rounded down) for a fraction (the
    default ``1 / N`` of ``--workers-per-gpu N``, or a config's ``gpus: 0.5``), 1 for a whole GPU or more. Ray
    places fractions so by itself; SLURM packs that many jobs into one array task: what a config states wins on
    both."""
    if gpus <= 0 or gpus >= 1:
        return 1
    return max(1, math.floor(1 / gpus + 1e-6))


def job_resources(job: Job, gpus_available: bool, workers_per_gpu: int = 1) -> JobResources:
    """The job's config ``resources``, with defaults: 1 CPU, and ``1 / workers_per_gpu`` of a GPU when the cluster
    has GPUs and the job's device is not ``cpu`` (else none)."""
    stated = job.resources
    default_gpus = gpu_share(workers_per_gpu) if gpus_available and job.device != "cpu" else 0
    return JobResources(cpus=stated.get("cpus", 1), gpus=stated.get("gpus", default_gpus),
                        memory_gb=stated.get("memory_gb"), time_min=int(stated.get("time_min", DEFAULT_TIME_MIN)))


def remote_unit(unit: FitUnit, run_id: str, worker: str, threads: int,
                placement: dict[str, Any] | None = None) -> list[JobOutput]:
    """Run the jobs of ``unit`` (one fit, then each job's scoring) on a remote worker with ``threads`` torch threads;
    return their outputs (files as bytes), which reach the driver together when the unit ends. ``placement``: how
    the worker was placed (``workers_per_gpu``), recorded with each job."""
    set_threads(threads)
    return list(compute_unit(unit, run_id, worker=worker, placement=placement))


def whole_gpus(gpus: float) -> int:
    """GPUs as a whole number (SLURM has no fractions of a GPU)."""
    return int(math.ceil(gpus))


def missing_extra(package: str, extra: str, executor: str) -> ConfigError:
    """The error for an executor whose optional dependency is not installed."""
    return ConfigError(f"--executor {executor} needs the {package!r} package: pip install 'medad[{extra}]' "
                       f"(Python {sys.version_info.major}.{sys.version_info.minor})")


def error_line(error: BaseException, last: bool = False) -> str:
    """One line of an error's message: its first line, or with ``last`` its last (a traceback's exception)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[-1] if last else lines[0]
