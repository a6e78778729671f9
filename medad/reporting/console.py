"""What ``medad run`` prints at the end: ROC AUC per dataset/subset x detector, below-chance cells marked; the
all-anomalous classifier on each test set and every degenerate operating point (the run's and the papers')."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medad.benchmark.run_folder import ID_DTYPES
from medad.evaluation.all_anomalous import DEGENERATE, all_anomalous_values
from medad.evaluation.metrics import ORACLE_POLICIES
from medad.reporting import threshold_reference as ref
from medad.reporting.paper_results import compare, load_paper_results
from medad.reporting.run_data import load_run
from medad.reporting.tables import threshold_references

BELOW_CHANCE_MARK = "(<0.5)"
BELOW_CHANCE_LEGEND = (f"{BELOW_CHANCE_MARK}: below chance: every seed's 95% bootstrap interval (ci_high in metrics.csv) "
                       "lies below 0.5, the scores rank anomalies below normals on this data")


def auc_table(run_path: Path, metric: str = "roc_auc") -> str:
    """Mean (and std over seeds) of ``metric`` per dataset/subset (rows) x detector (columns), as text.

    A ROC AUC cell is marked :data:`BELOW_CHANCE_MARK` (and a legend line added) when every seed's own 95% bootstrap
    interval (stratified bootstrap of its test set: ``ci_high`` in metrics.csv) lies below 0.5. Each seed's interval
    is used rather than the report's seed-mean interval: it needs nothing but metrics.csv, and it is the stricter
    rule (one seed whose interval reaches 0.5, or has none, leaves the cell unmarked).
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
    # one string per cell, built in Python: masked assignment into a string Series breaks on pandas 3.0's str dtype
    cells = pd.Series([(f"{m:.3f}±{s:.3f}" if n > 1 else f"{m:.3f}") + (f" {BELOW_CHANCE_MARK}" if below else "")
                       for m, s, n, below in zip(mean, std.fillna(0.0), count, marked)],
                      index=mean.index, dtype=object)
    table = cells.unstack("detector").fillna("-")
    legend = f"\n{BELOW_CHANCE_LEGEND}" if marked.any() else ""
    return f"{metric} (mean over seeds)\n" + table.to_string() + legend


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


def threshold_reference_text(run_path: Path) -> str:
    """The all-anomalous classifier's precision, recall, F1, specificity and PR AUC (chance) on each test set of the
    run, then every degenerate operating point: the run's (per detector and threshold policy, in how many seeds)
    and the shipped paper numbers' on the run's datasets/subsets (from the test-set sizes the papers state)."""
    data = load_run(run_path)
    lines = []
    for unit in data.units:
        size = ref.unit_test_size(data, unit)
        if size is None or not size.n_anomalous:
            continue
        values = all_anomalous_values(size)
        lines.append(f"  {unit}: {size.total} test images, {size.n_anomalous} anomalous: precision "
                     f"{values['precision']:.3f}, recall 1, F1 {values['f1']:.3f}, specificity 0; PR AUC at chance "
                     f"{values['pr_auc']:.3f}")
    if not lines:
        return ""
    text = ["all-anomalous classifier (flags every test image, no model) on each test set:", *lines]
    marks = []
    policies = sorted(set(data.metrics.loc[data.metrics["metric"] == "recall", "threshold_policy"].dropna()))
    for unit in data.units:
        for detector in data.detectors:
            for policy in policies:
                found = ref.seed_points(data, unit, detector, policy).text()
                if found:
                    marks.append(f"  {unit} {detector} {policy}{' (oracle)' if policy in ORACLE_POLICIES else ''}: "
                                 f"{found.removeprefix(DEGENERATE).strip()}")
    comparison = compare(load_paper_results(), data.metrics)
    papers = {}
    for r, (_, _, paper_point, _) in zip(comparison.itertuples(index=False), threshold_references(data, comparison)):
        if paper_point:
            papers.setdefault(f"  {r.unit} {r.detector} {r.threshold_policy}, paper ({r.source}): {paper_point}", None)
    if marks or papers:
        text.append(f"{DEGENERATE}s (every anomaly flagged and at most K normals left unflagged, K from Fisher's "
                    "exact test at 1% on the test set's sizes; the report explains):")
        text += marks + list(papers)
    return "\n".join(text)
