"""The table ``medad run`` prints at the end: ROC AUC per dataset/subset x detector, below-chance cells marked."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medad.benchmark.run_folder import ID_DTYPES
from medad.evaluation.shortcut import NOT_DISTINGUISHABLE, SHORTCUT_FILE, WORSE, control_labels, seeds_verdict

BELOW_CHANCE_MARK = "(<0.5)"
BELOW_CHANCE_LEGEND = (f"{BELOW_CHANCE_MARK}: below chance: every seed's 95% bootstrap interval (ci_high in metrics.csv) "
                       "lies below 0.5, the scores rank anomalies below normals on this data")
CONTROL_SUFFIX = " [control]"
SHORTCUT_MARKS = {NOT_DISTINGUISHABLE: "(~control)", WORSE: "(<control)"}
SHORTCUT_LEGEND = {NOT_DISTINGUISHABLE: f"{SHORTCUT_MARKS[NOT_DISTINGUISHABLE]}: {NOT_DISTINGUISHABLE}",
                   WORSE: f"{SHORTCUT_MARKS[WORSE]}: {WORSE}"}


def shortcut_marks(run_path: Path) -> dict[tuple[str, str], str]:
    """(dataset/subset, detector) -> the verdict of the run's ``shortcut.csv`` over seeds, where it is not "better
    than the controls" (nor "not tested"); empty without the file."""
    path = Path(run_path) / SHORTCUT_FILE
    if not path.is_file() or path.stat().st_size == 0:
        return {}
    frame = pd.read_csv(path, dtype=ID_DTYPES)
    found = {}
    for (dataset, subset, detector), rows in frame.groupby(["dataset", "subset", "detector"]):
        verdict = seeds_verdict(rows)
        if verdict is not None and verdict.verdict in SHORTCUT_MARKS:
            found[(f"{dataset}/{subset}", str(detector))] = verdict.verdict
    return found


def auc_table(run_path: Path, metric: str = "roc_auc") -> str:
    """Mean (and std over seeds) of ``metric`` per dataset/subset (rows) x detector (columns), as text.

    A ROC AUC cell is marked :data:`BELOW_CHANCE_MARK` (and a legend line added) when every seed's own 95% bootstrap
    interval (stratified bootstrap of its test set: ``ci_high`` in metrics.csv) lies below 0.5. Each seed's interval
    is used rather than the report's seed-mean interval: it needs nothing but metrics.csv, and it is the stricter
    rule (one seed whose interval reaches 0.5, or has none, leaves the cell unmarked). A ROC AUC cell whose shortcut
    verdict over seeds (the run's ``shortcut.csv``) is not "better than the controls" is marked with it
    (:data:`SHORTCUT_MARKS`); the control detectors' columns come last, marked :data:`CONTROL_SUFFIX`.
    """
    path = Path(run_path) / "metrics.csv"
    metrics = pd.read_csv(path, dtype=ID_DTYPES) if path.is_file() else pd.DataFrame()
    if metrics.empty:
        return f"no {metric} values yet (no job finished)"
    rows = metrics[metrics["metric"] == metric].copy()
    if rows.empty:
        return f"no {metric} values yet (no job finished)"
    rows["dataset/subset"] = rows["dataset"] + "/" + rows["subset"]
    ci_high = pd.to_numeric(rows["ci_high"], errors="coerce") if "ci_high" in rows else pd.Series(float("nan"), rows.index)
    rows["seed_below_chance"] = (ci_high < 0.5) & (metric in ("roc_auc", "pixel_roc_auc"))  # NaN compares False
    groups = rows.groupby(["dataset/subset", "detector"])
    mean, std, count = groups["value"].mean(), groups["value"].std(), groups["value"].count()
    marked = groups["seed_below_chance"].all()
    verdicts = shortcut_marks(run_path) if metric == "roc_auc" else {}
    # one string per cell, built in Python: masked assignment into a string Series breaks on pandas 3.0's str dtype
    cells = pd.Series([(f"{m:.3f}±{s:.3f}" if n > 1 else f"{m:.3f}") + (f" {BELOW_CHANCE_MARK}" if below else "")
                       + (f" {SHORTCUT_MARKS[verdicts[key]]}" if key in verdicts else "")
                       for key, m, s, n, below in zip(mean.index, mean, std.fillna(0.0), count, marked)],
                      index=mean.index, dtype=object)
    table = cells.unstack("detector").fillna("-")
    controls = control_labels(metrics)
    table = table[[d for d in table.columns if d not in controls] + [d for d in table.columns if d in controls]]
    table.columns = pd.Index([f"{d}{CONTROL_SUFFIX}" if d in controls else d for d in table.columns], name="detector")
    legend = [BELOW_CHANCE_LEGEND] if marked.any() else []
    legend += [SHORTCUT_LEGEND[v] for v in SHORTCUT_MARKS if v in verdicts.values()]
    if controls:
        legend.append(f"{CONTROL_SUFFIX.strip()}: a structure-blind control (a reference, never ranked); the shortcut "
                      f"check of every detector against the controls is in {SHORTCUT_FILE} and the report")
    return f"{metric} (mean over seeds)\n" + table.to_string() + "".join(f"\n{line}" for line in legend)


def job_table(jobs: list, statuses: dict[str, str] | None = None, fits: dict[str, str] | None = None) -> str:
    """The dry run's listing: one line per job (dataset, subset, detector label, seed, input, resources, status, and
    the fit it uses where ``fits`` maps job ids to fit ids), then the totals (jobs, fits to train, per detector)."""
    statuses = statuses or {}
    rows = []
    for job in jobs:
        resources = ", ".join(f"{k}={v}" for k, v in sorted(job.resources.items())) or "-"
        rows.append({"dataset": job.dataset, "subset": job.subset, "detector": job.detector, "seed": job.seed,
                     "input": f"{job.image_size}px x{job.channels}", "resources": resources,
                     "status": statuses.get(job.job_id, "pending"),
                     **({"fit": fits[job.job_id]} if fits is not None else {})})
    if not rows:
        return "no jobs"
    frame = pd.DataFrame(rows)
    counts = frame["status"].value_counts()
    per_detector = frame.groupby("detector", sort=False).size()
    fit_count = (f"\n{len(frame)} jobs, {frame['fit'].nunique()} fits (jobs with the same fit train it once)"
                 if fits is not None else "")
    totals = (f"{len(frame)} jobs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + fit_count
              + "\nper detector: " + ", ".join(f"{d} {n}" for d, n in per_detector.items()))
    return frame.to_string(index=False) + "\n\n" + totals
