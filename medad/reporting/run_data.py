"""A run folder's CSVs, read once for the report: metrics, scores, history, jobs, manifest, examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medad.benchmark.examples import EXAMPLES_FILE
from medad.benchmark.run_folder import COLUMNS, ID_DTYPES, RunFolder
from medad.benchmark.run_lock import is_locked
from medad.evaluation.shortcut import CONTROL_ROLE, ROLE_TAG, SeedsVerdict, seeds_verdict, shortcut_frame

UNIT_SEPARATOR = "/"


def unit_name(dataset: str, subset: str) -> str:
    """The name of one evaluation unit, ``dataset/subset``."""
    return f"{dataset}{UNIT_SEPARATOR}{subset}"


_TEXT_COLUMNS = {"dataset": str, "subset": str, "detector": str, "sample_id": str, "job_id": str}


# standard columns that runs of an earlier medad lack: such a run still loads
_LATER_COLUMNS = ("ci_low", "ci_high", "note", "oracle", "fit_id", "fit_by", "mean_intensity")


def _read(path: Path, name: str) -> pd.DataFrame:
    """``path`` as a frame with at least the standard columns of table ``name`` (empty when absent)."""
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=COLUMNS[name])
    try:
        frame = pd.read_csv(path, keep_default_na=True, dtype=ID_DTYPES)  # ids read as text; an empty fit id stays missing
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=COLUMNS[name])
    return _standard(frame, name, path)


def _standard(frame: pd.DataFrame, name: str, path: Path) -> pd.DataFrame:
    """``frame`` with table ``name``'s columns first; a clear error when a standard column is missing."""
    frame = frame.astype({c: str for c in _TEXT_COLUMNS if c in frame.columns and not frame.empty})
    missing = [c for c in COLUMNS[name] if c not in frame.columns and c not in _LATER_COLUMNS]
    if missing and not frame.empty:
        raise ValueError(f"{path}: missing columns {missing}; expected {COLUMNS[name]}")
    return frame.reindex(columns=list(COLUMNS[name]) + [c for c in frame.columns if c not in COLUMNS[name]])


# tag columns whose value names the test set when the labelled test images chose the model or scaled its scores
TEST_SELECTION_TAGS = ("selection", "score_scaling")


def tags_using_test_labels(extra: dict[str, str]) -> dict[str, str]:
    """The tags that say a detector's model selection or score scaling used the labelled test set: a ``selection``
    or ``score_scaling`` tag whose value contains "test" (GANomaly's ``selection: best-test-epoch`` of the reference
    protocol, ``score_scaling: test-minmax``). Such rows are optimistic in the way an oracle threshold is."""
    return {tag: str(extra[tag]) for tag in TEST_SELECTION_TAGS if "test" in str(extra.get(tag, "")).lower()}


@dataclass
class DetectorTags:
    """What kind of result a detector's rows are: supervision, weights and extra tags such as ``protocol``."""

    supervision: str = "unsupervised"
    weights: str = "none"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def semi_supervised(self) -> bool:
        return self.supervision != "unsupervised"

    @property
    def control(self) -> bool:
        """Whether these are a control detector's rows (tag ``role: control``): shown as a control, never ranked."""
        return self.extra.get(ROLE_TAG) == CONTROL_ROLE

    @property
    def selected_on_test(self) -> bool:
        """Whether the labelled test set chose the model or scaled its scores (see :func:`tags_using_test_labels`)."""
        return bool(tags_using_test_labels(self.extra))


@dataclass
class RunData:
    """Everything the report shows, read from one run folder."""

    path: Path
    run_id: str
    manifest: dict[str, Any]
    jobs: pd.DataFrame
    metrics: pd.DataFrame
    scores: pd.DataFrame
    history: pd.DataFrame
    tags: dict[str, DetectorTags]
    tag_columns: list[str]
    notice: str = ""   # why the tables were read from the job folders (a run in progress, missing CSVs)
    sources: dict[str, Path] = field(default_factory=dict)   # run id -> run folder, for a report over several runs
    _metric_index: dict | None = field(default=None, repr=False)
    # values derived from the tables once per report (e.g. seed-mean bootstrap intervals), by key
    derived: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def units(self) -> list[str]:
        """``dataset/subset`` units with any job or metric, in the config's order."""
        frames = [f[["dataset", "subset"]] for f in (self.jobs, self.metrics) if not f.empty]
        if not frames:
            return []
        pairs = pd.concat(frames).dropna().drop_duplicates()
        found = [unit_name(d, s) for d, s in pairs.itertuples(index=False)]
        config = self.manifest.get("config") or {}
        order = [unit_name(d.get("name", ""), s) for d in config.get("datasets", []) for s in (d.get("subsets") or [])]
        return _in_order(found, order)

    @property
    def detectors(self) -> list[str]:
        """Detector labels with any job or metric, in the config's order."""
        frames = [f["detector"] for f in (self.jobs, self.metrics) if not f.empty]
        found = list(pd.concat(frames).dropna().astype(str).drop_duplicates()) if frames else []
        config = self.manifest.get("config") or {}
        order = [d.get("label") or d.get("name", "") for d in config.get("detectors", [])]
        return _in_order(found, order)

    @property
    def controls(self) -> list[str]:
        """The control detectors' labels (tag ``role: control``), in the config's order."""
        return [d for d in self.detectors if d in self.tags and self.tags[d].control]

    def is_control(self, detector: str) -> bool:
        tags = self.tags.get(detector)
        return tags is not None and tags.control

    @property
    def shortcut(self) -> pd.DataFrame:
        """The shortcut check (``shortcut.csv``'s rows, :func:`medad.evaluation.shortcut.shortcut_frame`) computed
        from the run's test scores, once per report; empty when the run has no control rows."""
        if "shortcut" not in self.derived:
            self.derived["shortcut"] = shortcut_frame(self.scores, set(self.controls))
        return self.derived["shortcut"]

    def shortcut_verdict(self, unit: str, detector: str) -> SeedsVerdict | None:
        """The shortcut verdict of ``detector`` on ``unit`` over its seeds, or None where it was not checked."""
        frame = self.shortcut
        if frame.empty:
            return None
        return seeds_verdict(frame[(frame["dataset"] + UNIT_SEPARATOR + frame["subset"] == unit)
                                   & (frame["detector"] == detector)])

    def unit_rows(self, frame: pd.DataFrame, unit: str) -> pd.DataFrame:
        """The rows of ``frame`` that belong to ``unit``."""
        if frame.empty:
            return frame
        return frame[(frame["dataset"] + UNIT_SEPARATOR + frame["subset"]) == unit]

    def metric_rows(self, unit: str, detector: str, metric: str, policy: str = "none") -> pd.DataFrame:
        """The metrics.csv rows of one unit, detector, metric and threshold policy (all seeds)."""
        if self._metric_index is None:
            frame = self.metrics.assign(unit=self.metrics["dataset"] + UNIT_SEPARATOR + self.metrics["subset"])
            self._metric_index = {key: rows for key, rows in
                                  frame.groupby(["unit", "detector", "metric", "threshold_policy"], sort=False)}
        return self._metric_index.get((unit, detector, metric, policy), self.metrics.iloc[0:0])

    def examples_path(self, dataset: str, subset: str, detector: str, seed: int) -> Path | None:
        """The job's ``examples.npz`` when it has one."""
        done = self.jobs[(self.jobs["dataset"] == dataset) & (self.jobs["subset"] == subset)
                         & (self.jobs["detector"] == detector) & (self.jobs["seed"] == seed)]
        for job_id, run_id in zip(done["job_id"], done["run_id"]):
            path = self.sources.get(str(run_id), self.path) / "jobs" / str(job_id) / EXAMPLES_FILE
            if path.is_file():
                return path
        return None


def _in_order(found: list[str], order: list[str]) -> list[str]:
    """``found`` sorted by position in ``order`` (names not in it last, in their own order)."""
    position = {name: i for i, name in enumerate(order)}
    return sorted(found, key=lambda name: position.get(name, len(order)))


def _tag_text(value: object) -> str:
    """A tag value as written by its detector: a whole number read back as float (20.0) shows as 20."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _detector_tags(metrics: pd.DataFrame, tag_columns: list[str]) -> dict[str, DetectorTags]:
    tags: dict[str, DetectorTags] = {}
    for detector, rows in metrics.groupby("detector", sort=False):
        first = rows.iloc[0]
        extra = {c: _tag_text(first[c]) for c in tag_columns if pd.notna(first[c]) and str(first[c]) != ""}
        supervision = str(first["supervision"]) if pd.notna(first["supervision"]) else "unsupervised"
        weights = str(first["weights"]) if pd.notna(first["weights"]) else "none"
        tags[str(detector)] = DetectorTags(supervision, weights, extra)
    return tags


REPORT_TABLES = ("jobs", "metrics", "scores", "history")


def _tables(path: Path) -> tuple[dict[str, pd.DataFrame], str]:
    """The run's tables and a notice: the merged CSVs, or a snapshot of the job folders when the run is in
    progress (its CSVs may lag each other) or its ``metrics.csv`` is missing or empty while jobs finished."""
    folder = RunFolder(path)
    if is_locked(path):
        notice = "the run is in progress: this report is a snapshot of the jobs finished when it was built"
    else:
        metrics = path / "metrics.csv"
        if _read(metrics, "metrics").empty and any(r.get("status") == "done" for r in folder.records()):
            notice = f"{metrics.name} was missing or empty: rebuilt from the job folders in {folder.jobs_dir}"
        else:
            return {name: _read(path / f"{name}.csv", name) for name in REPORT_TABLES}, ""
    snapshot = folder.tables_from_jobs(REPORT_TABLES)
    return {name: _standard(frame, name, folder.jobs_dir) for name, frame in snapshot.items()}, notice


def load_run(path: str | Path) -> RunData:
    """Read a run folder (``manifest.json`` and the merged CSVs); a clear error when it is not one."""
    path = Path(path)
    manifest = RunFolder(path).read_manifest()
    tables, notice = _tables(path)
    metrics = tables["metrics"]
    tag_columns = [c for c in metrics.columns if c not in COLUMNS["metrics"]]
    if "oracle" in metrics:
        metrics["oracle"] = metrics["oracle"].astype(str).str.lower().isin(["true", "1"])
    return RunData(
        path=path, run_id=str(manifest.get("run_id") or path.name), manifest=manifest,
        jobs=tables["jobs"], metrics=metrics, scores=tables["scores"], history=tables["history"],
        tags=_detector_tags(metrics, tag_columns), tag_columns=tag_columns, notice=notice,
    )


def _test_images(data: RunData) -> dict[str, frozenset]:
    """``dataset/subset`` -> the (sample id, label) pairs its test scores cover."""
    test = data.scores[data.scores["part"] == "test"] if not data.scores.empty else data.scores
    return {unit_name(d, s): frozenset(zip(rows["sample_id"], rows["label"]))
            for (d, s), rows in test.groupby(["dataset", "subset"])} if not test.empty else {}


def check_same_splits(runs: list[RunData]) -> None:
    """Raise ValueError unless every dataset/subset two runs share was split alike (same fingerprint, same test
    images): paired statistics (DeLong) compare detectors on the same images."""
    seen: dict[str, tuple[str, object, frozenset | None]] = {}
    for run in runs:
        tests = _test_images(run)
        for unit, info in (run.manifest.get("splits") or {}).items():
            fingerprint = info.get("fingerprint") if isinstance(info, dict) else None
            images = tests.get(unit)
            if unit not in seen:
                seen[unit] = (run.run_id, fingerprint, images)
                continue
            other, other_print, other_images = seen[unit]
            if fingerprint and other_print and fingerprint != other_print:
                raise ValueError(f"{unit}: runs {other} and {run.run_id} split it differently (fingerprints "
                                 f"{other_print} and {fingerprint}); one report needs the same test images (DeLong "
                                 "pairs them): report the runs separately")
            if images is not None and other_images is not None and images != other_images:
                raise ValueError(f"{unit}: runs {other} and {run.run_id} tested on different images; one report needs "
                                 "the same test images: report the runs separately")


def load_runs(paths: list[str | Path], name: str | None = None) -> RunData:
    """One RunData over several run folders whose shared datasets were split alike (``medad report A B``)."""
    runs = [load_run(p) for p in paths]
    check_same_splits(runs)
    cells: dict[tuple, str] = {}
    for run in runs:
        keys = run.metrics[["dataset", "subset", "detector", "seed"]].drop_duplicates()
        for key in keys.itertuples(index=False, name=None):
            if key in cells:
                raise ValueError(f"{key[2]!r} seed {key[3]} on {key[0]}/{key[1]} is in both {cells[key]} and "
                                 f"{run.run_id}: give one of them another label (or report them separately)")
            cells[key] = run.run_id

    def union(entries_key: str, key: str) -> list[dict]:
        found: dict[str, dict] = {}
        for run in runs:
            for entry in (run.manifest.get("config") or {}).get(entries_key, []):
                known = found.setdefault(str(entry.get(key) or entry.get("name")), dict(entry))
                if entries_key == "datasets":
                    known["subsets"] = list(dict.fromkeys((known.get("subsets") or []) + (entry.get("subsets") or [])))
        return list(found.values())

    run_id = name or "+".join(run.run_id for run in runs)
    manifest = {"run_id": run_id, "sources": [str(run.path) for run in runs],
                "status": ", ".join(f"{run.run_id}: {run.manifest.get('status', '?')}" for run in runs),
                "start": min(str(run.manifest.get("start") or "") for run in runs),
                "end": max(str(run.manifest.get("end") or "") for run in runs),
                "git_commit": ", ".join(sorted({str(run.manifest.get("git_commit", "?")) for run in runs})),
                "config": {"datasets": union("datasets", "name"), "detectors": union("detectors", "label")},
                "splits": {unit: info for run in runs for unit, info in (run.manifest.get("splits") or {}).items()}}

    def joined(name: str) -> pd.DataFrame:
        return pd.concat([getattr(run, name) for run in runs], ignore_index=True)

    metrics = joined("metrics")
    tag_columns = [c for c in metrics.columns if c not in COLUMNS["metrics"]]
    notices = "; ".join(f"{run.run_id}: {run.notice}" for run in runs if run.notice)
    return RunData(path=runs[0].path, run_id=run_id, manifest=manifest, jobs=joined("jobs"), metrics=metrics,
                   scores=joined("scores"), history=joined("history"), tags=_detector_tags(metrics, tag_columns),
                   tag_columns=tag_columns, notice=notices, sources={run.run_id: run.path for run in runs})
