"""The report's tables: the study's TABLE 3 layout, ranks, DeLong p-values, paper vs reproduced, failed jobs.

Each builder returns a :class:`Table` of plain-text cells (the HTML template escapes them) with a
sort key per cell; the TABLE 3 layout is also exported as CSV and LaTeX.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medad.evaluation.all_anomalous import DEGENERATE, TestSetSize
from medad.evaluation.metrics import ORACLE_POLICIES
from medad.evaluation.shortcut import CONTROL_ROLE, ROLE_TAG
from medad.evaluation.statistics import (
    METRIC_FUNCTIONS,
    critical_difference,
    delong_test,
    friedman_p,
    holm,
    rank_table,
    seed_mean_bootstrap,
)
from medad.reporting import threshold_reference as ref
from medad.reporting.paper_results import degenerate_verdict, verdict
from medad.reporting.run_data import DetectorTags, RunData, tags_using_test_labels, unit_name

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
TEST_SELECTED = "test-selected"
TEST_SELECTED_BADGE = "model selection used test labels"
SEED_MEAN_RESAMPLES = 1000
INTERVAL_TEXT = ("95% CI: per-seed stratified bootstrap with one seed; over several seeds, a stratified bootstrap "
                 f"of the seed-mean resampling test images jointly across seeds ({SEED_MEAN_RESAMPLES} resamples)")
ONE_SEED_INTERVAL = "stratified bootstrap of this seed's test set (from metrics.csv)"


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


@dataclass
class Interval:
    """A 95% interval shown beside a mean, and how it was built or why there is none (the cell's tooltip)."""

    low: float
    high: float
    how: str

    @property
    def found(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))


def number_cell(values: pd.Series, digits: int = 3, ci: Interval | None = None) -> Cell:
    """Mean ± std over seeds (the mean sorts); the interval beside it when given, its construction in the tooltip."""
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return Cell("–", None, "num")
    mean = float(values.mean())
    text = fmt(mean, digits) if len(values) == 1 else f"{fmt(mean, digits)} ± {fmt(float(values.std()), digits)}"
    title = f"{len(values)} seed(s)"
    if ci is not None and ci.found:
        text += f" [{fmt(ci.low, digits)}, {fmt(ci.high, digits)}]"
        title += f"; 95% CI: {ci.how}"
    elif ci is not None:
        title += f"; no interval: {ci.how}"
    return Cell(text, mean, "num", title)


DEVIATIONS_TAG = "deviations"
# What a tag means, shown as its badge's tooltip (every other tag: "extra tag column ...").
TAG_MEANINGS = {
    "adaptation": "a use of the method that its paper does not have (here: the healthy autoencoder's residual "
                  "scored on its own; the paper feeds it to a supervised classifier and reports accuracy), so no "
                  "paper number corresponds to these rows",
    "protocol": "clean: the harness's protocol (eval mode, final epoch, no test statistics); reference: the "
                "reference code's quirks",
    "selection": "how the reported epoch was chosen",
    "precision": "arithmetic precision of training and scoring",
    "deterministic": "trained and scored with deterministic algorithms: the same seed gives the same numbers on this "
                     "device",
    "score": "the image score used",
    ROLE_TAG: "control: a structure-blind control detector (grey-level statistics, histograms, the mean normal image), "
              "fitted on the training normals only; a reference for the shortcut check, never ranked as a detector",
    "diagnostics": "test-curve: the run scored the test set after every epoch as a diagnostic (history.csv, "
                   "diagnostic_test_roc_auc); never used for selection, thresholds or ranking, and the fit is "
                   "bit-identical to a run without it",
}
WARNING_TAGS = {"adaptation"}


def tag_badges(tags: DetectorTags | None) -> list[Badge]:
    """Badges for what sets a detector's rows apart: supervision, pretrained weights, protocol tags."""
    if tags is None:
        return []
    badges = []
    if tags.selected_on_test:
        used = ", ".join(f"{tag}: {value}" for tag, value in tags_using_test_labels(tags.extra).items())
        badges.append(Badge(TEST_SELECTED_BADGE, "oracle", f"{used}: the labelled test set chose the model or scaled "
                            "its scores, optimistic like an oracle threshold; ranked in its own group"))
    if tags.semi_supervised:
        badges.append(Badge(tags.supervision, "warn", "trained with labelled anomalies: ranked apart from unsupervised"))
    if tags.weights not in ("none", ""):
        kind = "info" if tags.weights == "imagenet" else "warn"
        badges.append(Badge(f"weights: {tags.weights}", kind,
                            "pretrained weights" if kind == "info" else "not the ImageNet weights the paper used"))
    for key, value in tags.extra.items():
        if key == ROLE_TAG and value == CONTROL_ROLE:
            badges.append(Badge(CONTROL_ROLE, "info", TAG_MEANINGS[ROLE_TAG]))
        elif key == DEVIATIONS_TAG:  # long: the badge says that there are some, its tooltip which
            badges.append(Badge("not the paper's setting", "warn", str(value)))
        else:
            badges.append(Badge(f"{key}: {value}", "warn" if key in WARNING_TAGS else "info",
                                TAG_MEANINGS.get(key, f"extra tag column {key!r}")))
    return badges


def detector_cell(data: RunData, detector: str) -> Cell:
    return Cell(detector, detector, "name", badges=tag_badges(data.tags.get(detector)))


def _select(data: RunData, unit: str, detector: str, metric: str, policy: str = "none") -> pd.DataFrame:
    return data.metric_rows(unit, detector, metric, policy)


def detector_group(data: RunData, detector: str) -> str:
    """The group a detector is ranked and compared in: its supervision, with ", test-selected" appended when the
    labelled test set chose its model or scaled its scores, so such rows never stand beside honest ones."""
    tags = data.tags.get(detector) or DetectorTags()
    return f"{tags.supervision}, {TEST_SELECTED}" if tags.selected_on_test else tags.supervision


# --- intervals over seeds -----------------------------------------------------------------------
class NoJointScores(ValueError):
    """The seeds' test scores cannot be joined image by image (the message says why)."""


def _numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce")


def seed_scores(data: RunData, unit: str, detector: str, seeds: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The test labels (n,) and scores (n, seeds) of ``detector`` on ``unit``, the seeds joined by sample_id."""
    scores = data.unit_rows(data.scores, unit)
    rows = scores[(scores["part"] == "test") & (scores["detector"] == detector)] if not scores.empty else scores
    if rows.empty:
        raise NoJointScores("scores.csv has no test scores of this detector and unit")
    rows = rows.assign(seed=_numbers(rows["seed"]))
    by_seed = {seed: rows[rows["seed"] == seed] for seed in seeds}
    missing = [seed for seed, seed_rows in by_seed.items() if seed_rows.empty]
    if missing:
        raise NoJointScores(f"scores.csv has no test scores of seed(s) {missing}")
    if any(seed_rows["sample_id"].duplicated().any() for seed_rows in by_seed.values()):
        raise NoJointScores("a test sample_id repeats within a seed")
    first_ids = set(by_seed[seeds[0]]["sample_id"])
    if any(set(seed_rows["sample_id"]) != first_ids for seed_rows in by_seed.values()):
        raise NoJointScores("the seeds' test sample_ids differ, so the images cannot be resampled jointly")
    joined = rows[rows["seed"].isin(seeds)]
    labels = joined.pivot(index="sample_id", columns="seed", values="label")
    if (labels.nunique(axis=1) > 1).any():
        raise NoJointScores("the seeds disagree on a test image's label")
    table = joined.pivot(index="sample_id", columns="seed", values="score")[list(seeds)]
    return labels.iloc[:, 0].to_numpy(dtype=np.int64), table.to_numpy(dtype=np.float64)


def _stable_seed(*parts: str) -> int:
    """A resampling seed from ``parts`` that is the same in every process (``hash`` of a str is salted)."""
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:4], "little")


def seed_mean_intervals(data: RunData, unit: str, detector: str,
                        seeds: tuple[int, ...]) -> tuple[dict[str, tuple[float, float]], str]:
    """The stratified bootstrap intervals of the seed-mean ROC/PR AUC of ``detector`` on ``unit`` over ``seeds``
    (:func:`~medad.evaluation.statistics.seed_mean_bootstrap`, seeded by unit and detector), or no interval and
    why; computed once per report."""
    key = ("seed-mean-intervals", unit, detector, seeds)
    if key not in data.derived:
        try:
            labels, scores = seed_scores(data, unit, detector, seeds)
            data.derived[key] = (seed_mean_bootstrap(labels, scores, n_resamples=SEED_MEAN_RESAMPLES,
                                                     seed=_stable_seed(unit, detector)), "")
        except NoJointScores as reason:
            data.derived[key] = ({}, str(reason))
    return data.derived[key]


def metric_interval(data: RunData, unit: str, detector: str, rows: pd.DataFrame) -> Interval | None:
    """The 95% interval of one cell's rows (one unit, detector, metric and policy; a row per seed): with one seed,
    that seed's stratified bootstrap interval from metrics.csv; over several, the stratified bootstrap of the
    seed-mean ROC/PR AUC (:func:`seed_mean_intervals`). An average of interval ends is no interval of anything, so
    where the seed-mean cannot be resampled the cell gets none, with the reason. None for a metric without one."""
    rows = rows[_numbers(rows["value"]).notna()]
    has_csv_interval = _numbers(rows["ci_low"]).notna().any()
    if len(rows) == 1:
        low, high = float(_numbers(rows["ci_low"]).iloc[0]), float(_numbers(rows["ci_high"]).iloc[0])
        return Interval(low, high, ONE_SEED_INTERVAL) if has_csv_interval else None
    metric = str(rows["metric"].iloc[0]) if len(rows) else ""
    if metric not in METRIC_FUNCTIONS or str(rows["threshold_policy"].iloc[0]) != "none":
        return Interval(float("nan"), float("nan"), f"no seed-mean bootstrap of {metric}") if has_csv_interval else None
    seeds = tuple(sorted(int(seed) for seed in _numbers(rows["seed"])))
    intervals, why_not = seed_mean_intervals(data, unit, detector, seeds)
    if metric not in intervals:
        return Interval(float("nan"), float("nan"), why_not)
    low, high = intervals[metric]
    return Interval(low, high, f"stratified bootstrap of the mean over {len(seeds)} seeds, test images resampled "
                               f"jointly across seeds ({SEED_MEAN_RESAMPLES} resamples)")


# --- the all-anomalous reference and degenerate operating points -------------------------------------
def reference_text(size: TestSetSize | None, metric: str) -> str:
    """The all-anomalous classifier's value of ``metric`` on ``size`` in words (for ROC/PR AUC: the chance level)."""
    value = ref.reference_value(size, metric)
    if not np.isfinite(value):
        return ""
    if metric == "pr_auc":
        return f"chance level (the prevalence) {fmt(value)}"
    if metric == "roc_auc":
        return f"chance level {fmt(value)}"
    return f"all-anomalous classifier on this test set: {fmt(value)}"


def with_reference(cell: Cell, size: TestSetSize | None, metric: str) -> Cell:
    """``cell`` with the all-anomalous value (or chance level) of ``metric`` added to its tooltip."""
    text = reference_text(size, metric)
    if text:
        cell.title = f"{cell.title}; {text}" if cell.title else text
    return cell


def degenerate_badge(points: ref.SeedPoints) -> Badge | None:
    """A "degenerate" badge saying in how many seeds and what the points flag, or None when no seed's is."""
    text = points.text()
    return Badge("degenerate", "warn", f"{text}. {ref.RULE_TEXT}") if text else None


def reference_row(unit: str, size: TestSetSize, columns: int) -> list[Cell]:
    """The all-anomalous classifier's row of the TABLE 3 layout (precision, recall, F1, then ROC/PR AUC and the
    operating points of a constant score: 0.5, the prevalence, 0, 0, 0); pixel columns empty."""
    values = ref.all_anomalous_values(size)
    cells = [Cell(unit, unit), Cell(ref.REFERENCE_NAME, ref.REFERENCE_NAME, "name",
                                    badges=[Badge("reference", "info", ref.REFERENCE_TEXT)])]
    cells += [Cell(fmt(values[m]), values[m], "num", reference_text(size, m)) for m in STUDY_METRICS + CURVE_METRICS]
    cells += [Cell(fmt(0.0), 0.0, "num", "a constant score: no threshold gives both") for _ in OPERATING_METRICS]
    return cells + [Cell("–") for _ in range(columns - len(cells))]


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
        size = ref.unit_test_size(data, unit)
        found = False
        for detector in data.detectors:
            if _select(data, unit, detector, "roc_auc").empty:
                continue
            found = True
            cells = [Cell(unit, unit), detector_cell(data, detector)]
            badge = degenerate_badge(ref.seed_points(data, unit, detector, policy))
            for metric in STUDY_METRICS:
                cell = with_reference(number_cell(_select(data, unit, detector, metric, policy)["value"]), size, metric)
                if oracle:
                    cell.badges.append(Badge("oracle", "oracle", POLICY_TEXT.get(policy, policy)))
                if badge is not None:
                    cell.badges.append(badge)
                cells.append(cell)
            for metric in CURVE_METRICS:
                selected = _select(data, unit, detector, metric)
                cells.append(with_reference(number_cell(selected["value"],
                                                        ci=metric_interval(data, unit, detector, selected)), size, metric))
            cells += [number_cell(_select(data, unit, detector, m)["value"]) for m in OPERATING_METRICS]
            cells += [number_cell(_select(data, unit, detector, m, p)["value"]) for m, p in pixel]
            rows.append(cells)
        if found and size is not None:
            rows.append(reference_row(unit, size, len(columns)))
    caption = (f"TABLE 3 layout at threshold policy {policy}" + (" (ORACLE)" if oracle else " (honest)")
               + f"; ROC/PR AUC {INTERVAL_TEXT}")
    note = (POLICY_TEXT.get(policy, policy) + ". ROC/PR AUC: mean ± std over seeds [95% interval]; a cell without an "
            "interval says why in its tooltip. Operating points: best value on the test ROC curve under the constraint. "
            f"Each dataset/subset ends with the {ref.REFERENCE_TEXT}: a cell's tooltip gives its value. "
            f"'degenerate' marks a {ref.RULE_TEXT}.")
    return Table(table_id or f"table3-{policy}", caption, columns, rows, note)


def study_wide(data: RunData, policy: str) -> pd.DataFrame:
    """TABLE 3 as the study prints it: dataset/subset rows, (metric, detector) columns, mean ± std strings; each metric's
    last column is the all-anomalous classifier on the unit's test set (for ROC/PR AUC, the chance level)."""
    rows = data.metrics[data.metrics["metric"].isin(STUDY_METRICS + CURVE_METRICS)]
    rows = rows[((rows["metric"].isin(STUDY_METRICS)) & (rows["threshold_policy"] == policy))
                | ((rows["metric"].isin(CURVE_METRICS)) & (rows["threshold_policy"] == "none"))]
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(unit=rows["dataset"] + "/" + rows["subset"])
    stats = rows.groupby(["unit", "metric", "detector"], sort=False)["value"].agg(["mean", "std", "count"])
    text = [fmt(m) if c <= 1 else f"{fmt(m)} ± {fmt(s)}" for m, s, c in stats.itertuples(index=False)]
    wide = pd.Series(text, index=stats.index).unstack(["metric", "detector"])
    for metric in STUDY_METRICS + CURVE_METRICS:  # the all-anomalous classifier beside the detectors
        wide[(metric, ref.REFERENCE_NAME)] = [fmt(ref.reference_value(ref.unit_test_size(data, unit), metric))
                                              for unit in wide.index]
    order = [(m, d) for m in STUDY_METRICS + CURVE_METRICS for d in [*data.detectors, ref.REFERENCE_NAME]
             if (m, d) in wide.columns]
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
    """Ranks by ``metric`` per unit, computed separately for each group of :func:`detector_group` (never mixed);
    control detectors are references, never ranked."""
    matrix = mean_matrix(data, metric)
    groups: dict[str, list[str]] = {}
    for detector in [d for d in matrix.columns if not data.is_control(d)]:
        groups.setdefault(detector_group(data, detector), []).append(detector)
    return {group: rank_table(matrix[detectors]) for group, detectors in groups.items()}


@dataclass
class RankGroup:
    """One group's ranks per unit, and the complete units (every detector of the group has a result there) that its
    average ranks, Friedman's test and the Nemenyi critical difference all use (Demšar 2006 ranks complete data)."""

    name: str
    ranks: pd.DataFrame          # units where any detector of the group has a result x the group's detectors
    complete_units: list[str]
    left_out: list[str]          # units where some detector of the group has no result

    @property
    def complete(self) -> pd.DataFrame:
        return self.ranks.loc[self.complete_units]

    @property
    def average(self) -> pd.Series:
        return self.complete.mean(axis=0)

    @property
    def friedman_p_value(self) -> float:
        return friedman_p(self.complete)

    @property
    def nemenyi_cd(self) -> float:
        return critical_difference(self.ranks.shape[1], len(self.complete_units))


def rank_summaries(data: RunData, metric: str = "roc_auc") -> list[RankGroup]:
    """Every group of :func:`rank_groups` with its complete and left-out units."""
    summaries = []
    for name, ranks in rank_groups(data, metric).items():
        ranks = ranks.dropna(how="all")   # a unit where none of the group ran is no unit of this group
        complete = list(ranks.dropna().index)
        summaries.append(RankGroup(name, ranks, complete, [u for u in ranks.index if u not in complete]))
    return summaries


def p_text(p: float) -> str:
    return "–" if not np.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def completeness_text(group: RankGroup) -> str:
    """Which units a group's average ranks use and which were left out."""
    text = f"average ranks over the {len(group.complete_units)} unit(s) where every detector of the group has a result"
    if group.left_out:
        text += f"; left out (some detector has no result): {', '.join(group.left_out)}"
    return text


def friedman_text(group: RankGroup) -> str:
    """Friedman's test over the group's complete units, and what it allows to read from the average ranks."""
    p = group.friedman_p_value
    if not np.isfinite(p):
        return "Friedman's test: no p-value (it needs 3 detectors, 2 complete units and ranks not all tied)"
    if p < 0.05:
        return f"Friedman's test over the same units: p = {p_text(p)} < 0.05, the ranks differ significantly"
    return (f"Friedman's test over the same units: p = {p_text(p)} ≥ 0.05, the ranks do not differ significantly "
            "(no pair of detectors should be read as different)")


def _rank_row(data: RunData, group: RankGroup, detector: str, units: list[str]) -> list[Cell]:
    average = float(group.average[detector])
    with_result = int(group.ranks[detector].notna().sum())
    cells = [detector_cell(data, detector), Cell(group.name, group.name),
             Cell(fmt(average, 2), average, "num", f"mean rank over {len(group.complete_units)} complete unit(s)"),
             Cell(str(with_result), with_result, "num")]
    for unit in units:
        rank = float(group.ranks.at[unit, detector]) if unit in group.ranks.index else float("nan")
        left_out = "left out of the average rank: not every detector of the group has a result here"
        cells.append(Cell(fmt(rank, 1), rank, "num", left_out if unit in group.left_out else ""))
    return cells


def ranks_table(data: RunData, metric: str = "roc_auc") -> Table:
    """Average rank over the complete units per detector, ranked within its group (supervision, test-set selection)."""
    units = data.units
    columns = ["Detector", "Group", "Average rank", "Units with a result"] + units
    rows, notes = [], []
    for group in rank_summaries(data, metric):
        rows += [_rank_row(data, group, detector, units) for detector in group.average.sort_values().index]
        notes.append(f"{group.name}: {group.ranks.shape[1]} detector(s); {completeness_text(group)}; Nemenyi critical "
                     f"difference (alpha 0.05) {fmt(group.nemenyi_cd, 2)}; {friedman_text(group)}")
    note = (f"Rank 1 = highest mean {LABELS.get(metric, metric)} over seeds within the unit; ties share the average rank. "
            "Semi-supervised detectors (trained with labelled anomalies) and test-selected ones (model selection or "
            "score scaling on the test labels) are ranked in their own groups. " + "; ".join(notes) + ".")
    return Table(f"ranks-{metric}", f"Ranks by {LABELS.get(metric, metric)} across datasets", columns, rows, note)


# --- DeLong ---------------------------------------------------------------------------------------
def delong_frame(data: RunData) -> pd.DataFrame:
    """DeLong's test for each pair of detectors scored on the same test images (same unit and seed), Holm-adjusted per
    unit and seed. Control detectors are left out: the shortcut check compares every detector with them."""
    columns = ["unit", "seed", "detector_a", "detector_b", "auc_a", "auc_b", "difference", "standard_error", "z",
               "p_value", "p_holm", "n_test", "same_group"]
    test = data.scores[data.scores["part"] == "test"] if not data.scores.empty else data.scores
    records = []
    for (dataset, subset, seed), rows in test.groupby(["dataset", "subset", "seed"], sort=False):
        table = rows.pivot_table(index="sample_id", columns="detector", values="score", aggfunc="first")
        labels = rows.drop_duplicates("sample_id").set_index("sample_id")["label"].reindex(table.index)
        detectors = [d for d in data.detectors if d in table.columns and not data.is_control(d)]
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
    return Cell(p_text(p), float(p) if np.isfinite(p) else None, "num sig" if np.isfinite(p) and p < 0.05 else "num")


def across_groups_badge(data: RunData, a: str, b: str) -> Badge:
    return Badge("across groups", "warn", f"{detector_group(data, a)} vs {detector_group(data, b)}: "
                                          "not a like-for-like comparison")


def delong_table(data: RunData, frame: pd.DataFrame, unit: str) -> Table:
    """DeLong's pairs of one unit; a pair whose detectors are in different groups is marked on its p-value."""
    rows = []
    for r in frame[frame["unit"] == unit].itertuples(index=False):
        p = p_cell(r.p_value)
        if not r.same_group:
            p.badges.append(across_groups_badge(data, r.detector_a, r.detector_b))
        rows.append([detector_cell(data, r.detector_a), detector_cell(data, r.detector_b), Cell(str(r.seed), r.seed, "num"),
                     Cell(fmt(r.auc_a), r.auc_a, "num"), Cell(fmt(r.auc_b), r.auc_b, "num"),
                     Cell(f"{r.difference:+.3f}", r.difference, "num"), Cell(fmt(r.standard_error), r.standard_error, "num"),
                     Cell(f"{r.z:.2f}", r.z if np.isfinite(r.z) else None, "num"), p, p_cell(r.p_holm)])
    note = ("DeLong's test of equal ROC AUC on the same test images (two-sided; fast algorithm of Sun & Xu 2014); "
            "Holm-adjusted over the pairs of this unit and seed. p < 0.05 in bold.")
    if not frame[(frame["unit"] == unit) & ~frame["same_group"]].empty:
        note += (" Pairs marked 'across groups' compare detectors of different groups (semi-supervised or test-selected "
                 "against another group): not a like-for-like comparison.")
    return Table(f"delong-{unit}", f"DeLong's test, {unit}", ["Detector A", "Detector B", "Seed", "AUC A", "AUC B",
                                                                "A − B", "SE", "z", "p", "p (Holm)"], rows, note)


def shortcut_badge(data: RunData, unit: str, detector: str) -> Badge | None:
    """A warning badge with the shortcut verdict of ``detector`` on ``unit`` where it is not "better than the
    controls" (:meth:`RunData.shortcut_verdict`); None where it is, or where nothing was checked."""
    found = data.shortcut_verdict(unit, detector)
    if found is None or found.better:
        return None
    return Badge(found.verdict, "warn", f"shortcut check: {found.text} (DeLong against every control on the same test "
                                        "images; see the section 'Is it better than a shortcut?')")


def shortcut_text(data: RunData, unit: str, detector: str) -> str:
    """The shortcut verdict of ``detector`` on ``unit`` over its seeds, as text; "" where nothing was checked."""
    found = data.shortcut_verdict(unit, detector)
    return found.text if found is not None else ""


def shortcut_cell(data: RunData, unit: str, detector: str) -> Cell:
    """The shortcut verdict of ``detector`` on ``unit`` over its seeds, as text (a warning style where not better)."""
    found = data.shortcut_verdict(unit, detector)
    if found is None:
        return Cell("–", None, title="not checked: no control scored these test images")
    return Cell(found.text, found.verdict, "" if found.better else "warn")


def summary_table(data: RunData, frame: pd.DataFrame) -> Table:
    """Per unit and group (:func:`detector_group`): the best detector, the runner-up, the gap and its DeLong p-values,
    and the best detector's shortcut verdict where the run has controls. Controls are never named best."""
    matrix = mean_matrix(data)
    matrix = matrix[[d for d in matrix.columns if not data.is_control(d)]]
    checked = not data.shortcut.empty
    rows = []
    for unit in matrix.index:
        for group in dict.fromkeys(detector_group(data, d) for d in matrix.columns):
            values = matrix.loc[unit, [d for d in matrix.columns if detector_group(data, d) == group]].dropna()
            if values.empty:
                continue
            ordered = values.sort_values(ascending=False)
            best = ordered.index[0]
            best_cell = detector_cell(data, best)
            badge = shortcut_badge(data, unit, best)
            if badge is not None:
                best_cell.badges.append(badge)
            cells = [Cell(unit, unit), Cell(group, group), best_cell, Cell(fmt(ordered.iloc[0]), ordered.iloc[0], "num")]
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
            if checked:
                cells.append(shortcut_cell(data, unit, best))
            rows.append(cells)
    note = ("Best = highest mean ROC AUC over seeds within a group: supervision groups and test-selected detectors "
            "(model selection or score scaling on the test labels) are compared separately, never named best beside "
            "honest ones; control detectors are references, never named best. "
            "p: DeLong's test of best vs runner-up on the same test images, the largest p over seeds (unadjusted).")
    columns = ["Dataset/subset", "Group", "Best", "ROC AUC", "Runner-up", "ROC AUC", "Gap", "p (DeLong)",
               "Significant (p < 0.05)"]
    if checked:
        columns.append("Best vs the controls")
        note += (" Best vs the controls: the shortcut check of the best detector (DeLong against every control on "
                 "the same test images; see 'Is it better than a shortcut?').")
    return Table("summary", "Which detector is best on which dataset, by how much, and is it significant", columns,
                 rows, note)


# --- paper vs reproduced, failed jobs ------------------------------------------------------------
def split_cell(split_match: str, split_info: dict | None) -> Cell:
    """The paper row's ``split_match``, checked against how this run split the unit: ``sizes`` holds only when
    the training normals were not reduced by a carved validation set (``val_source: train``)."""
    if split_match != "sizes" or not split_info:
        return Cell(split_match, split_match)
    val_fraction = (split_info.get("split") or {}).get("val_fraction", 0.0)
    if split_info.get("val_source", "carved") == "carved" and val_fraction:
        text = "test sizes only"
        return Cell(text, text, title=f"the test set has the paper's sizes, but {val_fraction:.0%} of its training "
                                      "normals were carved off as validation (val_source: train trains on all)")
    return Cell(split_match, split_match)


def with_verdicts(data: RunData, comparison: pd.DataFrame) -> pd.DataFrame:
    """``comparison`` (:func:`~medad.reporting.paper_results.compare`) with the reproduced 95% interval of each row
    (``ci_low``, ``ci_high``, and ``interval``: how it was built or why there is none) and its ``verdict``.

    The interval is the report's own (:func:`metric_interval`, as in TABLE 3): with one seed, that seed's
    stratified bootstrap from metrics.csv; over several, the stratified bootstrap of the seed-mean with the test
    images resampled jointly across seeds. Metrics without one (thresholded metrics over several seeds) get the
    verdict "no interval", and so does a paper row that was not run. ``shortcut``: the reproduced detector's shortcut
    verdict on the unit (:meth:`RunData.shortcut_verdict`; empty where the run has no control).
    """
    lows, highs, hows, verdicts = [], [], [], []
    references = threshold_references(data, comparison)
    for r, (_, _, paper_point, reproduced_point) in zip(comparison.itertuples(index=False), references):
        ci = (metric_interval(data, r.unit, r.detector, _select(data, r.unit, r.detector, r.metric, r.threshold_policy))
              if r.seeds > 0 else Interval(float("nan"), float("nan"), "not run"))
        ci = ci or Interval(float("nan"), float("nan"), f"metrics.csv has no interval of {r.metric}")
        lows.append(ci.low), highs.append(ci.high), hows.append(ci.how)
        verdicts.append(degenerate_verdict(verdict(r.metric, float(r.value), ci.low, ci.high), paper_point,
                                           reproduced_point))
    paper_ref, run_ref, paper_points, reproduced_points = (list(column) for column in zip(*references)) if references \
        else ([], [], [], [])
    shortcut = [shortcut_text(data, r.unit, r.detector) if r.seeds > 0 else "" for r in comparison.itertuples(index=False)]
    return comparison.assign(ci_low=lows, ci_high=highs, interval=hows, verdict=verdicts, shortcut=shortcut,
                             all_anomalous_paper=paper_ref, all_anomalous_run=run_ref,
                             paper_degenerate=paper_points, reproduced_degenerate=reproduced_points)


def threshold_references(data: RunData, comparison: pd.DataFrame) -> list[tuple[float, float, str, str]]:
    """Per row of ``comparison``: the all-anomalous value of its metric (for ROC/PR AUC, the chance level) on the
    paper's stated test set and on this run's, and for a rate of a degenerate operating point what it flags in the
    paper (from the paper's test-set sizes, ``medad/data/paper_test_sizes.csv``) and in the run's seeds."""
    sizes = ref.read_test_sizes()
    published = ref.published_points(comparison, sizes) if not comparison.empty else {}
    found = []
    for r in comparison.itertuples(index=False):
        paper_subset = getattr(r, "paper_subset", r.subset)
        paper_value = ref.paper_reference(sizes, r.source, r.unit, paper_subset, r.metric)
        run_value = ref.reference_value(ref.unit_test_size(data, r.unit), r.metric) if r.seeds > 0 else float("nan")
        paper_point = reproduced_point = ""
        if r.metric in ref.REFERENCE_METRICS and r.threshold_policy != "none":
            point = published.get((r.source, r.unit, r.detector, r.threshold_policy))
            paper_point = point.describe() if point is not None and point.degenerate else ""
            reproduced_point = ref.seed_points(data, r.unit, r.detector, r.threshold_policy).text() if r.seeds else ""
        found.append((paper_value, run_value, paper_point, reproduced_point))
    return found


def paper_table(data: RunData, comparison: pd.DataFrame) -> Table:
    """Paper vs reproduced; ``comparison`` as :func:`with_verdicts` returns it."""
    rows = []
    for r in comparison.itertuples(index=False):
        policy = Cell(r.threshold_policy, r.threshold_policy)
        if r.oracle:
            policy.badges.append(Badge("oracle", "oracle", POLICY_TEXT.get(r.threshold_policy, "")))
        values = _select(data, r.unit, r.detector, r.metric, r.threshold_policy)["value"]
        reproduced = (Cell("not run", None, "num") if r.seeds == 0 else
                      number_cell(values, ci=Interval(r.ci_low, r.ci_high, r.interval)))
        paper_cell = Cell(fmt(r.value), r.value, "num")
        if r.paper_degenerate:
            paper_cell.badges.append(Badge("degenerate", "warn", f"{DEGENERATE} ({r.paper_degenerate}), from the "
                                           f"paper's stated test set. {ref.RULE_TEXT}"))
        if r.reproduced_degenerate:
            reproduced.badges.append(Badge("degenerate", "warn", f"{r.reproduced_degenerate}. {ref.RULE_TEXT}"))
        rows.append([Cell(r.unit, r.unit), detector_cell(data, r.detector), Cell(LABELS.get(r.metric, r.metric), r.metric),
                     policy, paper_cell, reference_cell(r.metric, r.all_anomalous_paper, r.all_anomalous_run), reproduced,
                     Cell("–" if not np.isfinite(r.difference) else f"{r.difference:+.3f}",
                          r.difference if np.isfinite(r.difference) else None, "num"),
                     verdict_cell(data, r),
                     split_cell(r.split_match, data.manifest.get("splits", {}).get(r.unit)),
                     protocol_cell(data.tags.get(r.detector)), Cell(r.paper, r.paper, title=r.note)])
    note = ("Paper numbers ship in medad/data/paper_results*.csv. Reproduced: mean ± std over seeds [95% interval]; "
            f"{INTERVAL_TEXT}. Difference = reproduced − paper. Verdict: the paper's value against that interval: "
            "inside, above or below it (no interval: thresholded metrics over several seeds). For ROC AUC, "
            "'reproduced interval below 0.5: scores inverted on this data' when the whole interval lies below chance "
            "(the detector ranks anomalies below normals here), and 'consistent with reversed labels in the paper's "
            "evaluation' when the paper's value lies inside the interval turned over (1 − high, 1 − low): what the "
            "same scores give with the two labels swapped; only where the interval excludes 0.5, and so does one of "
            "its width around the paper's value (near chance either label order fits). That is a possible "
            "explanation to check, not a finding about the paper. "
            f"All-anomalous: the {ref.REFERENCE_TEXT}, on the paper's stated test set and on this run's (one number "
            "when they agree). The verdict adds 'paper: degenerate operating point' when every confusion matrix of the "
            "paper's stated test set that rounds to its precision, recall and F1 is degenerate, and 'reproduced: ...' "
            f"for the run's seeds; a {ref.RULE_TEXT}. "
            "A yellow badge beside the verdict gives the reproduced detector's shortcut check where it is not 'better "
            "than the controls': the reproduced value is then within reach of a structure-blind control on the same "
            "test images. "
            "Protocol: what makes the reproduced rows differ from the paper's setting (the detector's own account, "
            "its 'deviations' tag, and protocol tags), beside each difference. "
            "split_match: yes = the paper's own file lists, sizes = the same split sizes drawn with our seed (checked "
            "against this run: 'test sizes only' when part of the training normals was carved off for validation), "
            "no = a different split.")
    return Table("paper-vs-reproduced", "Paper vs reproduced", ["Dataset/subset", "Detector", "Metric", "Policy", "Paper",
                                                               "All-anomalous (paper | run)", "Reproduced [95% CI]", "Difference", "Verdict", "Split",
                                                               "Protocol vs the paper", "Paper source"], rows, note)


def reference_cell(metric: str, on_paper: float, on_run: float) -> Cell:
    """The all-anomalous value (for ROC/PR AUC the chance level) on the paper's test set and on the run's: one number
    when they agree to the shown digits, "paper | run" when not, "–" for a metric without one."""
    texts = [fmt(value) for value in (on_paper, on_run)]
    text = texts[0] if texts[0] == texts[1] else " | ".join(texts)
    kind = "chance level" if metric in ("roc_auc", "pr_auc") else "all-anomalous classifier"
    title = f"{kind}: on the paper's stated test set {texts[0]}, on this run's {texts[1]}"
    sort = on_run if np.isfinite(on_run) else on_paper if np.isfinite(on_paper) else None
    return Cell(text, sort, "num", title if text != "–" else "")


def verdict_cell(data: RunData, row: object) -> Cell:
    """A paper-vs-reproduced row's verdict, with the reproduced detector's shortcut verdict beside it where that is
    not "better than the controls" (the row's value may rest on brightness rather than on the anomaly)."""
    cell = Cell(row.verdict, row.verdict, "verdict", row.interval)
    badge = shortcut_badge(data, row.unit, row.detector) if row.seeds > 0 else None
    if badge is not None:
        cell.badges.append(badge)
    return cell


def protocol_cell(tags: DetectorTags | None) -> Cell:
    """The protocol choices that set a detector's rows apart from its paper: its deviations, weights, tags."""
    if tags is None:
        return Cell("")
    parts = [str(tags.extra[DEVIATIONS_TAG])] if tags.extra.get(DEVIATIONS_TAG) else []
    if tags.weights not in ("none", "", "imagenet"):
        parts.append(f"weights: {tags.weights}")
    parts += [f"{key}: {value}" for key, value in tags.extra.items()
              if key in ("protocol", "selection", "score_scaling", "adaptation", "precision") and value not in
              ("clean", "final-epoch", "none", "")]
    text = "; ".join(parts) or "as the paper"
    return Cell(text, text)


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
    size = ref.unit_test_size(data, unit)
    table_rows = []
    for (detector, policy, metric), group in rows.groupby(["detector", "threshold_policy", "metric"], sort=False):
        policy_cell = Cell(str(policy), str(policy))
        if bool(group["oracle"].any()):
            policy_cell.badges.append(Badge("oracle", "oracle", POLICY_TEXT.get(policy, "chosen on test labels")))
        notes = sorted({str(n) for n in group["note"].dropna() if str(n)})
        value = number_cell(group["value"], ci=metric_interval(data, unit, str(detector), group))
        if metric in ref.REFERENCE_METRICS and policy != "none":
            badge = degenerate_badge(ref.seed_points(data, unit, str(detector), str(policy)))
            value.badges += [badge] if badge is not None else []
        reference = ref.reference_value(size, str(metric)) if metric in CURVE_METRICS or policy != "none" else np.nan
        table_rows.append([detector_cell(data, str(detector)), Cell(LABELS.get(metric, metric), metric), policy_cell,
                           value, Cell(fmt(reference), reference if np.isfinite(reference) else None, "num",
                                       reference_text(size, str(metric)) if np.isfinite(reference) else ""),
                           Cell("; ".join(notes))])
    return Table(table_id, f"Every metric, {unit}; {INTERVAL_TEXT}", ["Detector", "Metric", "Threshold policy", "Value",
                                                                       "All-anomalous", "Note"], table_rows,
                 "Mean ± std over seeds; [95% interval] where metrics.csv has a bootstrap interval for the metric. "
                 f"All-anomalous: the {ref.REFERENCE_TEXT}. 'degenerate' marks a {ref.RULE_TEXT}.")
