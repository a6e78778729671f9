"""What ``medad run`` prints at the end: ROC AUC per dataset/subset x detector, below-chance cells marked; the
all-anomalous classifier on each test set and every degenerate operating point (the run's and the papers')."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medad.benchmark.run_folder import ID_DTYPES
from medad.evaluation.all_anomalous import DEGENERATE, all_anomalous_values
from medad.evaluation.chance import SYMMETRIC_METRICS, below_chance
from medad.evaluation.metrics import ORACLE_POLICIES
from medad.evaluation.shortcut import NOT_DISTINGUISHABLE, SHORTCUT_FILE, WORSE, control_labels, seeds_verdict
from medad.reporting import threshold_reference as ref
from medad.reporting.paper_results import compare, load_paper_results
from medad.reporting.run_data import RunData, load_run, unit_name
from medad.reporting.tables import metric_interval, threshold_references

BELOW_CHANCE_MARK = "(<0.5)"
BELOW_CHANCE_LEGEND = (f"{BELOW_CHANCE_MARK}: below chance: the 95% interval the report shows (one seed: its bootstrap "
                       "interval; several: the bootstrap of the seed-mean) lies below 0.5, the scores rank anomalies "
                       "below normals on this data (the report's verdict: scores inverted)")
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


def auc_table(run_path: Path, metric: str = "roc_auc", data: RunData | None = None) -> str:
    """Mean (and std over seeds) of ``metric`` per dataset/subset (rows) x detector (columns), as text.

    A cell is marked :data:`BELOW_CHANCE_MARK` (and a legend line added) by the report's rule on the report's
    interval: :func:`medad.evaluation.chance.below_chance` on :func:`medad.reporting.tables.metric_interval` (one
    seed: its stratified bootstrap interval from metrics.csv; several: the stratified bootstrap of the seed-mean,
    test images resampled jointly across seeds), so a cell is marked exactly where the report's paper comparison
    says "scores inverted on this data". ``data``: the run already read (the end of a run shares it with the
    report, and with it the seed-mean intervals); read from ``run_path`` when not given. A ROC AUC
    cell whose shortcut verdict over seeds (the run's ``shortcut.csv``) is not "better than the controls" is marked
    with it (:data:`SHORTCUT_MARKS`); the control detectors' columns come last, marked :data:`CONTROL_SUFFIX`.
    """
    data = data if data is not None else load_run(run_path)
    metrics = data.metrics
    rows = metrics[metrics["metric"] == metric].copy() if not metrics.empty else metrics
    if rows.empty:
        return f"no {metric} values yet (no job finished)"
    rows["value"] = pd.to_numeric(rows["value"], errors="coerce")
    rows["dataset/subset"] = [unit_name(d, s) for d, s in zip(rows["dataset"], rows["subset"])]
    groups = rows.groupby(["dataset/subset", "detector"])
    mean, std, count = groups["value"].mean(), groups["value"].std(), groups["value"].count()

    def marked(unit: str, detector: str) -> bool:
        if metric not in SYMMETRIC_METRICS:  # no chance level of 0.5: no interval needed
            return False
        interval = metric_interval(data, unit, detector, data.metric_rows(unit, detector, metric))
        return interval is not None and below_chance(metric, interval.low, interval.high)

    below = [marked(unit, detector) for unit, detector in mean.index]
    verdicts = shortcut_marks(run_path) if metric == "roc_auc" else {}
    # one string per cell, built in Python: masked assignment into a string Series breaks on pandas 3.0's str dtype
    cells = pd.Series([(f"{m:.3f}±{s:.3f}" if n > 1 else f"{m:.3f}") + (f" {BELOW_CHANCE_MARK}" if b else "")
                       + (f" {SHORTCUT_MARKS[verdicts[key]]}" if key in verdicts else "")
                       for key, m, s, n, b in zip(mean.index, mean, std.fillna(0.0), count, below)],
                      index=mean.index, dtype=object)
    table = cells.unstack("detector").fillna("-")
    controls = control_labels(metrics)
    table = table[[d for d in table.columns if d not in controls] + [d for d in table.columns if d in controls]]
    table.columns = pd.Index([f"{d}{CONTROL_SUFFIX}" if d in controls else d for d in table.columns], name="detector")
    legend = [BELOW_CHANCE_LEGEND] if any(below) else []
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


def threshold_reference_text(run_path: Path, data: RunData | None = None) -> str:
    """The all-anomalous classifier's precision, recall, F1, specificity and PR AUC (chance) on each test set of the
    run, then every degenerate operating point: the run's (per detector and threshold policy, in how many seeds)
    and the shipped paper numbers' on the run's datasets/subsets (from the test-set sizes the papers state).
    ``data``: the run already read (as for :func:`auc_table`)."""
    data = data if data is not None else load_run(run_path)
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
