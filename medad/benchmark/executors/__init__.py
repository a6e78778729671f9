"""Executors hand jobs to workers and call back with each job's record; they only decide where a job runs.

- :mod:`.local`: in this process, or a pool of worker processes (one per visible GPU; on a CPU-only machine
  one single-threaded worker per core, as memory allows; or ``--workers``);
- :mod:`.ray`: Ray tasks on a cluster (``medad[ray]``);
- :mod:`.slurm`: SLURM array jobs through submitit (``medad[slurm]``);
- :mod:`.remote`: what the cluster executors share (the function a remote worker runs, resources).

Every executor writes the same run folder; :func:`make_executor` picks one.
"""

from __future__ import annotations

import os
from typing import Any

from medad.benchmark.executors.local import InProcessExecutor, OnRecord, ProcessPoolExecutor, visible_gpu_ids

__all__ = ["EXECUTORS", "InProcessExecutor", "OnRecord", "ProcessPoolExecutor", "cpu_worker_count", "make_executor",
           "visible_gpu_ids"]

EXECUTORS = ("local", "ray", "slurm")


WORKERS_ENV = "MEDAD_WORKERS"  # the default of --workers for local CPU runs (e.g. 1 where something else uses the cores)
MEMORY_PER_WORKER_GB = 2.5  # what one CPU worker may need: its RSS reaches 1.0-2.1 GB over the default run's jobs


def available_memory_gb() -> float:
    """Memory available to new processes (``MemAvailable``), or the physical memory where that is unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("inf")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or a SLURM allocation's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_worker_count(jobs: int) -> int:
    """How many CPU workers a local run of ``jobs`` jobs gets by default: ``$MEDAD_WORKERS`` if set, else one per
    usable core, at most one per :data:`MEMORY_PER_WORKER_GB` of available memory, and no more than the jobs."""
    listed = os.environ.get(WORKERS_ENV, "").strip()
    if listed:
        try:
            count = int(listed)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV}={listed!r}: expected a whole number of workers >= 1") from None
        if count < 1:
            raise ValueError(f"{WORKERS_ENV}={listed!r}: expected a whole number of workers >= 1")
    else:
        count = min(usable_cores(), max(1, int(available_memory_gb() // MEMORY_PER_WORKER_GB)))
    return max(1, min(count, jobs))


def make_executor(name: str, device: str, workers: int | None, *, ray_address: str | None = None,
                  max_retries: int = 2, slurm_cluster: str = "slurm", slurm_params: dict[str, Any] | None = None,
                  jobs: int | None = None):
    """The executor for ``--executor name``.

    ``local``: GPUs get one worker each; on CPU ``workers`` processes (default :func:`cpu_worker_count` of the
    ``jobs`` to run), each with its share of the cores (one thread each by default: small fits waste time
    synchronising threads), and one worker means in this process, as many threads as torch takes. Every job
    is seeded on its own, so the count changes the wall time, not the numbers. ``ray`` and ``slurm`` run each
    job remotely (``workers``: at most that many at once); a lost task runs again up to ``max_retries`` times.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if name == "ray":
        from medad.benchmark.executors.ray import RayExecutor

        return RayExecutor(address=ray_address, max_retries=max_retries, max_in_flight=workers)
    if name == "slurm":
        from medad.benchmark.executors.slurm import SlurmExecutor

        return SlurmExecutor(cluster=slurm_cluster, max_retries=max_retries, max_in_flight=workers,
                             slurm_params=slurm_params)
    if name != "local":
        raise ValueError(f"unknown executor {name!r}; available: {', '.join(EXECUTORS)}")
    gpus = visible_gpu_ids() if device != "cpu" else []
    if gpus:
        count = workers or len(gpus)
        if count > len(gpus):
            raise ValueError(f"--workers {count} but only {len(gpus)} GPUs are visible ({', '.join(gpus)})")
        return ProcessPoolExecutor(count, gpu_ids=gpus)
    count = workers if workers is not None else cpu_worker_count(jobs if jobs is not None else 1)
    if count > 1:
        return ProcessPoolExecutor(count, threads_per_worker=max(1, usable_cores() // count))
    return InProcessExecutor()
