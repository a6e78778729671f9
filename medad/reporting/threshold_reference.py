"""The all-anomalous reference and degenerate operating points of a run and of the papers' numbers, for the tables,
the paper-vs-reproduced verdicts and the console (the statistics: :mod:`medad.evaluation.all_anomalous`).

A run's test-set sizes come from its own test scores (``scores.csv``, per job); a paper's from the sizes it states,
shipped as data (``medad/data/paper_test_sizes.csv``: ``source, dataset, subset, n_normal, n_anomalous, note``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from medad.evaluation.all_anomalous import (
    CHANCE_LEVELS,
    DEGENERATE,
    REFERENCE_METRICS,
    OperatingPoint,
    PublishedPoint,
    TestSetSize,
    all_anomalous_values,
    is_degenerate,
    point_from_rates,
    published_point,
)
from medad.reporting.run_data import UNIT_SEPARATOR, RunData

TEST_SIZE_COLUMNS = ["source", "dataset", "subset", "n_normal", "n_anomalous", "note"]
REFERENCE_NAME = "all-anomalous classifier"
REFERENCE_TEXT = ("all-anomalous classifier: flags every test image, no model (precision = prevalence, recall 1, "
                  "specificity 0, F1 = 2p/(1+p), accuracy = prevalence); beside ROC AUC and PR AUC their chance levels "
                  "(0.5 and the prevalence)")
RULE_TEXT = (f"{DEGENERATE}: flags every anomaly and leaves at most K normals unflagged, K the largest number that "
             "Fisher's exact test (one-sided, 1%) cannot tell from normals left out at random (K depends on the test "
             "set's sizes: Head-CT's 20 + 100 gives 2); its precision, recall and F1 describe a threshold below "
             "nearly every test image, not the detector")


def has_reference(metric: str) -> bool:
    """Whether ``metric`` gets the all-anomalous value (a rate) or a chance level (ROC/PR AUC) beside it."""
    return metric in REFERENCE_METRICS or metric in CHANCE_LEVELS


# --- a run's test sets ------------------------------------------------------------------------------
def job_test_sizes(data: RunData) -> dict[tuple[str, str, int], TestSetSize]:
    """(unit, detector, seed) -> its test set's size, from the test scores (computed once per report)."""
    key = ("job-test-sizes",)
    if key not in data.derived:
        test = data.scores[data.scores["part"] == "test"] if not data.scores.empty else data.scores
        sizes = {}
        if not test.empty:
            labels = pd.to_numeric(test["label"], errors="coerce")
            counts = test.assign(anomalous=labels.eq(1), normal=labels.eq(0)).groupby(
                ["dataset", "subset", "detector", "seed"])[["normal", "anomalous"]].sum()
            for (dataset, subset, detector, seed), row in counts.iterrows():
                sizes[(f"{dataset}{UNIT_SEPARATOR}{subset}", str(detector), int(float(seed)))] = TestSetSize(
                    int(row["normal"]), int(row["anomalous"]))
        data.derived[key] = sizes
    return data.derived[key]


def unit_test_size(data: RunData, unit: str) -> TestSetSize | None:
    """The size of ``unit``'s test set when every job of the unit tested on one of that size, else None."""
    found = {size for (name, _, _), size in job_test_sizes(data).items() if name == unit}
    return found.pop() if len(found) == 1 else None


def reference_value(size: TestSetSize | None, metric: str) -> float:
    """The all-anomalous value of ``metric`` (or its chance level) on ``size``; NaN without a size or a reference."""
    if size is None or not has_reference(metric):
        return float("nan")
    return all_anomalous_values(size)[metric]


@dataclass(frozen=True)
class SeedPoints:
    """One (unit, detector, policy)'s operating point in each seed, and which of them are degenerate."""

    points: dict[int, OperatingPoint]

    @property
    def degenerate(self) -> dict[int, OperatingPoint]:
        return {seed: point for seed, point in self.points.items() if is_degenerate(point)}

    def text(self) -> str:
        """"degenerate operating point (flags all 155 test images)", with "in 2 of 3 seeds" where not every seed
        is; "" when none is."""
        bad = self.degenerate
        if not bad:
            return ""
        what = sorted({point.describe() for point in bad.values()})
        seeds = "" if len(bad) == len(self.points) == 1 else f" in {len(bad)} of {len(self.points)} seeds"
        return f"{DEGENERATE}{seeds} ({'; '.join(what)})"


def seed_points(data: RunData, unit: str, detector: str, policy: str) -> SeedPoints:
    """Each seed's operating point at ``policy`` (from its recall and specificity and its test set's size)."""
    sizes = job_test_sizes(data)
    recall = data.metric_rows(unit, detector, "recall", policy)
    specificity = data.metric_rows(unit, detector, "specificity", policy)
    if recall.empty or specificity.empty:
        return SeedPoints({})
    by_seed = dict(zip(pd.to_numeric(specificity["seed"]).astype(int), pd.to_numeric(specificity["value"])))
    points = {}
    for seed, value in zip(pd.to_numeric(recall["seed"]).astype(int), pd.to_numeric(recall["value"])):
        size = sizes.get((unit, detector, int(seed)))
        point = None if size is None or seed not in by_seed else point_from_rates(size, value, by_seed[seed])
        if point is not None:
            points[int(seed)] = point
    return SeedPoints(points)


# --- the papers' test sets --------------------------------------------------------------------------
def packaged_test_sizes() -> Path | None:
    """``medad/data/paper_test_sizes.csv`` where the package ships it."""
    path = Path(str(resources.files("medad") / "data" / "paper_test_sizes.csv"))
    return path if path.is_file() else None


def read_test_sizes(path: Path | None = None) -> pd.DataFrame:
    """The test-set sizes the papers state (one row per source and dataset/subset), validated."""
    path = packaged_test_sizes() if path is None else Path(path)
    if path is None:
        return pd.DataFrame(columns=TEST_SIZE_COLUMNS)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in TEST_SIZE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {TEST_SIZE_COLUMNS}")
    for column in ("n_normal", "n_anomalous"):
        counts = pd.to_numeric(frame[column], errors="coerce")
        bad = frame.index[counts.isna() | (counts < 0) | (counts % 1 != 0)]
        if len(bad):
            raise ValueError(f"{path}: row {int(bad[0]) + 2}: {column} {frame.loc[bad[0], column]!r} is not a "
                             "whole number of images")
        frame[column] = counts.astype(int)
    return frame[TEST_SIZE_COLUMNS]


def paper_size(sizes: pd.DataFrame, source: str, dataset: str, subset: str) -> TestSetSize | None:
    """The test set ``source`` states for ``dataset``/``subset``, keyed as its paper rows are (an empty subset: the
    dataset's only one)."""
    rows = sizes[(sizes["source"] == source) & (sizes["dataset"] == dataset) & (sizes["subset"] == subset)]
    if len(rows) != 1:
        return None
    return TestSetSize(int(rows["n_normal"].iloc[0]), int(rows["n_anomalous"].iloc[0]))


def _tolerance(value: float, decimals: object) -> float:
    """Half a unit of the last printed decimal (three when the number of decimals is not known)."""
    try:
        places = int(decimals)
    except (TypeError, ValueError):
        places = 3
    return 0.5 * 10.0 ** -max(places, 1)


def published_points(comparison: pd.DataFrame, sizes: pd.DataFrame) -> dict[tuple, PublishedPoint]:
    """(source, unit, detector, policy) -> the paper's operating point read on its stated test set, for every
    thresholded operating point of ``comparison`` whose source states the test set's size."""
    found: dict[tuple, PublishedPoint] = {}
    rates = comparison[comparison["metric"].isin(REFERENCE_METRICS) & (comparison["threshold_policy"] != "none")]
    for (source, unit, detector, policy), rows in rates.groupby(["source", "unit", "detector", "threshold_policy"]):
        dataset, _, subset = str(unit).partition(UNIT_SEPARATOR)
        paper_subset = str(rows["paper_subset"].iloc[0]) if "paper_subset" in rows else subset
        size = paper_size(sizes, str(source), dataset, paper_subset)
        if size is None:
            continue
        decimals = rows["decimals"] if "decimals" in rows else pd.Series([None] * len(rows), index=rows.index)
        values = {str(m): float(v) for m, v in zip(rows["metric"], rows["value"])}
        tolerance = {str(m): _tolerance(v, d) for m, v, d in zip(rows["metric"], rows["value"], decimals)}
        found[(source, unit, detector, policy)] = published_point(size, values, tolerance)
    return found


def paper_reference(sizes: pd.DataFrame, source: str, unit: str, paper_subset: str, metric: str) -> float:
    """The all-anomalous value (or chance level) of ``metric`` on the test set ``source`` states for ``unit``."""
    dataset = unit.partition(UNIT_SEPARATOR)[0]
    return reference_value(paper_size(sizes, source, dataset, paper_subset), metric)
