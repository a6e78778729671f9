"""The pre-flight check: everything that can be checked before a run folder is made, reported all at once.

``medad run`` (and ``--dry-run``) calls :func:`preflight` after the config is validated (types, ranges
and choices of every parameter) and before any job starts. It looks for what would otherwise fail job
after job: a dataset root that is missing or not in the publisher's layout, an executor whose extra is
not installed, pretrained weights that are neither on disk nor downloadable, ``device: cuda`` without a
GPU, an input size a detector's networks cannot take, too little disk for the run folder. Every problem
names the config key or the path and says what to do.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from medad.benchmark.config import RunConfig
from medad.benchmark.jobs import Job
from medad.datasets.base import DatasetError
from medad.registry import DATASETS, DETECTORS

EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}   # executor -> (module, medad extra)
# What a job leaves in its folder (scores, curves, examples), and a checkpoint when they are saved: generous.
JOB_BYTES, CHECKPOINT_BYTES = 5 * 2**20, 200 * 2**20


@dataclass(frozen=True)
class Problem:
    """One thing that would make jobs fail: where (a config key or a path) and what to do."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class PreflightError(ValueError):
    """The pre-flight check found problems; the message lists every one."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the pre-flight check found {len(problems)} problem(s); nothing was run:\n{listing}")


def _first_lines(error: Exception, lines: int = 4) -> str:
    return " ".join(line.strip() for line in str(error).splitlines()[:lines] if line.strip())


def check_datasets(config: RunConfig, data_root: str | None) -> list[Problem]:
    """Each dataset that needs files has a root, and the publisher's layout is found under it."""
    problems = []
    for i, entry in enumerate(config.datasets):
        cls = DATASETS.get(entry.name)
        if not cls.needs_download:
            continue
        where = f"datasets[{i}] ({entry.name})"
        root = entry.root or (str(Path(data_root) / entry.name) if data_root else None)
        if root is None:
            problems.append(Problem(where, f"needs its files: pass --data-root DIR (or set MEDAD_DATA) with the download "
                                           f"unpacked in DIR/{entry.name}/, or give 'root' in the config"))
            continue
        try:
            cls(root=Path(root), image_size=32, **entry.params).data_root()
        except (DatasetError, OSError) as error:
            problems.append(Problem(where, _first_lines(error)))
    return problems


def check_executor(executor: str) -> list[Problem]:
    """The executor's optional dependency is installed."""
    if executor not in EXTRAS:
        return []
    module, extra = EXTRAS[executor]
    if importlib.util.find_spec(module) is None:
        return [Problem(f"--executor {executor}", f"needs the {module!r} package: pip install 'medad[{extra}]'")]
    return []


def check_device(config: RunConfig) -> list[Problem]:
    """``device: cuda`` (or cuda:N) has that GPU."""
    if not config.device.startswith("cuda"):
        return []
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(config.device.split(":")[1]) if ":" in config.device else 0
    if index >= count:
        return [Problem("device", f"{config.device!r} asked for, but torch sees {count} CUDA GPU(s); use --device cpu or "
                                  "auto")]
    return []


def check_precision(config: RunConfig, executor: str) -> list[Problem]:
    """``precision: tf32`` runs on a CUDA GPU: refused for ``device: cpu``, and for ``auto`` on a local machine
    without one (a cluster's nodes may have GPUs the driver lacks)."""
    if config.precision != "tf32":
        return []
    if config.device == "cpu" or (config.device == "auto" and executor == "local" and not torch.cuda.is_available()):
        return [Problem("precision", "tf32 is TensorFloat-32 on CUDA GPUs and this run's device is the CPU, where it "
                                     "would be fp32 by another name: use precision fp32 (or bf16)")]
    return []


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of ``url`` accepts a connection (the machine is online for a weights download)."""
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_weights(config: RunConfig) -> list[Problem]:
    """Every pretrained file a detector entry will load is on disk, or downloadable from here."""
    problems, online = [], None
    for i, entry in enumerate(config.detectors):
        for path, url in DETECTORS.get(entry.name).pretrained_files(entry.params):
            if path.is_file():
                continue
            if url:
                online = reachable(url) if online is None else online
                if online:
                    continue
                message = f"{path} is missing and this machine is offline: download {url} and put it there"
            else:
                message = f"the weights file {path} does not exist"
            problems.append(Problem(f"detectors[{i}] ({entry.label})", message))
    return problems


def check_inputs(config: RunConfig, jobs: Iterable[Job]) -> list[Problem]:
    """Each detector entry's networks take its jobs' input size."""
    problems, seen = [], set()
    entries = {d.label: (i, d) for i, d in enumerate(config.detectors)}
    for job in jobs:
        if (job.detector, job.image_size, job.channels) in seen:
            continue
        seen.add((job.detector, job.image_size, job.channels))
        i, entry = entries[job.detector]
        try:
            DETECTORS.get(entry.name).check_input(job.image_size, job.channels, entry.params)
        except ValueError as error:
            problems.append(Problem(f"detectors[{i}] ({entry.label})", f"{error} (set image_size for this entry or "
                                                                      "for the config)"))
    return problems


def check_disk(config: RunConfig, jobs: list[Job], results: Path) -> list[Problem]:
    """The results folder's file system has room for the run folder (a generous estimate)."""
    need = len(jobs) * (JOB_BYTES + (CHECKPOINT_BYTES if config.save_checkpoints else 0))
    existing = Path(results).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < need:
        return [Problem(str(results), f"{free / 2**30:.1f} GiB free, the run folder may need {need / 2**30:.1f} GiB")]
    return []


def preflight(config: RunConfig, jobs: list[Job], *, data_root: str | None, executor: str = "local",
              results: Path = Path("results")) -> list[Problem]:
    """Every problem the pre-flight check finds (empty: ready to run)."""
    return (check_datasets(config, data_root) + check_executor(executor) + check_device(config) + check_precision(config, executor)
            + check_weights(config) + check_inputs(config, jobs) + check_disk(config, jobs, results))
