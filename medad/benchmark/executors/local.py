"""The local executors: jobs in this process, or a pool of worker processes (N per GPU, or one per CPU core).

The pool follows anomalib's runner split: the engine expands jobs, an executor runs them and calls
back with each job's record. On a machine with GPUs, worker ``i`` is started with
``CUDA_VISIBLE_DEVICES=<gpu i mod GPUs>`` so it sees exactly one GPU, which it shares with the other
workers of that GPU (``workers_per_gpu``: small fits leave a GPU mostly idle, and several processes
fill it); workers pull jobs from one shared queue, so a fast GPU takes more jobs. Every worker runs
``threads_per_worker`` torch threads. Jobs that share a fit (:mod:`medad.benchmark.fit_sharing`) are one
item of the queue: the worker trains once and scores each. A worker that dies (out of memory, segfault) has
the jobs of its item not yet finished recorded as failed and is replaced.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from medad.benchmark.fit_sharing import FitUnit, as_unit
from medad.benchmark.job_runner import run_unit, write_lost_job
from medad.benchmark.jobs import Job
from medad.benchmark.run_folder import RunFolder

OnRecord = Callable[[dict[str, Any]], None]  # called with each finished job's record
log = logging.getLogger(__name__)


class InProcessExecutor:
    """Runs jobs one after another in this process (the CPU default)."""

    name = "local"

    def placement(self) -> dict[str, Any]:
        """One worker (this process) on torch's threads, for the manifest."""
        return {"workers": 1, "threads": torch.get_num_threads()}

    def run(self, jobs: Sequence[Job | FitUnit], run_folder: RunFolder, on_record: OnRecord, progress: bool = True,
            stop: Callable[[], bool] | None = None) -> None:
        units = [as_unit(item) for item in jobs]
        with tqdm(total=sum(len(unit.jobs) for unit in units), desc="jobs", disable=not progress) as bar:
            for unit in units:
                for record in run_unit(unit, run_folder, worker="main", progress=progress, stop=stop):
                    on_record(record)
                    bar.update()


def queue_order(jobs: Sequence[Job | FitUnit]) -> list[FitUnit]:
    """The order a pool takes ``jobs`` (or units of jobs sharing a fit) in: each detector's side by side (in the
    config's order otherwise).

    Jobs of one detector take about as long as each other, so running them together keeps every worker busy
    to the end: in the matrix's own order (dataset, subset, detector, seed) the slowest detector of the last
    subset started last and ran alone (the default run's last 70 s on one of two cores).
    """
    units = [as_unit(item) for item in jobs]
    first = {}
    for index, unit in enumerate(units):
        first.setdefault(unit.leader.detector, index)
    return sorted(units, key=lambda unit: first[unit.leader.detector])


def _all_workers_exited(remaining: int, started_any: bool) -> str:
    message = f"all workers exited with {remaining} jobs left"
    if not started_any:  # they died starting up: most often a script that starts a run without the main guard
        message += (" before taking a job. Worker processes are started with 'spawn', which imports the script that "
                    "started the run again: a script calling medad.run() (or run_matrix) must do so under "
                    "`if __name__ == \"__main__\":` (notebooks need nothing), or pass workers=1 to run in-process")
    return message


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int, check_every_s: float = 1.0) -> None:
    """End this process when its parent dies, however the parent dies (``kill -9``, the OOM killer).

    On Linux the kernel sends SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere a
    daemon thread also checks every ``check_every_s`` seconds that the parent is still the one that
    started us (an orphan is re-parented). A job the worker was running simply stays pending: its
    half-written staging folder is removed on ``--resume``. ``parent`` is the PID the parent passed (a
    worker still importing when its parent died has already been re-parented).
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl (musl variants): the thread below still works
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(check_every_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def set_threads(threads: int) -> None:
    """Give this process ``threads`` torch threads, intra-op and inter-op (0: torch's defaults).

    The inter-op pool can only be sized before torch first uses it; a process that already did keeps its own."""
    if threads <= 0:
        return
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # "cannot set number of interop threads after parallel work has started"
        pass


def _worker_main(run_path: str, tasks: mp.Queue, results: mp.Queue, worker: str, threads: int, parent: int,
                 placement: dict[str, Any] | None = None) -> None:
    """A pool worker: take jobs until the ``None`` sentinel; report 'start' and the record of each (which carries
    ``placement``, e.g. how many workers share its GPU).

    Ctrl-C reaches the whole process group: workers ignore it and are stopped by the parent, which
    alone reports the interruption.
    """
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_threads(threads)
    run_folder = RunFolder(run_path)
    while True:
        unit = tasks.get()
        if unit is None:
            return
        results.put(("start", worker, unit.leader.job_id))
        for record in run_unit(unit, run_folder, worker=worker, placement=placement):
            results.put(("record", worker, record))


class ProcessPoolExecutor:
    """A pool of worker processes; ``gpu_ids`` pins one GPU per worker through CUDA_VISIBLE_DEVICES, worker ``i``
    getting GPU ``i mod len(gpu_ids)``, so that at most ``workers_per_gpu`` workers share a GPU."""

    name = "local"

    def __init__(self, workers: int, gpu_ids: Sequence[str] | None = None, threads_per_worker: int = 0,
                 workers_per_gpu: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if workers_per_gpu < 1:
            raise ValueError(f"workers_per_gpu must be >= 1, got {workers_per_gpu}")
        if gpu_ids is not None and len(gpu_ids) * workers_per_gpu < workers:
            raise ValueError(f"{workers} workers but only {len(gpu_ids)} GPUs ({', '.join(gpu_ids)}) x "
                             f"{workers_per_gpu} worker(s) per GPU")
        self.workers = workers
        self.gpu_ids = list(gpu_ids) if gpu_ids is not None else None
        self.threads_per_worker = threads_per_worker
        self.workers_per_gpu = workers_per_gpu if gpu_ids is not None else None
        self.context = mp.get_context("spawn")

    def gpu_of(self, index: int) -> str | None:
        """The GPU id (``CUDA_VISIBLE_DEVICES`` value) worker ``index`` runs on, None without GPUs."""
        return self.gpu_ids[index % len(self.gpu_ids)] if self.gpu_ids is not None else None

    def placement(self) -> dict[str, Any]:
        """How the pool places its workers, for the manifest and every job record."""
        return {"workers": self.workers, "threads": self.threads_per_worker or torch.get_num_threads(),
                **({"workers_per_gpu": self.workers_per_gpu, "gpus": len(self.gpu_ids)} if self.gpu_ids is not None
                   else {})}

    def _start(self, index: int, run_folder: RunFolder, tasks, results) -> mp.Process:
        gpu = self.gpu_of(index)
        name = f"worker{index}" + (f"-gpu{gpu}" if gpu is not None else "")
        process = self.context.Process(target=_worker_main, name=name, daemon=True,
                                       args=(str(run_folder.path), tasks, results, name, self.threads_per_worker,
                                             os.getpid(), self.placement()))
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        if gpu is not None:  # the child inherits the environment at start
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        try:
            process.start()
        finally:
            if self.gpu_ids is not None:
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
        return process

    def run(self, jobs: Sequence[Job], run_folder: RunFolder, on_record: OnRecord, progress: bool = True) -> None:
        if not jobs:
            return
        tasks, results = self.context.Queue(), self.context.Queue()
        units = queue_order(jobs)
        by_id = {unit.leader.job_id: unit for unit in units}
        total = sum(len(unit.jobs) for unit in units)
        for unit in units:
            tasks.put(unit)
        count = min(self.workers, len(units))
        for _ in range(count):
            tasks.put(None)
        processes = {}
        for i in range(count):
            process = self._start(i, run_folder, tasks, results)
            processes[process.name] = (i, process)
        running: dict[str, list[Job]] = {}  # worker name -> the jobs of its unit not yet recorded
        remaining = total
        bar = tqdm(total=total, desc="jobs", disable=not progress)
        stopping, began = False, time.monotonic()
        try:
            while remaining:
                try:
                    kind, worker, payload = results.get(timeout=1.0)
                except queue.Empty:
                    remaining -= self._reap_dead(processes, running, by_id, run_folder, on_record, bar, tasks, results)
                    if not any(p.is_alive() for _, p in processes.values()) and remaining:
                        raise RuntimeError(_all_workers_exited(remaining, started_any=bool(running) or
                                                               remaining < total)) from None
                    continue
                if kind == "start":
                    running[worker] = list(by_id[payload].jobs)
                    log.info("%s: started %s", worker, payload)
                else:
                    left = [job for job in running.get(worker, []) if job.job_id != payload["job_id"]]
                    running[worker] = left
                    if not left:
                        running.pop(worker, None)
                    on_record(payload)
                    bar.update()
                    remaining -= 1
                    done = total - remaining
                    eta = (time.monotonic() - began) / done * remaining
                    log.info("%s: %s %s in %.0f s (%d of %d jobs, about %.0f s left)", worker, payload["job_id"],
                             payload["status"], payload.get("wall_s") or 0.0, done, total, eta)
        except BaseException:  # Ctrl-C, a write error: stop the workers now, their jobs stay pending
            stopping = True
            raise
        finally:
            bar.close()
            for _, process in processes.values():
                if stopping:
                    process.kill()
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=5)

    def _reap_dead(self, processes, running, by_id, run_folder: RunFolder, on_record: OnRecord, bar,
                   tasks=None, results=None) -> int:
        """Record the jobs a worker that died mid-unit had not finished (the one it ran, and the others of its shared
        fit) as failed, start a replacement; return how many."""
        lost = 0
        for name, (index, process) in list(processes.items()):
            if process.is_alive() or name not in running:
                continue
            for job in running.pop(name):
                on_record(write_lost_job(run_folder, job, f"worker {name} died (exit code {process.exitcode}) while "
                                                          "running the job or another job of its shared fit", name))
                bar.update()
                lost += 1
            tasks.put(None)  # the replacement's own stop sentinel
            replacement = self._start(index, run_folder, tasks, results)
            processes[name] = (index, replacement)
        return lost


def visible_gpu_ids() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else 0..count-1."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None and listed.strip():
        ids = [i.strip() for i in listed.split(",") if i.strip()]
        return ids[:count] if count else []
    return [str(i) for i in range(count)]
