"""The report's section "Is it better than a shortcut?": every detector against the control detectors, how its score
follows image brightness, and what brightness alone gives (an oracle). The statistics are
:mod:`medad.evaluation.shortcut`'s (``RunData.shortcut``); this module only lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medad.evaluation.shortcut import ALPHA, BETTER, NOT_DISTINGUISHABLE, NOT_TESTED, WORSE
from medad.reporting import figures as fig
from medad.reporting.run_data import RunData, unit_name
from medad.reporting.shortcut_notice import shortcut_check_not_run
from medad.reporting.tables import Badge, Cell, Table, detector_cell, fmt, number_cell, p_text

SHORTCUT_CSV = "shortcut.csv"
ORACLE_TEXT = ("ORACLE: the direction (anomalies brighter or darker) is chosen on the test labels; a diagnostic of "
               "the test set, never a detector and never ranked")
METHOD_TEXT = (
    f"Each detector against every control on the same test images (DeLong's test of equal ROC AUC, two-sided, per "
    f"seed; alpha {ALPHA}). '{BETTER}': its ROC AUC is significantly higher than every control's (an "
    f"intersection-union test: no control is chosen on the test labels, and it is at least as strict as a test "
    f"against whichever control scores best). '{WORSE}': some control's is significantly higher after Holm's "
    f"adjustment over the controls. '{NOT_DISTINGUISHABLE}' otherwise. Over several seeds: the seeds' verdict where "
    "they agree, else 'not distinguishable' with each seed's count. The control named is the one that decides the "
    "verdict (the one least distinguishable from the detector, or for 'worse' the one most significantly above it). "
    "Spearman: the rank correlation of the detector's test scores with the images' mean intensity within each class "
    "(mean over seeds): a score that follows brightness among images of one class reads brightness. Controls are "
    "structure-blind references (grey-level statistics, histograms, the mean normal image), fitted on the training "
    "normals only; they are never ranked as detectors.")


def shortcut_not_run_message(data: RunData) -> str:
    """What the section says when the run has no control rows: the check was not run, and the ``medad run --extend``
    command that adds the controls (:func:`medad.reporting.shortcut_notice.shortcut_check_not_run`)."""
    return shortcut_check_not_run(data) or (f"The shortcut check was not run: run {data.run_id} has no test scores "
                                            "of a control detector.")


@dataclass
class ShortcutSection:
    """The section's tables and figures, or, when the run has no control rows, the message saying so."""

    tables: list[Table] = field(default_factory=list)
    figures: list[fig.Figure] = field(default_factory=list)
    message: str = ""


def _seed_rows(data: RunData, unit: str, detector: str) -> pd.DataFrame:
    frame = data.shortcut
    return frame[(frame["dataset"] + "/" + frame["subset"] == unit) & (frame["detector"] == detector)]


def _signed(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{value:+.2f}"


def _mean(values: pd.Series) -> float:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if not values.empty else float("nan")


def verdicts_table(data: RunData) -> Table:
    """Per unit and detector (controls apart): ROC AUC, the verdict over seeds, the deciding control, the per-seed
    DeLong p-values and the within-class Spearman correlations with mean intensity."""
    rows = []
    units = [unit_name(d, s) for d, s in data.shortcut[["dataset", "subset"]].drop_duplicates().itertuples(index=False)]
    for unit in [u for u in data.units if u in units]:
        for detector in [d for d in data.detectors if not data.is_control(d)]:
            seed_rows = _seed_rows(data, unit, detector)
            found = data.shortcut_verdict(unit, detector)
            if found is None:
                continue
            verdict = Cell(found.text, found.verdict, "" if found.better else "warn")
            if found.verdict == NOT_TESTED:
                verdict.title = "; ".join(sorted({str(n) for n in seed_rows["note"].dropna() if str(n)}))
            control_auc = number_cell(seed_rows["control_roc_auc"])
            control_auc.title = "; ".join(f"seed {s}: {c}" for s, c in zip(seed_rows["seed"], seed_rows["controls"]))
            p_values = ", ".join(p_text(float(p)) for p in pd.to_numeric(seed_rows["p_value"], errors="coerce"))
            normal, anomalous = _mean(seed_rows["spearman_normal"]), _mean(seed_rows["spearman_anomalous"])
            rows.append([Cell(unit, unit), detector_cell(data, detector), number_cell(seed_rows["roc_auc"]), verdict,
                         Cell(", ".join(found.controls) or "–"), control_auc, Cell(p_values or "–"),
                         Cell(_signed(normal), normal if np.isfinite(normal) else None, "num"),
                         Cell(_signed(anomalous), anomalous if np.isfinite(anomalous) else None, "num")])
    return Table("shortcut-verdicts", "Is each detector better than the controls?",
                 ["Dataset/subset", "Detector", "ROC AUC", "Verdict", "Deciding control", "Its ROC AUC",
                  "p (DeLong, per seed)", "Spearman with mean intensity: normals", "anomalies"], rows, METHOD_TEXT,
                 downloads=[("CSV", f"tables/{SHORTCUT_CSV}")])


def controls_table(data: RunData) -> Table:
    """Per unit: the ORACLE ROC AUC of mean intensity alone (label-favoured direction) and each control's ROC AUC."""
    controls = data.controls
    rows = []
    for unit in data.units:
        frame = data.shortcut[data.shortcut["dataset"] + "/" + data.shortcut["subset"] == unit]
        if frame.empty:
            continue
        oracle = pd.to_numeric(frame["intensity_roc_auc_oracle"], errors="coerce")
        direction = next((str(d) for d in frame["anomalies_are"] if isinstance(d, str) and d), "")
        value = float(oracle.dropna().iloc[0]) if oracle.notna().any() else float("nan")
        oracle_cell = Cell(fmt(value) + (f" (anomalies {direction})" if direction else ""),
                           value if np.isfinite(value) else None, "num",
                           "" if np.isfinite(value) else "scores.csv has no mean_intensity (a run of an earlier medad)")
        oracle_cell.badges.append(Badge("oracle", "oracle", ORACLE_TEXT))
        cells = [Cell(unit, unit), oracle_cell]
        for control in controls:
            cells.append(number_cell(data.metric_rows(unit, control, "roc_auc")["value"]))
        rows.append(cells)
    return Table("shortcut-controls", "What brightness and the controls give on each test set",
                 ["Dataset/subset", "Mean intensity alone: ROC AUC"] + [f"{c} (control): ROC AUC" for c in controls],
                 rows, f"Mean intensity alone: {ORACLE_TEXT}. Controls: mean ROC AUC over seeds (honest: fitted on "
                       "the training normals, no direction assumed).")


def build_shortcut_section(data: RunData, figures_dir: Path, tables_dir: Path) -> ShortcutSection:
    """The section of ``data``'s report; writes ``tables/shortcut.csv`` (the run's shortcut.csv, computed again
    from its scores) and the figures."""
    if data.shortcut.empty:
        return ShortcutSection(message=shortcut_not_run_message(data))
    tables_dir.mkdir(parents=True, exist_ok=True)
    data.shortcut.to_csv(tables_dir / SHORTCUT_CSV, index=False)
    figures = [f for f in (fig.intensity_scatter_figure(data, unit, figures_dir) for unit in data.units) if f is not None]
    return ShortcutSection([controls_table(data), verdicts_table(data)], figures)
