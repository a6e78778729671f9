"""The run folder: manifest, per-job folders written atomically, and the merged tidy CSVs.

::

    <run>/manifest.json   config, versions, git commit, hardware, start/end
    <run>/jobs/<job-id>/  job.json, metrics.csv, scores.csv, history.csv, split.csv (+ model.pt)
    <run>/jobs.csv metrics.csv scores.csv history.csv splits.csv   merged from the job folders

A job folder appears only complete (written under a temporary name, then renamed), so a killed run
leaves either a finished job or nothing; the run-level CSVs are rebuilt from the job folders, never
appended to, so a resumed run cannot duplicate rows. Every file is written with the process umask's
permissions (:mod:`medad.atomic_files`); a failed write names the path and leaves no staging folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from medad.atomic_files import WriteError, remove_tree, staging_dir, write_bytes_atomic, write_text_atomic

# A run id names one folder inside --results: one path component of safe characters.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
KEY_COLUMNS = ["run_id", "dataset", "subset", "detector", "seed"]
COLUMNS = {
    "jobs": ["run_id", "job_id", "dataset", "subset", "detector", "detector_name", "seed", "status", "error",
             "wall_s", "load_s", "train_s", "score_s", "maps_s", "metrics_s", "bootstrap_s", "examples_s", "peak_rss_mb", "peak_gpu_mb", "device", "worker", "started", "finished",
             "fit_id", "fit_by"],  # the fit the job used, the job that trained it (medad.benchmark.fit_sharing)
    "metrics": KEY_COLUMNS + ["supervision", "weights", "metric", "value", "ci_low", "ci_high", "threshold_policy",
                              "oracle", "note", "fit_id"],
    "scores": KEY_COLUMNS + ["part", "sample_id", "label", "score", "mean_intensity"],
    "history": KEY_COLUMNS + ["epoch", "step", "loss_name", "value", "fit_by"],  # fit_by: whose training the losses are
    "splits": ["run_id", "dataset", "subset", "sample_id", "part", "label"],
}
# identifiers that read_csv would otherwise take for numbers (Head-CT's sample "007" as 7)
ID_DTYPES = {c: str for c in ("run_id", "job_id", "dataset", "subset", "detector", "sample_id", "fit_id", "fit_by")}
JOB_FILES = {"metrics": "metrics.csv", "scores": "scores.csv", "history": "history.csv", "splits": "split.csv"}
STATUSES = ("done", "failed", "skipped")
TABLES = ("jobs", "metrics", "scores", "history", "splits")


def ordered(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """``frame`` with the table's standard columns first (missing ones empty), extra columns after."""
    standard = COLUMNS[name]
    return frame.reindex(columns=standard + [c for c in frame.columns if c not in standard])


def run_id_problem(run_id: object) -> str | None:
    """Why ``run_id`` cannot name a run folder (a path, ``.``, odd characters), or None when it can."""
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        shown = run_id if isinstance(run_id, str) and len(run_id) <= 60 else f"{str(run_id)[:57]}..."
        return (f"{shown!r} is not a run id: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or "
                "digit (one folder name inside --results, never a path)")
    return None


def now() -> str:
    """UTC time stamp, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_text(value: Any) -> str:
    return json.dumps(value, indent=2, default=str) + "\n"


class RunFolder:
    """One run's folder on disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.jobs_dir = self.path / "jobs"
        self.manifest_path = self.path / "manifest.json"

    @property
    def run_id(self) -> str:
        return self.path.name

    # --- manifest ------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            raise FileNotFoundError(f"{self.manifest_path} does not exist: {self.path} is not a medad run folder")
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{self.manifest_path} is damaged ({error}); it is not a medad manifest any more") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_text_atomic(self.manifest_path, _json_text(manifest))

    # --- job folders ---------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def write_job(self, job_id: str, record: dict[str, Any], tables: dict[str, pd.DataFrame],
                  files: dict[str, bytes] | None = None) -> Path:
        """Write a job's record, tables and files (name -> bytes) as one folder, atomically (replacing an
        earlier attempt). A failed write leaves no staging folder behind and raises a WriteError naming the path."""
        staging = staging_dir(self.jobs_dir, f".tmp-{job_id}-")
        target = self.job_dir(job_id)
        try:
            for name, frame in tables.items():
                write_bytes_atomic(staging / JOB_FILES[name], ordered(frame, name).to_csv(index=False).encode("utf-8"))
            for name, data in (files or {}).items():
                write_bytes_atomic(staging / name, data)
            write_text_atomic(staging / "job.json", _json_text(record))
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except WriteError:
            remove_tree(staging)
            raise
        except OSError as error:
            remove_tree(staging)
            raise WriteError(target, error) from None
        return target

    def job_record(self, job_id: str) -> dict[str, Any] | None:
        """A finished job's record, or None (not finished; a damaged ``job.json`` is named and run again)."""
        path = self.job_dir(job_id) / "job.json"
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as error:
            warnings.warn(f"{path} is damaged ({type(error).__name__}: {error}); the job counts as not run and is run "
                          "again on --resume", stacklevel=2)
            return None
        if not isinstance(record, dict) or "job_id" not in record:
            warnings.warn(f"{path} is not a job record (no job_id); the job counts as not run", stacklevel=2)
            return None
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every finished job's record (done or failed), in job-id order."""
        if not self.jobs_dir.is_dir():
            return []
        found = (self.job_record(p.name) for p in sorted(self.jobs_dir.iterdir()) if not p.name.startswith("."))
        return [r for r in found if r is not None]

    def split_summaries(self) -> dict[str, dict[str, Any]]:
        """``dataset/subset`` -> how its split was made (grouping, sizes, fingerprint), from the finished jobs: a job
        that made the split, before one that took it as the run recorded it (``split_source: recorded``)."""
        summaries: dict[str, dict[str, Any]] = {}
        for r in self.records():
            if r.get("status") == "done" and isinstance(r.get("split"), dict):
                unit = f"{r['dataset']}/{r['subset']}"
                if unit not in summaries or summaries[unit].get("split_source") == "recorded":
                    summaries[unit] = r["split"]
        return summaries

    def done_job_ids(self) -> set[str]:
        return {r["job_id"] for r in self.records() if r.get("status") == "done"}

    def remove_partial(self) -> int:
        """Delete job folders a killed run left half-written; return how many."""
        partial = [p for p in self.jobs_dir.glob(".tmp-*")] if self.jobs_dir.is_dir() else []
        for stale in self.jobs_dir.glob(".*.log") if self.jobs_dir.is_dir() else []:
            stale.unlink(missing_ok=True)  # the live log of a job that was stopped: it runs again
        for path in partial:
            remove_tree(path)
        return len(partial)

    # --- merged CSVs ---------------------------------------------------------------------------
    def tables_from_jobs(self, tables: tuple[str, ...] = TABLES, attempts: int = 3) -> dict[str, pd.DataFrame]:
        """The run-level tables built in memory from the finished job folders (a consistent snapshot).

        A job folder replaced while it is read (a failed job retried by a running process) is read again.
        """
        for attempt in range(attempts):
            try:
                return self._tables(self.records(), tables)
            except FileNotFoundError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _tables(self, records: list[dict[str, Any]], tables: tuple[str, ...]) -> dict[str, pd.DataFrame]:
        frames = {}
        for name in tables:
            if name == "jobs":
                rows = [{k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in r.items()
                         if k not in ("traceback", "tags", "split")} for r in records]
                frames[name] = ordered(pd.DataFrame(rows), "jobs")
                continue
            parts = [pd.read_csv(self.job_dir(r["job_id"]) / JOB_FILES[name], keep_default_na=True, dtype=ID_DTYPES)
                     for r in records if (self.job_dir(r["job_id"]) / JOB_FILES[name]).is_file()]
            parts = [p for p in parts if not p.empty]
            frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS[name])
            if name == "splits":
                frame = frame.drop_duplicates(subset=["dataset", "subset", "sample_id"])
            frames[name] = ordered(frame, name)
        return frames

    def merge(self, tables: tuple[str, ...] = TABLES) -> dict[str, pd.DataFrame]:
        """Rebuild run-level CSVs from the job folders; return the tables written."""
        frames = self.tables_from_jobs(tables)
        for name, frame in frames.items():
            write_text_atomic(self.path / f"{name}.csv", frame.to_csv(index=False))
        return frames
