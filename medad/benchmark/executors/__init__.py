"""Executors hand jobs to workers and call back with each job's record; they only decide where a job runs.

- :mod:`.local`: in this process, or a pool of worker processes (``--workers-per-gpu`` per visible GPU, by
  default as the GPUs' free memory and the cores allow, see :func:`default_workers_per_gpu`; on a CPU-only
  machine one single-threaded worker per core, as memory allows; or ``--workers``);
- :mod:`.ray`: Ray tasks on a cluster (``medad[ray]``);
- :mod:`.slurm`: SLURM array jobs through submitit (``medad[slurm]``);
- :mod:`.remote`: what the cluster executors share (the function a remote worker runs, resources).

Every executor writes the same run folder; :func:`make_executor` picks one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from medad.benchmark.executors.local import InProcessExecutor, OnRecord, ProcessPoolExecutor, visible_gpu_ids

__all__ = ["EXECUTORS", "InProcessExecutor", "OnRecord", "ProcessPoolExecutor", "cpu_worker_count",
           "default_workers_per_gpu", "gpu_free_memory_mb", "make_executor", "visible_gpu_ids"]

EXECUTORS = ("local", "ray", "slurm")


WORKERS_ENV = "MEDAD_WORKERS"  # the default of --workers for local CPU runs (e.g. 1 where something else uses the cores)
MEMORY_PER_WORKER_GB = 2.5  # what one CPU worker may need: its RSS reaches 1.0-2.1 GB over the default run's jobs
# Packing several jobs on one GPU: the default run's jobs peaked at 68-431 MB of GPU memory each on an H200, and 4
# processes training the same small fit on one GPU together trained 4.5x the images of one. A job whose peak is not
# known yet is assumed to need JOB_GPU_MB_UNKNOWN (ten times the largest measured, room for 128 px study fits); at
# most GPU_MEMORY_SHARE of a GPU's free memory is planned for, and no GPU gets more than MAX_WORKERS_PER_GPU workers
# by default (more launch streams than that stop adding throughput and only add contention). A job's measured peak
# (torch's max_memory_allocated) leaves out its process's CUDA context and the allocator's slack: CUDA_CONTEXT_MB more.
MAX_WORKERS_PER_GPU = 4
JOB_GPU_MB_UNKNOWN = 4096.0
GPU_MEMORY_SHARE = 0.8
CUDA_CONTEXT_MB = 512.0


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


def gpu_free_memory_mb(count: int) -> list[float | None]:
    """Free memory (MiB) of each of the first ``count`` visible GPUs (``torch.cuda.mem_get_info``; None where it
    cannot be read). It creates this process's CUDA context on each GPU (a few hundred MB, held while it runs)."""
    free: list[float | None] = []
    for index in range(count):
        try:
            free.append(torch.cuda.mem_get_info(index)[0] / 2**20)
        except (RuntimeError, AssertionError, AttributeError):  # no CUDA build, a GPU in a bad state
            free.append(None)
    return free


def default_workers_per_gpu(free_mb: Sequence[float | None], job_gpu_mb: float | None, cores: int,
                            cap: int = MAX_WORKERS_PER_GPU) -> int:
    """How many jobs each GPU runs at once by default: as many as :data:`GPU_MEMORY_SHARE` of the fullest GPU's
    free memory holds at ``job_gpu_mb`` per job (the jobs' measured peak; None: :data:`JOB_GPU_MB_UNKNOWN`) plus
    :data:`CUDA_CONTEXT_MB` per worker process, no more than ``cores`` workers in all (each keeps at least one core), at most ``cap``, at least 1. A GPU
    whose free memory cannot be read gets 1 (nothing is planned on memory nobody measured)."""
    if not free_mb or any(free is None for free in free_mb):
        return 1
    need = (job_gpu_mb if job_gpu_mb is not None and job_gpu_mb > 0 else JOB_GPU_MB_UNKNOWN) + CUDA_CONTEXT_MB
    by_memory = int(min(free_mb) * GPU_MEMORY_SHARE // need)
    by_cores = cores // len(free_mb)
    return max(1, min(cap, by_memory, by_cores))


def make_executor(name: str, device: str, workers: int | None, *, ray_address: str | None = None,
                  max_retries: int = 2, slurm_cluster: str = "slurm", slurm_params: dict[str, Any] | None = None,
                  jobs: int | None = None, workers_per_gpu: int | None = None, job_gpu_mb: float | None = None):
    """The executor for ``--executor name``.

    ``local`` with GPUs: ``workers_per_gpu`` workers share each visible GPU (default
    :func:`default_workers_per_gpu` from the GPUs' free memory, ``job_gpu_mb`` — the jobs' measured peak, None
    when unknown — and the cores); ``workers`` is the total (default: GPUs x workers per GPU, no more than the
    ``jobs``). On CPU ``workers`` processes (default :func:`cpu_worker_count` of the ``jobs`` to run), and one
    worker means in this process, as many threads as torch takes. Every pool worker, on a GPU or not, gets
    ``usable cores // workers`` torch threads (at least 1): small fits waste time synchronising threads, and a
    GPU job's host threads would otherwise spin on every core beside its packed neighbours. Every job is
    seeded on its own, so the count changes the wall time, not the numbers. ``ray`` and ``slurm`` run each
    job remotely (``workers``: at most that many at once; ``workers_per_gpu`` N: each GPU job asks for 1/N of
    a GPU, default 1); a lost task runs again up to ``max_retries`` times.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if workers_per_gpu is not None and workers_per_gpu < 1:
        raise ValueError(f"--workers-per-gpu must be >= 1, got {workers_per_gpu}")
    if name == "ray":
        from medad.benchmark.executors.ray import RayExecutor

        return RayExecutor(address=ray_address, max_retries=max_retries, max_in_flight=workers,
                           workers_per_gpu=workers_per_gpu or 1)
    if name == "slurm":
        from medad.benchmark.executors.slurm import SlurmExecutor

        return SlurmExecutor(cluster=slurm_cluster, max_retries=max_retries, max_in_flight=workers,
                             slurm_params=slurm_params, workers_per_gpu=workers_per_gpu or 1)
    if name != "local":
        raise ValueError(f"unknown executor {name!r}; available: {', '.join(EXECUTORS)}")
    gpus = visible_gpu_ids() if device != "cpu" else []
    if gpus:
        cores = usable_cores()
        per_gpu = workers_per_gpu or default_workers_per_gpu(gpu_free_memory_mb(len(gpus)), job_gpu_mb, cores)
        count = workers or max(1, min(len(gpus) * per_gpu, jobs if jobs is not None else len(gpus) * per_gpu))
        if count > len(gpus) * per_gpu:
            raise ValueError(f"--workers {count} but only {len(gpus)} GPUs are visible ({', '.join(gpus)}) with "
                             f"{per_gpu} worker(s) per GPU; give --workers-per-gpu {-(-count // len(gpus))} to share them")
        return ProcessPoolExecutor(count, gpu_ids=gpus, threads_per_worker=max(1, cores // count),
                                   workers_per_gpu=per_gpu)
    count = workers if workers is not None else cpu_worker_count(jobs if jobs is not None else 1)
    if count > 1:
        return ProcessPoolExecutor(count, threads_per_worker=max(1, usable_cores() // count))
    return InProcessExecutor()
