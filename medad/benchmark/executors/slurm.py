"""``--executor slurm``: the matrix as SLURM array jobs through submitit; outputs come back to the driver.

Jobs that share a fit (:mod:`medad.benchmark.fit_sharing`) are one array task (one fit, then each job's scoring).
Units are grouped by the resources they ask for (:func:`medad.benchmark.executors.remote.job_resources`; most
matrices have one group) and each group is submitted as one array job with those resources
(``cpus_per_task``, ``gpus_per_node``, ``mem_gb``, ``timeout_min``; ``--workers`` caps how many array
tasks run at once). SLURM hands out whole GPUs (fractions need a site's MPS or sharding setup), so jobs
that ask for a fraction of a GPU are packed instead, as many as share one GPU by what each asks for
(:func:`~medad.benchmark.executors.remote.jobs_per_gpu`: the default ``1 / N`` share of
``--workers-per-gpu N`` packs N; a config's ``gpus: 1`` packs none, as Ray gives it a whole GPU): each array
task of such a group takes that many units, asks for one GPU and that many times the job's CPUs, and runs
them at once, each in its own process on the task's GPU with the job's CPUs as torch threads
(:func:`remote_pack`). Each task returns its jobs' outputs through submitit's result file and the driver
writes the run folder exactly as the local executor does. submitit exchanges its pickles through
``<run folder>/submitit/``, so the run folder must be on a file system the compute nodes see (on SLURM
clusters the home and scratch file systems are); the datasets are read from ``--data-root`` as the
compute nodes see it.

Faults: a task that ends without a result (node failure, preemption, killed, out of time) is submitted
again, at most ``max_retries`` times, then recorded ``failed``; a job that fails by itself returns a
``failed`` record and is not retried. In a pack, a unit whose process dies (out of memory, a segfault) has
its jobs not yet finished recorded ``failed`` with the exit code, as the local executor records a dead
worker's; the pack's other units, and the jobs that unit had finished, keep their results.
``cluster="local"`` runs the same code on this machine with submitit's local executor (what the tests use).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from medad.benchmark.executors.local import OnRecord, set_threads
from medad.benchmark.executors.remote import (
    JobResources,
    error_line,
    job_resources,
    jobs_per_gpu,
    missing_extra,
    remote_unit,
    whole_gpus,
)
from medad.benchmark.fit_sharing import FitUnit, as_unit
from medad.benchmark.job_runner import JobOutput, compute_unit, lost_job_output, write_lost_job, write_output
from medad.benchmark.jobs import Job
from medad.benchmark.run_folder import RunFolder


def _import_submitit():
    try:
        import submitit
    except ImportError as error:
        raise missing_extra("submitit", "slurm", "slurm") from error
    return submitit


def parse_slurm_params(items: Sequence[str]) -> dict[str, Any]:
    """``["partition=gpu", "account=lab"]`` -> ``{"partition": "gpu", "account": "lab"}`` (digits become ints)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--slurm-param expects KEY=VALUE (e.g. partition=gpu), got {item!r}")
        value = value.strip()
        params[key.strip().replace("-", "_")] = int(value) if value.isdigit() else value
    return params


def _send_unit(unit: FitUnit, run_id: str, worker: str, threads: int, placement: dict[str, Any] | None,
               send: Connection) -> None:
    """In a pack's process: run ``unit`` with ``threads`` torch threads, sending each job's output as it ends."""
    set_threads(threads)
    for output in compute_unit(unit, run_id, worker=worker, placement=placement):
        send.send(output)
    send.close()


def _died(exitcode: int | None) -> str:
    """``exit code -9 (SIGKILL)``: how a process ended, in words."""
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"exit code {exitcode} ({signal.Signals(-exitcode).name})"
    return f"exit code {exitcode}"


def remote_pack(units: list[FitUnit], run_id: str, worker: str, threads: int,
                placement: dict[str, Any] | None = None) -> list[JobOutput]:
    """Run ``units`` (each: one fit, then its jobs' scoring) at once on this task's GPU, each in its own process with
    ``threads`` torch threads; return every job's output (one unit: in this process).

    Each process sends each job's output as the job ends. A process that dies before its unit ends (out of memory,
    a segfault) costs only its unit's jobs not yet sent: each comes back ``failed``, naming the exit code; the
    other units run on, and every output that arrived is kept."""
    if len(units) == 1:
        return remote_unit(units[0], run_id, worker, threads, placement)
    context = mp.get_context("spawn")
    members = []  # (unit, its worker name, its process, the end its outputs arrive on)
    for index, unit in enumerate(units):
        receive, send = context.Pipe(duplex=False)
        name = f"{worker}-{index}"
        process = context.Process(target=_send_unit, args=(unit, run_id, name, threads, placement, send), daemon=True)
        process.start()
        send.close()  # the child holds the only writing end: its exit ends the stream
        members.append((unit, name, process, receive))
    received: dict[Connection, list[JobOutput]] = {receive: [] for *_, receive in members}
    open_ends = list(received)
    while open_ends:
        for end in wait(open_ends):
            try:
                received[end].append(end.recv())
            except EOFError:  # the unit ended, or its process died
                open_ends.remove(end)
    outputs: list[JobOutput] = []
    for unit, name, process, receive in members:
        process.join()
        outputs += received[receive]
        sent = {output.record["job_id"] for output in received[receive]}
        lost = (f"the process of its unit died ({_died(process.exitcode)}) in its SLURM task before the job ended "
                "(the task's other units were kept)")
        outputs += [lost_job_output(job, run_id, lost, f"{socket.gethostname()}:{name}:{process.pid}")
                    for job in unit.jobs if job.job_id not in sent]
    return outputs


def packs(units: list[FitUnit], resources: JobResources) -> list[list[FitUnit]]:
    """The array tasks of one resource group: as many units each as share one GPU by what each asks for
    (:func:`~medad.benchmark.executors.remote.jobs_per_gpu`), one where the group asks for no GPU."""
    size = jobs_per_gpu(resources.gpus) if resources.gpus > 0 else 1
    return [units[start:start + size] for start in range(0, len(units), size)]


class SlurmExecutor:
    """Runs jobs as SLURM array jobs (or submitit's local processes with ``cluster="local"``)."""

    name = "slurm"

    def __init__(self, cluster: str = "slurm", max_retries: int = 2, max_in_flight: int | None = None,
                 slurm_params: dict[str, Any] | None = None, poll_s: float = 5.0, workers_per_gpu: int = 1) -> None:
        if max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {max_retries}")
        if workers_per_gpu < 1:
            raise ValueError(f"--workers-per-gpu must be >= 1, got {workers_per_gpu}")
        self.workers_per_gpu = workers_per_gpu
        self.cluster = cluster
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.slurm_params = dict(slurm_params or {})
        self.poll_s = poll_s

    def _gpus_available(self) -> bool:
        """SLURM: assume the cluster has GPUs (a CPU partition sets ``resources: {gpus: 0}``); local: this machine's."""
        if self.cluster != "local":
            return True
        import torch

        return torch.cuda.is_available()

    def placement(self) -> dict[str, Any]:
        """How GPU jobs that state no ``gpus`` are packed into array tasks, for the manifest (a job that states its
        own packs by it: :func:`packs`; each job's record names the ``workers_per_gpu`` it ran with)."""
        return {"workers_per_gpu": self.workers_per_gpu, "jobs_per_gpu_task": self.workers_per_gpu}

    def _executor(self, submitit, folder: Path, run_id: str, resources: JobResources, pack_size: int = 1):
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        params: dict[str, Any] = {"name": f"medad-{run_id}", "timeout_min": resources.time_min,
                                  "cpus_per_task": int(math.ceil(resources.cpus)) * pack_size,
                                  "gpus_per_node": whole_gpus(resources.gpus)}
        if resources.memory_gb is not None:
            params["mem_gb"] = resources.memory_gb
        if self.max_in_flight is not None:
            params["slurm_array_parallelism"] = self.max_in_flight
        params.update({f"slurm_{key}": value for key, value in self.slurm_params.items()})
        try:
            executor.update_parameters(**params)
        except NameError as error:  # submitit's message lists the valid parameters
            raise ValueError(f"--slurm-param: {error}") from None
        return executor

    def run(self, jobs: Sequence[Job | FitUnit], run_folder: RunFolder, on_record: OnRecord, progress: bool = True,
            stop: Callable[[], bool] | None = None) -> None:
        if not jobs:
            return
        submitit = _import_submitit()
        folder = run_folder.path / "submitit"
        gpus_available = self._gpus_available()
        units = [as_unit(item) for item in jobs]
        groups: dict[JobResources, list[FitUnit]] = defaultdict(list)
        for unit in units:  # the jobs of a unit ask for the same resources (part of their training identity)
            groups[job_resources(unit.leader, gpus_available, self.workers_per_gpu)].append(unit)
        running: list[tuple[Any, list[FitUnit], Any, int]] = []  # (submitit job, its pack of units, executor, attempt)
        for resources, group in groups.items():
            pack_list = packs(group, resources)
            executor = self._executor(submitit, folder, run_folder.run_id, resources, len(pack_list[0]))
            placement = {"workers_per_gpu": len(pack_list[0])} if resources.gpus > 0 else None
            with executor.batch():  # one array job per resource group
                handles = [executor.submit(remote_pack, pack, run_folder.run_id, "slurm", resources.threads, placement)
                           for pack in pack_list]
            running += [(handle, pack, executor, 0) for handle, pack in zip(handles, pack_list)]
        bar = tqdm(total=sum(len(unit.jobs) for unit in units), desc=f"jobs ({self.cluster})", disable=not progress)
        try:
            while running:
                still = []
                for handle, unit, executor, attempt in running:
                    if not handle.done():
                        still.append((handle, unit, executor, attempt))
                        continue
                    retry = self._collect(submitit, handle, unit, attempt, run_folder, on_record)
                    if retry:
                        resources = job_resources(unit[0].leader, gpus_available, self.workers_per_gpu)
                        placement = {"workers_per_gpu": len(unit)} if resources.gpus > 0 else None
                        again = executor.submit(remote_pack, unit, run_folder.run_id, "slurm", resources.threads,
                                                placement)
                        still.append((again, unit, executor, attempt + 1))
                    else:
                        bar.update(sum(len(member.jobs) for member in unit))
                running = still
                if stop is not None and stop():
                    for handle, _, _, _ in running:  # not recorded: the engine marks them skipped
                        handle.cancel(check=False)
                    return
                if running:  # local processes are cheap to poll; a cluster's queue is asked less often
                    time.sleep(min(self.poll_s, 0.5) if self.cluster == "local" else self.poll_s)
        finally:
            bar.close()

    def _collect(self, submitit, handle, pack: list[FitUnit], attempt: int, run_folder: RunFolder,
                 on_record: OnRecord) -> bool:
        """Record a finished task's outputs (or the failure of its jobs); return True when it was lost and may run
        again."""
        try:
            outputs = handle.result()
        except submitit.core.utils.FailedJobError as error:  # raised outside the jobs' own try: not retried
            lost = f"the SLURM task raised: {error_line(error, last=True)}"
        except submitit.core.utils.UncompletedJobError as error:  # lost: node failure, killed, out of time
            if attempt < self.max_retries:
                return True
            lost = f"lost after {self.max_retries} retries (SLURM job {handle.job_id}): {error_line(error)}"
        else:
            for output in outputs:
                on_record(write_output(run_folder, output))
            return False
        for job in (job for unit in pack for job in unit.jobs):
            on_record(write_lost_job(run_folder, job, lost, f"slurm:{handle.job_id}"))
        return False
