"""``--executor ray``: each job is a Ray task; its output comes back to the driver, which writes the run folder.

Jobs that share a fit (:mod:`medad.benchmark.fit_sharing`) are one task: it trains once and scores each of
them; their outputs come back together when the task ends, and a lost task runs the whole unit again.

Each task asks for the resources its job's config states (:func:`medad.benchmark.executors.remote.job_resources`:
by default 1 CPU, and 1/N of a GPU when the cluster has GPUs, N = ``--workers-per-gpu``, default 1: the
driver cannot see the nodes' free GPU memory, so packing is asked for, never guessed). Ray schedules N such
tasks on one GPU at once and sets ``CUDA_VISIBLE_DEVICES`` for each, so device ``auto`` uses the GPU it was
given; each task runs one torch thread per CPU it asked for.

Faults: a task whose worker process or node is lost is run again by Ray up to ``max_retries`` times
(``--max-retries``), then recorded ``failed``; a job that fails by itself (an exception in the detector,
a missing dataset) returns a ``failed`` record like any output and is not retried (Ray's
``retry_exceptions`` stays off). With no address a local Ray instance is started and stopped again;
``address`` is ``auto`` (the cluster this machine belongs to) or ``ray://host:port`` (Ray client).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from medad.benchmark.executors.local import OnRecord
from medad.benchmark.executors.remote import error_line, gpu_share, job_resources, jobs_per_gpu, missing_extra, remote_unit
from medad.benchmark.fit_sharing import FitUnit, as_unit
from medad.benchmark.job_runner import write_lost_job, write_output
from medad.benchmark.jobs import Job
from medad.benchmark.run_folder import RunFolder

log = logging.getLogger(__name__)


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise missing_extra("ray", "ray", "ray") from error
    return ray


class RayExecutor:
    """Runs jobs as Ray tasks on a local instance or an existing cluster."""

    name = "ray"

    def __init__(self, address: str | None = None, max_retries: int = 2, max_in_flight: int | None = None,
                 workers_per_gpu: int = 1) -> None:
        if max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {max_retries}")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"--workers (tasks in flight) must be >= 1, got {max_in_flight}")
        if workers_per_gpu < 1:
            raise ValueError(f"--workers-per-gpu must be >= 1, got {workers_per_gpu}")
        self.address = address
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.workers_per_gpu = workers_per_gpu

    def placement(self) -> dict[str, Any]:
        """What each GPU task asks for, for the manifest."""
        return {"workers_per_gpu": self.workers_per_gpu, "gpu_per_task": gpu_share(self.workers_per_gpu)}

    def _connect(self, ray) -> bool:
        """Connect to Ray unless this process already is; return whether this call made the connection."""
        if ray.is_initialized():  # the caller's own ray.init() (a notebook, a test) is left as it is
            return False
        # The driver's --no-cache reaches the workers' dataset loaders (the cache folder stays each node's own).
        from medad.datasets.cache import NO_CACHE_ENV

        env = {key: os.environ[key] for key in (NO_CACHE_ENV,) if key in os.environ}
        runtime_env = {"env_vars": env} if env else None
        try:
            if self.address is None:  # "local": a new instance, even where RAY_ADDRESS or a `ray start` exists
                ray.init(address="local", include_dashboard=False, runtime_env=runtime_env)
            else:
                ray.init(address=self.address, runtime_env=runtime_env)
        except ConnectionError as error:
            raise ConnectionError(f"--ray-address {self.address}: cannot connect to a Ray cluster: {error}") from error
        return True

    def run(self, jobs: Sequence[Job | FitUnit], run_folder: RunFolder, on_record: OnRecord, progress: bool = True,
            stop: Callable[[], bool] | None = None) -> None:
        if not jobs:
            return
        ray = _import_ray()
        started_here = self._connect(ray)
        try:
            self._run(ray, list(jobs), run_folder, on_record, progress, stop)
        finally:
            if started_here:
                ray.shutdown()

    def _submit(self, ray, task, unit: Job | FitUnit, run_id: str, gpus_available: bool):
        unit = as_unit(unit)
        job = unit.leader
        resources = job_resources(job, gpus_available, self.workers_per_gpu)
        if resources.gpus and not gpus_available:
            log.warning("job %s asks for %s GPU(s) but the Ray cluster has none yet; it waits until a GPU node joins",
                        job.job_id, resources.gpus)
        options: dict[str, Any] = {"num_cpus": resources.cpus, "num_gpus": resources.gpus, "name": f"medad:{job.job_id}",
                                   "max_retries": self.max_retries, "retry_exceptions": False}
        if resources.memory_gb is not None:
            options["memory"] = int(resources.memory_gb * 2**30)
        placement = {"workers_per_gpu": jobs_per_gpu(resources.gpus)} if resources.gpus else None
        return task.options(**options).remote(unit, run_id, "ray", resources.threads, placement)

    def _run(self, ray, items: list[Job | FitUnit], run_folder: RunFolder, on_record: OnRecord, progress: bool,
             stop: Callable[[], bool] | None) -> None:
        task = ray.remote(remote_unit)
        gpus_available = ray.cluster_resources().get("GPU", 0) > 0
        pending = [as_unit(item) for item in items]
        in_flight: dict[Any, FitUnit] = {}
        bar = tqdm(total=sum(len(unit.jobs) for unit in pending), desc="jobs (ray)", disable=not progress)
        try:
            while pending or in_flight:
                stopping = stop is not None and stop()
                while pending and not stopping and (self.max_in_flight is None or len(in_flight) < self.max_in_flight):
                    unit = pending.pop(0)
                    in_flight[self._submit(ray, task, unit, run_folder.run_id, gpus_available)] = unit
                if not in_flight:
                    return
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    unit = in_flight.pop(ref)
                    self._collect(ray, ref, unit, run_folder, on_record)
                    bar.update(len(unit.jobs))
        finally:
            bar.close()

    def _collect(self, ray, ref, unit: FitUnit, run_folder: RunFolder, on_record: OnRecord) -> None:
        """Write the task's outputs, or record its jobs failed when it raised or its worker was lost past the retries."""
        try:
            outputs = ray.get(ref)
        except ray.exceptions.RayTaskError as error:  # raised outside the jobs' own try (e.g. cannot unpickle)
            lost = f"the Ray task raised: {error_line(error, last=True)}"
        except ray.exceptions.RayError as error:  # worker or node lost, also after max_retries attempts
            lost = f"lost after {self.max_retries} retries: {type(error).__name__}: {error_line(error)}"
        else:
            for output in outputs:
                on_record(write_output(run_folder, output))
            return
        for job in unit.jobs:
            on_record(write_lost_job(run_folder, job, lost, "ray"))
