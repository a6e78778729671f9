"""medad from Python: run a matrix and read a run folder as typed pandas frames (``medad.run``, ``medad.load_run``).

::

    import medad

    run = medad.run("default", detectors=["ae"], seeds=[0, 1], results="results")
    run.metrics.query("metric == 'roc_auc'").groupby("detector", observed=True)["value"].mean()
    again = medad.load_run(run.path)

``run`` takes what ``medad run`` takes on the command line (a config path, a mapping or a
:class:`~medad.benchmark.config.RunConfig`, then the options as keywords) and never changes its
arguments. The frames are read once, on first use, with fixed dtypes: the key columns as categories,
``seed`` and ``label`` as integers, values as floats, ``oracle`` as bool.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from medad.benchmark.config import DEFAULT_CONFIG, RunConfig, check_run_id, load_config, narrow, parse_config
from medad.benchmark.run_folder import COLUMNS, RunFolder
from medad.registry import DATASETS, DETECTORS

CATEGORY_COLUMNS = ("dataset", "subset", "detector", "detector_name", "supervision", "weights", "metric",
                    "threshold_policy", "part", "status", "loss_name")
INTEGER_COLUMNS = ("seed", "label", "epoch", "step")
FLOAT_COLUMNS = ("value", "ci_low", "ci_high", "score", "wall_s", "load_s", "train_s", "score_s", "maps_s", "metrics_s",
                 "bootstrap_s", "examples_s", "peak_rss_mb", "peak_gpu_mb")
TEXT_COLUMNS = ("run_id", "job_id", "fit_id", "fit_by", "sample_id", "note", "error", "device", "worker", "started", "finished")


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with medad's dtypes: categories for keys, integers, floats, bool ``oracle``, strings."""
    frame = frame.copy()
    for column in frame.columns:
        if column in CATEGORY_COLUMNS:
            frame[column] = frame[column].astype("category")
        elif column in INTEGER_COLUMNS:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
        elif column in FLOAT_COLUMNS:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        elif column == "oracle":
            frame[column] = frame[column].astype(str).str.lower().isin(["true", "1"])
        elif column in TEXT_COLUMNS:
            frame[column] = frame[column].astype("string")
    return frame


@dataclass
class Run:
    """A run folder and its tables (read on first use): ``metrics``, ``scores``, ``jobs``, ``history``, ``splits``."""

    path: Path
    report: Path | None = None
    ok: bool | None = None
    _frames: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def manifest(self) -> dict[str, Any]:
        return RunFolder(self.path).read_manifest()

    def table(self, name: str) -> pd.DataFrame:
        """One of the run's tidy tables, typed; a copy, so that changing it changes nothing here."""
        if name not in COLUMNS:
            raise KeyError(f"no table {name!r}; the run's tables: {', '.join(COLUMNS)}")
        if name not in self._frames:
            csv = self.path / f"{name}.csv"
            if csv.is_file() and csv.stat().st_size:
                frame = pd.read_csv(csv, keep_default_na=True, dtype={c: str for c in TEXT_COLUMNS + CATEGORY_COLUMNS})
            else:  # an interrupted or running run: its finished job folders are the truth
                frame = RunFolder(self.path).tables_from_jobs((name,))[name]
            self._frames[name] = typed(frame)
        return self._frames[name].copy()

    metrics = property(lambda self: self.table("metrics"), doc="metrics.csv, one row per value")
    scores = property(lambda self: self.table("scores"), doc="scores.csv, one row per image score")
    jobs = property(lambda self: self.table("jobs"), doc="jobs.csv, one row per job")
    history = property(lambda self: self.table("history"), doc="history.csv, the training curves")
    splits = property(lambda self: self.table("splits"), doc="splits.csv, which image went where")


def load_run(path: str | Path) -> Run:
    """The run folder at ``path`` (a clear error when it is not one)."""
    path = Path(path)
    RunFolder(path).read_manifest()
    return Run(path)


def _config(config: str | Path | dict | RunConfig | None) -> RunConfig:
    if config is None:
        return load_config(DEFAULT_CONFIG)
    if isinstance(config, RunConfig):
        return copy.deepcopy(config)
    if isinstance(config, dict):
        return parse_config(copy.deepcopy(config), source="the config mapping")
    return load_config(config)


def run(config: str | Path | dict | RunConfig | None = None, *, data_root: str | None = None,
        results: str | Path = "results", reports: str | Path | None = "reports", run_id: str | None = None,
        detectors: list[str] | None = None, datasets: list[str] | None = None, seeds: list[int] | None = None,
        device: str | None = None, memory_format: str | None = None, precision: str | None = None,
        deterministic: bool | None = None, executor: str = "local", workers: int | None = None, fail_fast: bool = False, progress: bool = False,
        executor_options: dict[str, Any] | None = None, workers_per_gpu: int | None = None) -> Run:
    """Run a benchmark matrix, as ``medad run`` does; return the run (folder, frames, report).

    ``config``: a YAML path or a shipped config's name (``default``, ``study``, ``papers``), a mapping in the
    same shape, a :class:`RunConfig`, or None (the embedded default).
    The keywords are the command line's options; ``reports=None`` skips the HTML report. As on the command line, a
    report that fails to build loses nothing: the run is returned (``report`` None) after a ``RuntimeWarning``
    that names the error and the command that rebuilds it (``medad report <run> --reports <dir>``).
    """
    from medad.benchmark.engine import run_matrix

    chosen = narrow(_config(config), detectors=detectors, datasets=datasets, seeds=seeds, device=device,
                    memory_format=memory_format, precision=precision, deterministic=deterministic)
    run_id = run_id or f"{chosen.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    check_run_id("run_id", run_id)
    folder = RunFolder(Path(results) / run_id)
    summary = run_matrix(chosen, folder, data_root=data_root or os.environ.get("MEDAD_DATA"), executor=executor,
                         workers=workers, progress=progress, fail_fast=fail_fast, argv=["medad.run()"],
                         executor_options=executor_options, workers_per_gpu=workers_per_gpu)
    report = None
    if reports is not None:
        from medad.reporting.html import build_report

        try:
            report = build_report(folder.path, reports)
        except Exception as error:  # the run is complete on disk: a report bug must not hide it
            warnings.warn(f"the report of {folder.path} failed: {type(error).__name__}: {error}; the run is complete, "
                          f"rebuild its report with: medad report {folder.path} --reports {reports}",
                          RuntimeWarning, stacklevel=2)
    return Run(folder.path, report=report, ok=summary.ok)


def list_detectors() -> list[str]:
    """The registered detector names (built-in and plugins), sorted."""
    return DETECTORS.names()


def list_datasets() -> list[str]:
    """The registered dataset names, sorted."""
    return DATASETS.names()
