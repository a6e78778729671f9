"""The report's tables: the study's TABLE 3 layout, ranks, DeLong p-values, paper vs reproduced, failed jobs.

Each builder returns a :class:`Table` of plain-text cells (the HTML template escapes them) with a
sort key per cell; the TABLE 3 layout is also exported as CSV and LaTeX.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medad.benchmark.metrics import ORACLE_POLICIES
from medad.benchmark.statistics import critical_difference, delong_test, friedman_p, holm, rank_table
from medad.reporting.run_data import DetectorTags, RunData, unit_name

STUDY_METRICS = ("precision", "recall", "f1")
CURVE_METRICS = ("roc_auc", "pr_auc")
OPERATING_METRICS = ("sens_at_spec90", "sens_at_spec95", "spec_at_sens95")
# (metric, threshold policy) of the pixel-level columns; Dice at the honest pixel threshold only
PIXEL_METRICS = (("pixel_roc_auc", "none"), ("pixel_pr_auc", "none"), ("aupro", "none"), ("dice", "val_px_q99"))
LABELS = {"precision": "Precision", "recall": "Recall", "f1": "F1", "roc_auc": "ROC AUC", "pr_auc": "PR AUC",
          "specificity": "Specificity", "sens_at_spec90": "Sens @ 90% spec", "sens_at_spec95": "Sens @ 95% spec",
          "spec_at_sens95": "Spec @ 95% sens", "accuracy": "Accuracy", "threshold": "Threshold",
          "pixel_roc_auc": "Pixel ROC AUC", "pixel_pr_auc": "Pixel PR AUC", "aupro": "AUPRO (FPR ≤ 0.3)",
          "dice": "Dice (val_px_q99)"}
POLICY_TEXT = {"val_q95": "val_q95: 95th percentile of normal validation scores (honest, fixed before the test set)",
               "best_f1": "best_f1: the test threshold that maximises F1 (ORACLE: chosen on test labels, as in the study)",
               "youden": "youden: the test threshold maximising sensitivity + specificity - 1 (ORACLE)"}


@dataclass
class Badge:
    """A short label beside a cell's text (semi-supervised, weights, protocol, oracle)."""

    text: str
    kind: str = "info"          # info | warn | oracle
    title: str = ""


@dataclass
class Cell:
    text: str
    sort: float | str | None = None
    css: str = ""
    title: str = ""
    badges: list[Badge] = field(default_factory=list)


@dataclass
class Table:
    id: str
    caption: str
    columns: list[str]
    rows: list[list[Cell]]
    note: str = ""
    downloads: list[tuple[str, str]] = field(default_factory=list)   # (label, relative path)


def fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def number_cell(values: pd.Series, digits: int = 3, ci: tuple[float, float] | None = None) -> Cell:
    """Mean ± std over seeds (the mean sorts); the bootstrap interval beside it when given."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return Cell("–", None, "num")
    mean = float(values.mean())
    text = fmt(mean, digits) if len(values) == 1 else f"{fmt(mean, digits)} ± {fmt(float(values.std()), digits)}"
    if ci is not None and np.isfinite(ci[0]):
        text += f" [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"
    return Cell(text, mean, "num", f"{len(values)} seed(s)")


def tag_badges(tags: DetectorTags | None) -> list[Badge]:
    """Badges for what sets a detector's rows apart: supervision, pretrained weights, protocol tags."""
    if tags is None:
        return []
    badges = []
    if tags.semi_supervised:
        badges.append(Badge(tags.supervision, "warn", "trained with labelled anomalies: ranked apart from unsupervised"))
    if tags.weights not in ("none", ""):
        kind = "info" if tags.weights == "imagenet" else "warn"
        badges.append(Badge(f"weights: {tags.weights}", kind,
                            "pretrained weights" if kind == "info" else "not the ImageNet weights the paper used"))
    badges += [Badge(f"{key}: {value}", "info", f"extra tag column {key!r}") for key, value in tags.extra.items()]
    return badges


def detector_cell(data: RunData, detector: str) -> Cell:
    return Cell(detector, detector, "name", badges=tag_badges(data.tags.get(detector)))


def _select(data: RunData, unit: str, detector: str, metric: str, policy: str = "none") -> pd.DataFrame:
    return data.metric_rows(unit, detector, metric, policy)


def _ci(rows: pd.DataFrame) -> tuple[float, float] | None:
    low, high = pd.to_numeric(rows["ci_low"], errors="coerce"), pd.to_numeric(rows["ci_high"], errors="coerce")
    return (float(low.mean()), float(high.mean())) if low.notna().any() else None


def detector_group(data: RunData, detector: str) -> str:
    tags = data.tags.get(detector)
    return tags.supervision if tags else "unsupervised"


# --- TABLE 3 layout -----------------------------------------------------------------------------
def study_table(data: RunData, policy: str, units: list[str] | None = None, table_id: str = "") -> Table:
    """Precision, recall, F1 at ``policy``; ROC/PR AUC (with bootstrap CI) and the clinical operating points."""
    units = data.units if units is None else units
    oracle = policy in ORACLE_POLICIES
    in_units = (data.metrics["dataset"] + "/" + data.metrics["subset"]).isin(units)
    pixel = [(m, p) for m, p in PIXEL_METRICS if data.metrics.loc[
        in_units & data.metrics["metric"].eq(m) & data.metrics["threshold_policy"].eq(p), "value"].notna().any()]
    columns = ["Dataset/subset", "Detector"] + [f"{LABELS[m]} ({policy})" for m in STUDY_METRICS] + \
              [f"{LABELS[m]} [95% CI]" for m in CURVE_METRICS] + [LABELS[m] for m in OPERATING_METRICS] + \
              [LABELS[m] for m, _ in pixel]
    rows = []
    for unit in units:
        for detector in data.detectors:
            if _select(data, unit, detector, "roc_auc").empty:
                continue
            cells = [Cell(unit, unit), detector_cell(data, detector)]
            for metric in STUDY_METRICS:
                cell = number_cell(_select(data, unit, detector, metric, policy)["value"])
                if oracle:
                    cell.badges.append(Badge("oracle", "oracle", POLICY_TEXT.get(policy, policy)))
                cells.append(cell)
            for metric in CURVE_METRICS:
                selected = _select(data, unit, detector, metric)
                cells.append(number_cell(selected["value"], ci=_ci(selected)))
            cells += [number_cell(_select(data, unit, detector, m)["value"]) for m in OPERATING_METRICS]
            cells += [number_cell(_select(data, unit, detector, m, p)["value"]) for m, p in pixel]
            rows.append(cells)
    caption = f"TABLE 3 layout at threshold policy {policy}" + (" (ORACLE)" if oracle else " (honest)")
    note = (POLICY_TEXT.get(policy, policy) + ". ROC/PR AUC: mean ± std over seeds, with the stratified bootstrap "
            "95% interval (1000 resamples; averaged over seeds). Operating points: best value on the test ROC curve "
            "under the constraint.")
    return Table(table_id or f"table3-{policy}", caption, columns, rows, note)


def study_wide(data: RunData, policy: str) -> pd.DataFrame:
    """TABLE 3 as the study prints it: dataset/subset rows, (metric, detector) columns, mean ± std strings."""
    rows = data.metrics[data.metrics["metric"].isin(STUDY_METRICS + CURVE_METRICS)]
    rows = rows[((rows["metric"].isin(STUDY_METRICS)) & (rows["threshold_policy"] == policy))
                | ((rows["metric"].isin(CURVE_METRICS)) & (rows["threshold_policy"] == "none"))]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(unit=rows["dataset"] + "/" + rows["subset"])
    stats = rows.groupby(["unit", "metric", "detector"], sort=False)["value"].agg(["mean", "std", "count"])
    text = [fmt(m) if c <= 1 else f"{fmt(m)} ± {fmt(s)}" for m, s, c in stats.itertuples(index=False)]
    wide = pd.Series(text, index=stats.index).unstack(["metric", "detector"])
    order = [(m, d) for m in STUDY_METRICS + CURVE_METRICS for d in data.detectors if (m, d) in wide.columns]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(order)).reindex(index=[u for u in data.units if u in wide.index])
    wide.columns = pd.MultiIndex.from_tuples([(LABELS[m], d) for m, d in wide.columns])
    return wide


def export_study(data: RunData, policy: str, folder: Path) -> list[tuple[str, str]]:
    """Write ``table3_<policy>.csv`` and ``.tex`` into ``folder``; return (label, file name) pairs."""
    wide = study_wide(data, policy)
    if wide.empty:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    wide.to_csv(folder / f"table3_{policy}.csv")
    caption = f"Reproduced results ({policy}{', oracle threshold' if policy in ORACLE_POLICIES else ''}); mean $\\pm$ std over seeds."
    latex = wide.to_latex(escape=True, caption=caption, label=f"tab:table3-{policy}", multicolumn=True,
                          multicolumn_format="c").replace("±", "$\\pm$")
    (folder / f"table3_{policy}.tex").write_text(latex)
    return [("CSV", f"tables/table3_{policy}.csv"), ("LaTeX", f"tables/table3_{policy}.tex")]


# --- ranks --------------------------------------------------------------------------------------
def mean_matrix(data: RunData, metric: str = "roc_auc") -> pd.DataFrame:
    """Mean ``metric`` over seeds, units (rows) x detectors (columns)."""
    rows = data.metrics[(data.metrics["metric"] == metric) & (data.metrics["threshold_policy"] == "none")]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(unit=rows["dataset"] + "/" + rows["subset"])
    matrix = rows.groupby(["unit", "detector"])["value"].mean().unstack("detector")
    return matrix.reindex(index=[u for u in data.units if u in matrix.index],
                          columns=[d for d in data.detectors if d in matrix.columns])


def rank_groups(data: RunData, metric: str = "roc_auc") -> dict[str, pd.DataFrame]:
    """Ranks by ROC AUC per unit, computed separately for each supervision group (never mixed)."""
    matrix = mean_matrix(data, metric)
    groups: dict[str, pd.DataFrame] = {}
    for detector in matrix.columns:
        groups.setdefault(detector_group(data, detector), []).append(detector)
    return {group: rank_table(matrix[detectors]) for group, detectors in groups.items()}


def ranks_table(data: RunData, metric: str = "roc_auc") -> Table:
    """Average rank across units per detector, ranked within its supervision group."""
    units = data.units
    columns = ["Detector", "Group", "Average rank", "Units"] + units
    rows = []
    notes = []
    for group, ranks in rank_groups(data, metric).items():
        complete = ranks.dropna()
        average = ranks.mean(axis=0)
        for detector in average.sort_values().index:
            cells = [detector_cell(data, detector), Cell(group, group), Cell(fmt(average[detector], 2), float(average[detector]), "num"),
                     Cell(str(int(ranks[detector].notna().sum())), int(ranks[detector].notna().sum()), "num")]
            cells += [Cell(fmt(ranks.at[u, detector], 1) if u in ranks.index else "–",
                           float(ranks.at[u, detector]) if u in ranks.index else None, "num") for u in units]
            rows.append(cells)
        k, n = ranks.shape[1], len(complete)
        p = friedman_p(mean_matrix(data, metric)[ranks.columns])
        notes.append(f"{group}: {k} detectors over {n} complete units; Nemenyi critical difference (alpha 0.05) "
                     f"{fmt(critical_difference(k, n), 2)}; Friedman p = {fmt(p, 4)}")
    note = (f"Rank 1 = highest mean {LABELS.get(metric, metric)} over seeds within the unit; ties share the average rank. "
            "Semi-supervised detectors (trained with labelled anomalies) are ranked in their own group. " + "; ".join(notes))
    return Table(f"ranks-{metric}", f"Ranks by {LABELS.get(metric, metric)} across datasets", columns, rows, note)


# --- DeLong ---------------------------------------------------------------------------------------
def delong_frame(data: RunData) -> pd.DataFrame:
    """DeLong's test for each pair of detectors scored on the same test images (same unit and seed), Holm-adjusted per unit and seed."""
    columns = ["unit", "seed", "detector_a", "detector_b", "auc_a", "auc_b", "difference", "standard_error", "z",
               "p_value", "p_holm", "n_test", "same_group"]
    test = data.scores[data.scores["part"] == "test"] if not data.scores.empty else data.scores
    records = []
    for (dataset, subset, seed), rows in test.groupby(["dataset", "subset", "seed"], sort=False):
        table = rows.pivot_table(index="sample_id", columns="detector", values="score", aggfunc="first")
        labels = rows.drop_duplicates("sample_id").set_index("sample_id")["label"].reindex(table.index)
        detectors = [d for d in data.detectors if d in table.columns]
        found = []
        for a, b in itertools.combinations(detectors, 2):
            pair = table[[a, b]].dropna()
            y = labels.reindex(pair.index).to_numpy()
            try:
                result = delong_test(y, pair[a].to_numpy(), pair[b].to_numpy())
            except ValueError:
                continue
            found.append({"unit": unit_name(dataset, subset), "seed": int(seed), "detector_a": a, "detector_b": b,
                          "auc_a": result.auc_a, "auc_b": result.auc_b, "difference": result.difference,
                          "standard_error": result.standard_error, "z": result.z, "p_value": result.p_value,
                          "n_test": len(pair), "same_group": detector_group(data, a) == detector_group(data, b)})
        for record, adjusted in zip(found, holm([r["p_value"] for r in found])):
            record["p_holm"] = float(adjusted)
        records += found
    return pd.DataFrame(records, columns=columns)


def p_cell(p: float) -> Cell:
    text = "–" if not np.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")
    return Cell(text, float(p) if np.isfinite(p) else None, "num sig" if np.isfinite(p) and p < 0.05 else "num")


def delong_table(data: RunData, frame: pd.DataFrame, unit: str) -> Table:
    rows = []
    for r in frame[frame["unit"] == unit].itertuples(index=False):
        rows.append([detector_cell(data, r.detector_a), detector_cell(data, r.detector_b), Cell(str(r.seed), r.seed, "num"),
                     Cell(fmt(r.auc_a), r.auc_a, "num"), Cell(fmt(r.auc_b), r.auc_b, "num"),
                     Cell(f"{r.difference:+.3f}", r.difference, "num"), Cell(fmt(r.standard_error), r.standard_error, "num"),
                     Cell(f"{r.z:.2f}", r.z if np.isfinite(r.z) else None, "num"), p_cell(r.p_value), p_cell(r.p_holm)])
    note = ("DeLong's test of equal ROC AUC on the same test images (two-sided; fast algorithm of Sun & Xu 2014); "
            "Holm-adjusted over the pairs of this unit and seed. p < 0.05 in bold.")
    if not frame[(frame["unit"] == unit) & ~frame["same_group"]].empty:
        note += " Pairs across supervision groups compare a semi-supervised with an unsupervised detector."
    return Table(f"delong-{unit}", f"DeLong's test, {unit}", ["Detector A", "Detector B", "Seed", "AUC A", "AUC B",
                                                                "A − B", "SE", "z", "p", "p (Holm)"], rows, note)


def summary_table(data: RunData, frame: pd.DataFrame) -> Table:
    """Per unit and supervision group: the best detector, the runner-up, the gap and its DeLong p-values."""
    matrix = mean_matrix(data)
    rows = []
    for unit in matrix.index:
        for group in dict.fromkeys(detector_group(data, d) for d in matrix.columns):
            values = matrix.loc[unit, [d for d in matrix.columns if detector_group(data, d) == group]].dropna()
            if values.empty:
                continue
            ordered = values.sort_values(ascending=False)
            best = ordered.index[0]
            cells = [Cell(unit, unit), Cell(group, group), detector_cell(data, best), Cell(fmt(ordered.iloc[0]), ordered.iloc[0], "num")]
            if len(ordered) > 1:
                second = ordered.index[1]
                pairs = frame[(frame["unit"] == unit) & (((frame["detector_a"] == best) & (frame["detector_b"] == second))
                                                         | ((frame["detector_a"] == second) & (frame["detector_b"] == best)))]
                worst_p = float(pairs["p_value"].max()) if not pairs.empty else float("nan")
                cells += [detector_cell(data, second), Cell(fmt(ordered.iloc[1]), ordered.iloc[1], "num"),
                          Cell(f"{ordered.iloc[0] - ordered.iloc[1]:+.3f}", ordered.iloc[0] - ordered.iloc[1], "num"),
                          p_cell(worst_p),
                          Cell("yes" if np.isfinite(worst_p) and worst_p < 0.05 else "no")]
            else:
                cells += [Cell("–"), Cell("–"), Cell("–"), Cell("–"), Cell("only one detector")]
            rows.append(cells)
    note = ("Best = highest mean ROC AUC over seeds; supervision groups are compared separately. "
            "p: DeLong's test of best vs runner-up on the same test images, the largest p over seeds (unadjusted).")
    return Table("summary", "Which detector is best on which dataset, by how much, and is it significant",
                 ["Dataset/subset", "Group", "Best", "ROC AUC", "Runner-up", "ROC AUC", "Gap", "p (DeLong)",
                  "Significant (p < 0.05)"], rows, note)


# --- paper vs reproduced, failed jobs ------------------------------------------------------------
def paper_table(data: RunData, comparison: pd.DataFrame) -> Table:
    rows = []
    for r in comparison.itertuples(index=False):
        policy = Cell(r.threshold_policy, r.threshold_policy)
        if r.oracle:
            policy.badges.append(Badge("oracle", "oracle", POLICY_TEXT.get(r.threshold_policy, "")))
        reproduced = (Cell("not run", None, "num") if r.seeds == 0 else
                      Cell(fmt(r.reproduced) if r.seeds == 1 else f"{fmt(r.reproduced)} ± {fmt(r.std)}", r.reproduced, "num",
                           f"{r.seeds} seed(s)"))
        rows.append([Cell(r.unit, r.unit), detector_cell(data, r.detector), Cell(LABELS.get(r.metric, r.metric), r.metric),
                     policy, Cell(fmt(r.value), r.value, "num"), reproduced,
                     Cell("–" if not np.isfinite(r.difference) else f"{r.difference:+.3f}",
                          r.difference if np.isfinite(r.difference) else None, "num"),
                     Cell(r.split_match, r.split_match), Cell(r.paper, r.paper, title=r.note)])
    note = ("Paper numbers ship in medad/data/paper_results*.csv. Difference = reproduced − paper. "
            "split_match: yes = the paper's own file lists, sizes = the same split sizes drawn with our seed, no = a different split.")
    return Table("paper-vs-reproduced", "Paper vs reproduced", ["Dataset/subset", "Detector", "Metric", "Policy", "Paper",
                                                               "Reproduced", "Difference", "Split", "Paper source"], rows, note)


def failed_table(data: RunData) -> Table:
    jobs = data.jobs[data.jobs["status"].isin(["failed", "skipped"])] if not data.jobs.empty else data.jobs
    rows = [[Cell(str(r.job_id)), Cell(unit_name(r.dataset, r.subset)), detector_cell(data, str(r.detector)),
             Cell(str(r.seed), r.seed, "num"), Cell(str(r.status)), Cell("" if pd.isna(r.error) else str(r.error), css="error")]
            for r in jobs.itertuples(index=False)]
    return Table("failed-jobs", "Jobs that failed or were skipped", ["Job", "Dataset/subset", "Detector", "Seed", "Status", "Error"],
                 rows, "The full traceback of a failed job is in jobs/<job>/job.json of the run folder.")


def jobs_table(data: RunData) -> Table:
    rows = []
    for r in data.jobs.itertuples(index=False):
        rows.append([Cell(str(r.job_id)), Cell(str(r.status), css=f"status-{r.status}"),
                     *[Cell(fmt(pd.to_numeric(getattr(r, c), errors="coerce"), 1),
                            float(pd.to_numeric(getattr(r, c), errors="coerce")), "num")
                       for c in ("wall_s", "train_s", "score_s", "peak_rss_mb", "peak_gpu_mb")],
                     Cell("" if pd.isna(r.device) else str(r.device))])
    return Table("jobs", "All jobs: status, time and memory", ["Job", "Status", "Wall s", "Train s", "Score s",
                                                              "Peak RSS MB", "Peak GPU MB", "Device"], rows)


def all_metrics_table(data: RunData, unit: str, table_id: str) -> Table:
    """Every metric of ``unit`` under every threshold policy (mean ± std over seeds), oracle policies marked."""
    rows = data.unit_rows(data.metrics, unit)
    table_rows = []
    for (detector, policy, metric), group in rows.groupby(["detector", "threshold_policy", "metric"], sort=False):
        policy_cell = Cell(str(policy), str(policy))
        if bool(group["oracle"].any()):
            policy_cell.badges.append(Badge("oracle", "oracle", POLICY_TEXT.get(policy, "chosen on test labels")))
        notes = sorted({str(n) for n in group["note"].dropna() if str(n)})
        table_rows.append([detector_cell(data, str(detector)), Cell(LABELS.get(metric, metric), metric), policy_cell,
                           number_cell(group["value"], ci=_ci(group)), Cell("; ".join(notes))])
    return Table(table_id, f"Every metric, {unit}", ["Detector", "Metric", "Threshold policy", "Value", "Note"],
                 table_rows, "Mean ± std over seeds; [bootstrap 95% interval] where metrics.csv has one.")
