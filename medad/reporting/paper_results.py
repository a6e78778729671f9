"""The papers' own numbers, shipped as data, and their comparison with a run's reproduced values.

Format (``medad/data/paper_results.csv``, and any further ``medad/data/paper_results*.csv`` a
contributor adds for another paper; one row per number)::

    source            short id of the table, e.g. esmaeili2023-table3
    paper             citation shown in the report
    dataset, subset   our registry names (an empty subset: the dataset's only subset)
    detector          our registry name (the CSV label of a run must equal it to be compared)
    metric            our metric vocabulary: roc_auc, pr_auc, precision, recall, f1, specificity, ...
    value             the paper's number, as a fraction (0.912, not 91.2)
    threshold_policy  none for threshold-free metrics; the policy the paper's operating point
                      corresponds to (best_f1 and youden are oracles: chosen on test labels)
    split_match       yes (the paper's own file lists), sizes (same split sizes, our seeded draw), no
    note              free text (how the number was read, caveats)

Each compared row gets a verdict (:func:`verdict`, column ``verdict`` of ``paper_vs_reproduced.csv``): where
the paper's value lies against the reproduced 95% interval, and for ROC AUC whether that interval lies below
chance and whether the paper's value is what the reproduced scores give with the labels reversed (the two rules
of :mod:`medad.evaluation.chance`, which the console table's below-chance mark uses too).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from medad.evaluation.all_anomalous import DEGENERATE
from medad.evaluation.chance import below_chance, mirrors_interval
from medad.evaluation.metrics import ORACLE_POLICIES

PAPER_COLUMNS = ["source", "paper", "dataset", "subset", "detector", "metric", "value", "threshold_policy",
                 "split_match", "note"]
SPLIT_MATCHES = ("yes", "sizes", "no")
INSIDE, ABOVE, BELOW = "inside", "above", "below"
NO_INTERVAL = "no interval"
INVERTED = "reproduced interval below 0.5: scores inverted on this data"
REVERSED_LABELS = "consistent with reversed labels in the paper's evaluation"
PAPER_DEGENERATE = f"paper: {DEGENERATE}"
REPRODUCED_DEGENERATE = "reproduced: "


def packaged_files() -> list[Path]:
    """``paper_results*.csv`` shipped in ``medad/data``, sorted by name."""
    folder = Path(str(resources.files("medad") / "data"))
    return sorted(folder.glob("paper_results*.csv")) if folder.is_dir() else []


def read_paper_results(path: Path) -> pd.DataFrame:
    """One paper-results CSV, validated: columns, numeric values in [0, 1], split_match vocabulary."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in PAPER_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {PAPER_COLUMNS}")
    values = pd.to_numeric(frame["value"], errors="coerce")
    bad = frame.index[values.isna() | (values < 0) | (values > 1)]
    if len(bad):
        raise ValueError(f"{path}: row {int(bad[0]) + 2}: value {frame.loc[bad[0], 'value']!r} is not a number in [0, 1]")
    wrong = frame.index[~frame["split_match"].isin(SPLIT_MATCHES)]
    if len(wrong):
        raise ValueError(f"{path}: row {int(wrong[0]) + 2}: split_match {frame.loc[wrong[0], 'split_match']!r} "
                         f"is not one of {list(SPLIT_MATCHES)}")
    frame["decimals"] = frame["value"].str.strip().str.partition(".")[2].str.len()  # how the paper printed it
    frame["value"] = values
    frame["threshold_policy"] = frame["threshold_policy"].replace("", "none")
    return frame[PAPER_COLUMNS + ["decimals"]]


def load_paper_results(paths: list[Path] | None = None) -> pd.DataFrame:
    """Every paper number (the packaged files unless ``paths`` is given), one frame."""
    frames = [read_paper_results(Path(p)) for p in (packaged_files() if paths is None else paths)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=PAPER_COLUMNS + ["decimals"])


def verdict(metric: str, paper_value: float, low: float, high: float) -> str:
    """Where the paper's value lies against the reproduced 95% interval [low, high], in words joined by "; ".

    ``inside`` (low <= value <= high), ``above`` (value > high: the paper reports more than was reproduced)
    or ``below`` (value < low); ``no interval`` when either end is not finite. For a label-symmetric metric
    (ROC AUC) two more findings may follow, by the rules of :mod:`medad.evaluation.chance`: :data:`INVERTED`
    when high < 0.5 (:func:`~medad.evaluation.chance.below_chance`: the whole interval ranks anomalies below
    normals), and :data:`REVERSED_LABELS` when the value lies inside the interval turned over, [1 - high,
    1 - low], and both the interval and one of its width around the value exclude 0.5
    (:func:`~medad.evaluation.chance.mirrors_interval`: the value a reversed label order would give; an interval
    reaching 0.5 overlaps its mirror, and a value near chance fits either order, so neither says anything).
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        return NO_INTERVAL
    parts = [INSIDE if low <= paper_value <= high else ABOVE if paper_value > high else BELOW]
    if below_chance(metric, low, high):
        parts.append(INVERTED)
    if mirrors_interval(metric, paper_value, low, high):
        parts.append(REVERSED_LABELS)
    return "; ".join(parts)


def degenerate_verdict(interval_verdict: str, paper_point: str = "", reproduced_point: str = "") -> str:
    """``interval_verdict`` (:func:`verdict`) with the degenerate operating points found, joined by "; ": the paper's
    (``paper_point``: what its point flags, as :meth:`~medad.evaluation.all_anomalous.PublishedPoint.describe`
    says) and the reproduced one (``reproduced_point``: the text of the seeds' points, empty when none is)."""
    parts = [interval_verdict]
    if paper_point:
        parts.append(f"{PAPER_DEGENERATE} ({paper_point})")
    if reproduced_point:
        parts.append(f"{REPRODUCED_DEGENERATE}{reproduced_point}")
    return "; ".join(parts)


def compare(paper: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Paper value next to the reproduced mean (and std, seeds) of the same dataset/subset, detector, metric and policy.

    Only rows whose dataset/subset and detector occur in the run are kept. A paper row with an empty subset
    matches the run's subset of that dataset when the run has exactly one; ``paper_subset`` keeps the subset as the
    paper row gave it, ``decimals`` how many decimals the paper printed (when known).
    """
    columns = PAPER_COLUMNS + ["paper_subset", "decimals", "unit", "reproduced", "std", "seeds", "difference", "oracle"]
    if paper.empty or metrics.empty:
        return pd.DataFrame(columns=columns)
    grouped = (metrics.groupby(["dataset", "subset", "detector", "metric", "threshold_policy"])["value"]
               .agg(reproduced="mean", std="std", seeds="count").reset_index())
    subsets = grouped.groupby("dataset")["subset"].unique()
    paper = paper[paper["dataset"].isin(subsets.index) & paper["detector"].isin(grouped["detector"])].copy()
    if paper.empty:
        return pd.DataFrame(columns=columns)
    only = {d: s[0] for d, s in subsets.items() if len(s) == 1}
    paper["paper_subset"] = paper["subset"]
    if "decimals" not in paper:
        paper["decimals"] = np.nan
    empty = paper["subset"] == ""
    paper.loc[empty, "subset"] = paper.loc[empty, "dataset"].map(only).fillna("")
    merged = paper.merge(grouped, how="left", on=["dataset", "subset", "detector", "metric", "threshold_policy"])
    merged["unit"] = merged["dataset"] + "/" + merged["subset"]
    merged = merged[merged["unit"].isin(set(grouped["dataset"] + "/" + grouped["subset"]))].copy()
    merged["difference"] = merged["reproduced"] - merged["value"]
    merged["seeds"] = merged["seeds"].fillna(0).astype(int)
    merged["oracle"] = merged["threshold_policy"].isin(ORACLE_POLICIES)
    merged.loc[merged["seeds"] == 0, "difference"] = np.nan
    return merged[columns]
