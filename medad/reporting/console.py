"""The table ``medad run`` prints at the end: ROC AUC per dataset/subset x detector."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def auc_table(run_path: Path, metric: str = "roc_auc") -> str:
    """Mean (and std over seeds) of ``metric`` per dataset/subset (rows) x detector (columns), as text."""
    path = Path(run_path) / "metrics.csv"
    metrics = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if metrics.empty:
        return f"no {metric} values yet (no job finished)"
    rows = metrics[metrics["metric"] == metric].copy()
    if rows.empty:
        return f"no {metric} values yet (no job finished)"
    rows["dataset/subset"] = rows["dataset"] + "/" + rows["subset"]
    grouped = rows.groupby(["dataset/subset", "detector"])["value"]
    mean, std, count = grouped.mean(), grouped.std(), grouped.count()
    # one string per cell, built in Python: masked assignment into a string Series breaks on pandas 3.0's str dtype
    cells = pd.Series([f"{m:.3f}±{s:.3f}" if n > 1 else f"{m:.3f}" for m, s, n in zip(mean, std.fillna(0.0), count)],
                      index=mean.index, dtype=object)
    table = cells.unstack("detector").fillna("-")
    return f"{metric} (mean over seeds)\n" + table.to_string()


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
