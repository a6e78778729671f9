"""Paper vs reproduced verdicts, and the end-of-run table's below-chance marker, on run folders built with known AUCs.

The Head-CT case is the one measured on the real download: GANomaly at the study's settings, seeds 0-2,
ROC AUC 0.36 / 0.33 / 0.23 on TABLE 1's test set (20 normals, 100 hemorrhages), against the paper's 0.739.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medad.benchmark.run_folder import RunFolder, now
from medad.evaluation.metrics import image_metrics
from medad.evaluation.statistics import bootstrap_intervals
from medad.reporting import tables as tab
from medad.reporting.console import BELOW_CHANCE_MARK, auc_table
from medad.reporting.html import build_report
from medad.reporting.paper_results import INVERTED, REVERSED_LABELS, compare, load_paper_results, verdict
from medad.reporting.run_data import load_run

N_NORMAL, N_ANOMALOUS = 20, 100  # Head-CT's TABLE 1 test set


def scores_with_auc(auc: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores whose ROC AUC is exactly round(auc * pairs) / pairs: each anomaly is placed above a
    chosen number of normals, the numbers drawn at random and adjusted to the wanted total."""
    target = round(auc * N_NORMAL * N_ANOMALOUS)
    above = rng.integers(0, N_NORMAL + 1, N_ANOMALOUS)
    while above.sum() != target:
        i = rng.integers(N_ANOMALOUS)
        above[i] = np.clip(above[i] + np.sign(target - above.sum()), 0, N_NORMAL)
    normals = np.sort(rng.normal(size=N_NORMAL))
    edges = np.r_[normals[0] - 1.0, normals, normals[-1] + 1.0]
    anomalies = np.array([(edges[k] + edges[k + 1]) / 2 for k in above])  # between the k-th and (k+1)-th normal
    return np.r_[np.zeros(N_NORMAL, int), np.ones(N_ANOMALOUS, int)], np.r_[normals, anomalies]


def write_job(folder: RunFolder, detector: str, seed: int, auc: float, rng: np.random.Generator) -> None:
    labels, scores = scores_with_auc(auc, rng)
    keys = {"dataset": "head-ct", "subset": "all", "detector": detector, "seed": seed}
    intervals = bootstrap_intervals(labels, scores, seed=seed)
    val = rng.normal(size=20)
    metrics = pd.DataFrame([{"run_id": folder.run_id, **keys, "supervision": "unsupervised", "weights": "none",
                             "metric": r.metric, "value": r.value,
                             "ci_low": intervals.get(r.metric, (np.nan, np.nan))[0],
                             "ci_high": intervals.get(r.metric, (np.nan, np.nan))[1],
                             "threshold_policy": r.threshold_policy, "oracle": r.oracle, "note": r.note}
                            for r in image_metrics(labels, scores, val)])
    ids = [f"img-{i:03d}" for i in range(len(labels))]
    score_rows = pd.DataFrame({"run_id": folder.run_id, **keys, "part": "test", "sample_id": ids, "label": labels,
                               "score": scores})
    job_id = f"head-ct__all__{detector}__seed{seed}"
    record = {"run_id": folder.run_id, "job_id": job_id, **keys, "detector_name": detector, "status": "done",
              "error": "", "started": now(), "finished": now()}
    folder.write_job(job_id, record, {"metrics": metrics, "scores": score_rows})


def make_run(root, run_id: str, aucs: dict[str, list[float]]) -> RunFolder:
    folder = RunFolder(root / run_id)
    folder.path.mkdir(parents=True)
    config = {"name": run_id, "datasets": [{"name": "head-ct", "subsets": ["all"]}],
              "detectors": [{"name": d, "label": d} for d in aucs]}
    folder.write_manifest({"run_id": run_id, "config": config, "status": "done", "start": now(), "end": now()})
    rng = np.random.default_rng(7)
    for detector, values in aucs.items():
        for seed, auc in enumerate(values):
            write_job(folder, detector, seed, auc, rng)
    folder.merge()
    return folder


@pytest.fixture(scope="module")
def head_ct_run(tmp_path_factory) -> RunFolder:
    """GANomaly as measured on the real Head-CT (three seeds), f-AnoGAN as measured there (one seed, 0.82)."""
    return make_run(tmp_path_factory.mktemp("results"), "head-ct-real",
                    {"ganomaly": [0.36, 0.33, 0.23], "f-anogan": [0.82]})


def _row(comparison: pd.DataFrame, detector: str, metric: str = "roc_auc") -> pd.Series:
    rows = comparison[(comparison["detector"] == detector) & (comparison["metric"] == metric)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_ganomaly_head_ct_is_flagged_inverted_and_consistent_with_reversed_labels(head_ct_run, tmp_path):
    data = load_run(head_ct_run.path)
    comparison = tab.with_verdicts(data, compare(load_paper_results(), data.metrics))
    row = _row(comparison, "ganomaly")
    assert row["value"] == pytest.approx(0.739)  # the paper's (Esmaeili et al., TABLE 3)
    assert row["reproduced"] == pytest.approx((0.36 + 0.33 + 0.23) / 3)
    assert row["ci_high"] < 0.5 < 1 - row["ci_high"] <= 0.739 <= 1 - row["ci_low"]  # the seed-mean interval
    assert "seeds" in row["interval"] and "jointly" in row["interval"]
    assert row["verdict"] == f"above; {INVERTED}; {REVERSED_LABELS}"
    fanogan = _row(comparison, "f-anogan")  # 0.82 with one seed: its own bootstrap interval holds the paper's 0.761
    assert fanogan["interval"].startswith("stratified bootstrap of this seed") and fanogan["verdict"] == "inside"
    # thresholded over 3 seeds: no interval; the paper's best-F1 point flags every hemorrhage and 19 of 20 normals, and
    # these inverted scores' best-F1 point flags every test image: both degenerate (medad.evaluation.all_anomalous)
    assert _row(comparison, "ganomaly", "precision")["verdict"] == (
        "no interval; paper: degenerate operating point (flags every anomaly and 19 of 20 normals); reproduced: "
        "degenerate operating point in 3 of 3 seeds (flags all 120 test images)")

    index = build_report(head_ct_run.path, tmp_path / "reports")
    exported = pd.read_csv(index.parent / "tables" / "paper_vs_reproduced.csv", keep_default_na=False)
    assert {"ci_low", "ci_high", "interval", "verdict"} <= set(exported.columns)
    assert _row(exported, "ganomaly")["verdict"] == row["verdict"]
    html = index.read_text()
    assert "Verdict" in html and "scores inverted on this data" in html and "reversed labels" in html


@pytest.mark.parametrize(("metric", "value", "low", "high", "expected"), [
    ("roc_auc", 0.80, 0.75, 0.85, "inside"),
    ("roc_auc", 0.75, 0.75, 0.85, "inside"),              # the ends belong to the interval
    ("roc_auc", 0.90, 0.70, 0.85, "above"),
    ("roc_auc", 0.60, 0.70, 0.85, "below"),
    ("roc_auc", 0.90, 0.20, 0.45, f"above; {INVERTED}"),  # turned over 0.55-0.80: 0.90 is not there either
    ("roc_auc", 0.40, 0.30, 0.45, f"inside; {INVERTED}"),
    ("roc_auc", 0.739, 0.18, 0.45, f"above; {INVERTED}; {REVERSED_LABELS}"),
    ("roc_auc", 0.70, 0.25, 0.55, "above"),  # in the mirror, but an interval reaching 0.5 overlaps its mirror
    ("roc_auc", 0.70, 0.30, 0.66, "above"),  # near chance: [0.34, 0.70] turned over says nothing about label order
    ("roc_auc", 0.40, 0.45, 0.62, "below"),
    ("roc_auc", 0.47, 0.52, 0.75, "below"),  # above 0.5 but not by much: 0.47 is in the mirror and near chance
    ("roc_auc", 0.30, 0.60, 0.80, f"below; {REVERSED_LABELS}"),  # wholly above 0.5: its mirror is disjoint from it
    ("roc_auc", 0.50, 0.40, 0.60, "inside"),               # inside both: reversal explains nothing
    ("pr_auc", 0.90, 0.05, 0.20, "above"),                 # no label symmetry: no inversion reading
    ("f1", 0.90, float("nan"), float("nan"), "no interval"),
])
def test_verdict_of_each_case(metric, value, low, high, expected):
    assert verdict(metric, value, low, high) == expected


def test_paper_rows_of_a_run_with_one_seed_per_case(tmp_path):
    """One seed per detector, each built to land in one case against the paper's Head-CT ROC AUC (f-AnoGAN 0.761,
    GANomaly 0.739, Multi-KD 0.698); one seed: that seed's own bootstrap interval from metrics.csv."""
    run = make_run(tmp_path, "cases", {"f-anogan": [0.99], "ganomaly": [0.10], "multi-kd": [0.35]})
    data = load_run(run.path)
    comparison = tab.with_verdicts(data, compare(load_paper_results(), data.metrics))
    assert _row(comparison, "f-anogan")["verdict"] == "below"
    ganomaly = _row(comparison, "ganomaly")  # turned over, about 0.83-0.97: 0.739 is not there
    assert ganomaly["verdict"] == f"above; {INVERTED}" and 1 - ganomaly["ci_high"] > 0.739
    assert _row(comparison, "multi-kd")["verdict"] == f"above; {INVERTED}; {REVERSED_LABELS}"
    assert _row(comparison, "multi-kd", "pr_auc")["verdict"] == "above"


def test_console_table_marks_cells_whose_intervals_lie_below_chance(head_ct_run, tmp_path):
    lines = auc_table(head_ct_run.path).splitlines()
    row = next(line for line in lines if line.startswith("head-ct/all"))
    assert f"0.307±0.068 {BELOW_CHANCE_MARK}" in row  # ganomaly: the seed-mean interval lies below 0.5
    assert row.count(BELOW_CHANCE_MARK) == 1 and "0.820" in row  # f-anogan unmarked
    assert lines[-1].startswith(BELOW_CHANCE_MARK) and "below 0.5" in lines[-1]  # the legend
    assert BELOW_CHANCE_MARK not in auc_table(head_ct_run.path, metric="pr_auc")  # no chance level of 0.5


def test_the_console_marks_a_cell_below_chance_exactly_where_the_report_says_inverted(tmp_path):
    """One rule on one interval: seeds 0.54 / 0.16 / 0.31 (Brain Tumor MRI's GANomaly, here on a Head-CT-sized test
    set): one seed's own interval reaches 0.5, the seed-mean interval does not; both the report and the console
    read the seed-mean one. A single seed at 0.45 reaches 0.5 with its own interval: neither says it."""
    mixed = make_run(tmp_path, "mixed", {"ganomaly": [0.54, 0.16, 0.31], "f-anogan": [0.89], "multi-kd": [0.45]})
    data = load_run(mixed.path)
    comparison = tab.with_verdicts(data, compare(load_paper_results(), data.metrics))
    lines = auc_table(mixed.path).splitlines()
    header = next(line for line in lines if line.startswith("detector")).split()[1:]
    cells = dict(zip(header, _cells(next(line for line in lines if line.startswith("head-ct/all")))))
    assert sorted(cells) == ["f-anogan", "ganomaly", "multi-kd"]
    for detector, cell in cells.items():
        verdict_text = _row(comparison, detector)["verdict"]
        assert (BELOW_CHANCE_MARK in cell) == (INVERTED in verdict_text), (detector, cell, verdict_text)
    assert BELOW_CHANCE_MARK in cells["ganomaly"] and BELOW_CHANCE_MARK not in cells["multi-kd"]
    assert INVERTED in _row(comparison, "ganomaly")["verdict"]


def _cells(row: str) -> list[str]:
    """The cells of a console table row after its dataset/subset (a mean, maybe ±std, maybe the mark)."""
    cells: list[str] = []
    for token in row.split()[1:]:
        if token == BELOW_CHANCE_MARK:
            cells[-1] += f" {token}"
        else:
            cells.append(token)
    return cells


def test_the_ganomaly_rows_carry_the_evidence_and_call_the_label_order_a_hypothesis():
    paper = load_paper_results()
    rows = paper[(paper["detector"] == "ganomaly") & (paper["metric"] == "roc_auc")
                 & (paper["source"] == "esmaeili2023-table3")].set_index("dataset")
    head_ct, btmri = rows.loc["head-ct", "note"], rows.loc["brain-tumor-mri", "note"]
    for text in ("0.36 / 0.33 / 0.23", "samet-akcay/ganomaly", "0.20 at its final epoch", "f-AnoGAN on the same splits 0.82",
                 "HYPOTHESIS, not a fact", "'hemorrhage' < 'normal'"):
        assert text in head_ct
    for text in ("0.54 / 0.16 / 0.31", "f-AnoGAN on the same splits 0.89", "HYPOTHESIS, not a fact"):
        assert text in btmri
