"""Executors hand jobs to workers and call back with each job's record; they only decide where a job runs.

- :mod:`.local`: in this process, or a pool of worker processes (one per visible GPU, or ``--workers``);
- :mod:`.ray`: Ray tasks on a cluster (``medad[ray]``);
- :mod:`.slurm`: SLURM array jobs through submitit (``medad[slurm]``);
- :mod:`.remote`: what the cluster executors share (the function a remote worker runs, resources).

Every executor writes the same run folder; :func:`make_executor` picks one.
"""

from __future__ import annotations

import os
from typing import Any

from medad.benchmark.executors.local import InProcessExecutor, OnRecord, ProcessPoolExecutor, visible_gpu_ids

__all__ = ["EXECUTORS", "InProcessExecutor", "OnRecord", "ProcessPoolExecutor", "make_executor", "visible_gpu_ids"]

EXECUTORS = ("local", "ray", "slurm")


def make_executor(name: str, device: str, workers: int | None, *, ray_address: str | None = None,
                  max_retries: int = 2, slurm_cluster: str = "slurm", slurm_params: dict[str, Any] | None = None):
    """The executor for ``--executor name``.

    ``local``: GPUs get one worker each; CPU runs in-process unless --workers > 1. ``ray`` and ``slurm``
    run each job remotely (``workers``: at most that many at once); a lost task runs again up to
    ``max_retries`` times.
    """
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
    if workers and workers > 1:
        return ProcessPoolExecutor(workers, threads_per_worker=max(1, (os.cpu_count() or 1) // workers))
    return InProcessExecutor()
