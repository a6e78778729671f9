"""The run folder: manifest, per-job folders written atomically, and the merged tidy CSVs.

::

    <run>/manifest.json   config, versions, git commit, hardware, start/end
    <run>/jobs/<job-id>/  job.json, metrics.csv, scores.csv, history.csv, split.csv (+ model.pt)
    <run>/jobs.csv metrics.csv scores.csv history.csv splits.csv   merged from the job folders

A job folder appears only complete (written under a temporary name, then renamed), so a killed run
leaves either a finished job or nothing; the run-level CSVs are rebuilt from the job folders, never
appended to, so a resumed run cannot duplicate rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

# A run id names one folder inside --results: one path component of safe characters.
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
KEY_COLUMNS = ["run_id", "dataset", "subset", "detector", "seed"]
COLUMNS = {
    "jobs": ["run_id", "job_id", "dataset", "subset", "detector", "detector_name", "seed", "status", "error",
             "wall_s", "train_s", "score_s", "peak_rss_mb", "peak_gpu_mb", "device", "worker", "started", "finished"],
    "metrics": KEY_COLUMNS + ["supervision", "weights", "metric", "value", "ci_low", "ci_high", "threshold_policy",
                              "oracle", "note"],
    "scores": KEY_COLUMNS + ["part", "sample_id", "label", "score"],
    "history": KEY_COLUMNS + ["epoch", "step", "loss_name", "value"],
    "splits": ["run_id", "dataset", "subset", "sample_id", "part", "label"],
}
JOB_FILES = {"metrics": "metrics.csv", "scores": "scores.csv", "history": "history.csv", "splits": "split.csv"}
STATUSES = ("done", "failed", "skipped")


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


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        handle.write(text)
        temporary = Path(handle.name)
    os.replace(temporary, path)


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
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_text_atomic(self.manifest_path, json.dumps(manifest, indent=2, default=str) + "\n")

    # --- job folders ---------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def write_job(self, job_id: str, record: dict[str, Any], tables: dict[str, pd.DataFrame],
                  files: dict[str, Path | bytes] | None = None) -> Path:
        """Write a job's record and tables as one folder, atomically (replacing an earlier attempt).

        A file is given as a temporary path (moved in) or as its bytes (from a job run on another machine).
        """
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.jobs_dir, prefix=f".tmp-{job_id}-"))
        for name, frame in tables.items():
            ordered(frame, name).to_csv(staging / JOB_FILES[name], index=False)
        for name, source in (files or {}).items():
            if isinstance(source, bytes):
                (staging / name).write_bytes(source)
            else:
                shutil.move(str(source), staging / name)
        (staging / "job.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        target = self.job_dir(job_id)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        return target

    def job_record(self, job_id: str) -> dict[str, Any] | None:
        path = self.job_dir(job_id) / "job.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def records(self) -> list[dict[str, Any]]:
        """Every finished job's record (done or failed), in job-id order."""
        if not self.jobs_dir.is_dir():
            return []
        found = (self.job_record(p.name) for p in sorted(self.jobs_dir.iterdir()) if not p.name.startswith("."))
        return [r for r in found if r is not None]

    def done_job_ids(self) -> set[str]:
        return {r["job_id"] for r in self.records() if r.get("status") == "done"}

    def remove_partial(self) -> int:
        """Delete job folders a killed run left half-written; return how many."""
        partial = [p for p in self.jobs_dir.glob(".tmp-*")] if self.jobs_dir.is_dir() else []
        for path in partial:
            shutil.rmtree(path, ignore_errors=True)
        return len(partial)

    # --- merged CSVs ---------------------------------------------------------------------------
    def merge(self, tables: tuple[str, ...] = ("jobs", "metrics", "scores", "history", "splits")) -> None:
        """Rebuild run-level CSVs from the job folders."""
        records = self.records()
        for name in tables:
            if name == "jobs":
                rows = [{k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v for k, v in r.items()
                         if k not in ("traceback", "tags")} for r in records]
                frame = ordered(pd.DataFrame(rows), "jobs")
            else:
                parts = [pd.read_csv(self.job_dir(r["job_id"]) / JOB_FILES[name], keep_default_na=True)
                         for r in records if (self.job_dir(r["job_id"]) / JOB_FILES[name]).is_file()]
                parts = [p for p in parts if not p.empty]
                frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS[name])
                if name == "splits":
                    frame = frame.drop_duplicates(subset=["dataset", "subset", "sample_id"])
                frame = ordered(frame, name)
            write_text_atomic(self.path / f"{name}.csv", frame.to_csv(index=False))
