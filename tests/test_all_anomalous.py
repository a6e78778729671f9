"""The all-anomalous classifier beside every threshold metric, and degenerate operating points: the values against
scikit-learn and scipy, the rule on the study's TABLE 1 sizes, TABLE 3's published points, and the marks in the
report's tables, the paper-vs-reproduced verdicts and the console."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medad.benchmark.run_folder import RunFolder, now
from medad.evaluation.all_anomalous import (
    DEGENERATE_ALPHA,
    OperatingPoint,
    TestSetSize,
    all_anomalous_values,
    consistent_points,
    is_degenerate,
    max_unflagged_normals,
    point_from_rates,
    published_point,
    unflagged_normals_p_value,
)
from medad.evaluation.metrics import image_metrics
from medad.reporting import tables as tab
from medad.reporting import threshold_reference as ref
from medad.reporting.console import threshold_reference_text
from medad.reporting.html import build_report
from medad.reporting.paper_results import compare, load_paper_results
from medad.reporting.run_data import load_run

# The study's TABLE 1 test sets (normal, anomalous), as medad/data/paper_test_sizes.csv ships them.
TABLE1 = {"head-ct": (20, 100), "brain-tumor-mri": (18, 155), "br35h": (300, 1500), "mias/full": (40, 115),
          "mias/patches": (40, 117), "oct/cnv": (242, 242), "c-nmc": (648, 1219)}


@pytest.mark.parametrize(("n_normal", "n_anomalous"), [(20, 100), (40, 115), (648, 1219), (5, 3)])
def test_all_anomalous_values_agree_with_scikit_learn(n_normal, n_anomalous):
    labels = np.r_[np.zeros(n_normal, int), np.ones(n_anomalous, int)]
    flagged, constant = np.ones_like(labels), np.zeros(len(labels))
    tn, fp, fn, tp = confusion_matrix(labels, flagged, labels=[0, 1]).ravel()
    values = all_anomalous_values(TestSetSize(n_normal, n_anomalous))
    assert values["precision"] == pytest.approx(precision_score(labels, flagged))
    assert values["recall"] == pytest.approx(recall_score(labels, flagged)) == 1.0
    assert values["f1"] == pytest.approx(f1_score(labels, flagged))
    assert values["accuracy"] == pytest.approx(accuracy_score(labels, flagged))
    assert values["specificity"] == pytest.approx(tn / (tn + fp)) == 0.0
    assert values["pr_auc"] == pytest.approx(average_precision_score(labels, constant))  # a constant score
    assert values["roc_auc"] == pytest.approx(roc_auc_score(labels, constant)) == 0.5


def test_the_issues_figures():
    """Head-CT's F1 0.909, MIAS's 0.852 and C-NMC's 0.790 need no detector."""
    assert all_anomalous_values(TestSetSize(20, 100))["f1"] == pytest.approx(0.909, abs=5e-4)
    assert all_anomalous_values(TestSetSize(40, 115))["f1"] == pytest.approx(0.852, abs=5e-4)
    assert all_anomalous_values(TestSetSize(648, 1219))["f1"] == pytest.approx(0.790, abs=5e-4)


@pytest.mark.parametrize("unit", list(TABLE1))
def test_the_bound_on_unflagged_normals_is_fishers_exact_test(unit):
    n_normal, n_anomalous = TABLE1[unit]
    size = TestSetSize(n_normal, n_anomalous)
    for k in range(0, 9):
        table = [[n_anomalous, 0], [n_normal - k, k]]  # flagged / unflagged, anomalies then normals
        expected = fisher_exact(table, alternative="greater").pvalue
        assert unflagged_normals_p_value(size, k) == pytest.approx(expected, rel=1e-9)
    bound = max_unflagged_normals(size)
    assert fisher_exact([[n_anomalous, 0], [n_normal - bound, bound]], alternative="greater").pvalue >= DEGENERATE_ALPHA
    assert fisher_exact([[n_anomalous, 0], [n_normal - bound - 1, bound + 1]],
                        alternative="greater").pvalue < DEGENERATE_ALPHA


def test_the_bound_on_the_studys_test_sets_as_the_docstring_says():
    assert {unit: max_unflagged_normals(TestSetSize(*sizes)) for unit, sizes in TABLE1.items()} == {
        "head-ct": 2, "brain-tumor-mri": 2, "br35h": 2, "mias/full": 3, "mias/patches": 3, "oct/cnv": 6, "c-nmc": 4}


def test_degenerate_points_and_their_words():
    head_ct = TestSetSize(20, 100)
    assert is_degenerate(OperatingPoint(100, 20, head_ct))                       # flags everything
    assert OperatingPoint(100, 20, head_ct).describe() == "flags all 120 test images"
    assert is_degenerate(OperatingPoint(100, 18, head_ct))                       # all but 2 normals: K = 2
    assert OperatingPoint(100, 18, head_ct).describe() == "flags every anomaly and 18 of 20 normals"
    assert not is_degenerate(OperatingPoint(100, 17, head_ct))                   # 3 normals left: p = 0.004
    assert not is_degenerate(OperatingPoint(99, 20, head_ct))                    # misses an anomaly
    assert not is_degenerate(OperatingPoint(0, 0, TestSetSize(20, 0)))           # no anomaly: recall undefined
    assert point_from_rates(head_ct, 1.0, 0.1) == OperatingPoint(100, 18, head_ct)
    assert point_from_rates(head_ct, 1.0, 0.13) is None                          # no count of 20 gives 0.13
    assert point_from_rates(head_ct, float("nan"), 0.1) is None
    with pytest.raises(ValueError, match="do not fit a test set"):
        OperatingPoint(101, 0, head_ct)


def test_published_rates_are_read_as_every_confusion_matrix_they_round_from():
    cnmc = TestSetSize(648, 1219)
    # TABLE 3's C-NMC Multi-KD: precision 0.654 is not 1219/1867 = 0.653 exactly: 2 to 4 normals unflagged
    fits = consistent_points(cnmc, {"precision": 0.654, "recall": 1.0, "f1": 0.791})
    assert sorted(p.unflagged_normals for p in fits) == [2, 3, 4]
    assert published_point(cnmc, {"precision": 0.654, "recall": 1.0, "f1": 0.791}).degenerate  # K = 4
    ambiguous = published_point(TestSetSize(20, 100), {"recall": 1.0})  # 21 matrices, some far from degenerate
    assert len(ambiguous.fits) == 21 and not ambiguous.degenerate
    impossible = published_point(TestSetSize(20, 100), {"precision": 0.5, "recall": 1.0})
    assert not impossible.fits and not impossible.degenerate and "no confusion matrix" in impossible.describe()


def test_table3s_degenerate_rows_come_out_of_the_rule_and_the_stated_sizes():
    """From the shipped paper numbers and test-set sizes alone: the six all-anomalous rows of the issue, and Head-CT
    GANomaly, which flags every hemorrhage and 19 of 20 normals (a chance-level departure: p = 0.17)."""
    paper = load_paper_results()
    paper = paper[(paper["source"] == "esmaeili2023-table3") & paper["metric"].isin(["precision", "recall", "f1"])]
    sizes = ref.read_test_sizes()
    found = {}
    for (dataset, subset, detector), rows in paper.groupby(["dataset", "subset", "detector"]):
        size = ref.paper_size(sizes, "esmaeili2023-table3", dataset, subset)
        point = published_point(size, dict(zip(rows["metric"], rows["value"])))
        if point.degenerate:
            found[(dataset, subset, detector)] = point.describe()
    assert found == {
        ("mias", "full", "f-anogan"): "flags all 155 test images", ("mias", "full", "ganomaly"): "flags all 155 test images",
        ("mias", "full", "multi-kd"): "flags all 155 test images",
        ("mias", "patches", "f-anogan"): "flags all 157 test images",
        ("brain-tumor-mri", "", "ganomaly"): "flags all 173 test images",
        ("c-nmc", "", "multi-kd"): "3 confusion matrices fit, e.g. flags every anomaly and 644 of 648 normals",
        ("head-ct", "", "ganomaly"): "flags every anomaly and 19 of 20 normals",
    }


# --- a run with the study's units, in the report and the console ------------------------------------------
# Smaller test sets than TABLE 1's: the paper's marks come from the sizes the paper states, the run's from its own,
# and the report's seed-mean bootstrap of TABLE 1's sizes would take a minute.
UNITS = {("head-ct", "default"): (10, 20), ("brain-tumor-mri", "default"): (6, 12), ("mias", "full"): (8, 20),
         ("mias", "patches"): (6, 12), ("c-nmc", "default"): (8, 16)}


def scores_for(kind: str, n_normal: int, n_anomalous: int, rng: np.random.Generator) -> np.ndarray:
    """Test scores, normals first: "inverted" ranks every anomaly below every normal (the best-F1 threshold then
    lies below every image), "separating" above, "two-low-normals" puts two normals below every anomaly and the
    other normals above them (best F1 flags every anomaly and all normals but two)."""
    normal, anomalous = rng.normal(size=n_normal), rng.normal(size=n_anomalous)
    if kind == "inverted":
        return np.r_[normal + 10, anomalous]
    if kind == "separating":
        return np.r_[normal, anomalous + 10]
    return np.r_[np.r_[normal[:2] - 10, normal[2:] + 10], anomalous]


def write_job(folder: RunFolder, dataset: str, subset: str, detector: str, seed: int, kind: str) -> None:
    n_normal, n_anomalous = UNITS[(dataset, subset)]
    rng = np.random.default_rng(seed)
    labels, scores = np.r_[np.zeros(n_normal, int), np.ones(n_anomalous, int)], scores_for(kind, n_normal,
                                                                                          n_anomalous, rng)
    keys = {"dataset": dataset, "subset": subset, "detector": detector, "seed": seed}
    metrics = pd.DataFrame([{"run_id": folder.run_id, **keys, "supervision": "unsupervised", "weights": "none",
                             "metric": r.metric, "value": r.value, "threshold_policy": r.threshold_policy,
                             "oracle": r.oracle, "note": r.note}
                            for r in image_metrics(labels, scores, rng.normal(size=10))])
    score_rows = pd.DataFrame({"run_id": folder.run_id, **keys, "part": "test",
                               "sample_id": [f"img-{i:04d}" for i in range(len(labels))], "label": labels,
                               "score": scores})
    job_id = f"{dataset}__{subset}__{detector}__seed{seed}"
    record = {"run_id": folder.run_id, "job_id": job_id, **keys, "detector_name": detector, "status": "done",
              "error": "", "started": now(), "finished": now()}
    folder.write_job(job_id, record, {"metrics": metrics, "scores": score_rows})


@pytest.fixture(scope="module")
def study_units_run(tmp_path_factory) -> RunFolder:
    """f-AnoGAN separates everywhere; GANomaly is inverted (its best-F1 point flags everything) in seeds 0 and 1
    and separates in seed 2; Multi-KD leaves two normals below every anomaly. Three seeds on MIAS full, one elsewhere
    (the seed-mean bootstrap of the report costs seconds a cell)."""
    folder = RunFolder(tmp_path_factory.mktemp("results") / "units")
    folder.path.mkdir(parents=True)
    config = {"name": "units", "datasets": [{"name": d, "subsets": [s]} for d, s in UNITS],
              "detectors": [{"name": d, "label": d} for d in ("f-anogan", "ganomaly", "multi-kd")]}
    folder.write_manifest({"run_id": "units", "config": config, "status": "complete", "start": now(), "end": now()})
    for dataset, subset in UNITS:
        for seed in (0, 1, 2) if (dataset, subset) == ("mias", "full") else (0,):
            write_job(folder, dataset, subset, "f-anogan", seed, "separating")
            write_job(folder, dataset, subset, "ganomaly", seed, "inverted" if seed < 2 else "separating")
            write_job(folder, dataset, subset, "multi-kd", seed, "two-low-normals")
    folder.merge()
    return folder


@pytest.fixture(scope="module")
def study_units(study_units_run):
    """The run read once: its seed-mean intervals are computed once for every test here."""
    return load_run(study_units_run.path)


def test_paper_vs_reproduced_marks_table3s_degenerate_rows_from_the_sizes(study_units):
    data = study_units
    comparison = tab.with_verdicts(data, compare(load_paper_results(), data.metrics))
    table3 = comparison[comparison["source"] == "esmaeili2023-table3"]
    marked = table3[table3["paper_degenerate"] != ""]
    assert set(zip(marked["unit"], marked["detector"])) == {
        ("mias/full", "f-anogan"), ("mias/full", "ganomaly"), ("mias/full", "multi-kd"),
        ("mias/patches", "f-anogan"), ("brain-tumor-mri/default", "ganomaly"), ("c-nmc/default", "multi-kd"),
        ("head-ct/default", "ganomaly")}
    assert set(marked["metric"]) == {"precision", "recall", "f1"}
    row = marked[(marked["unit"] == "mias/full") & (marked["detector"] == "ganomaly") & (marked["metric"] == "f1")].iloc[0]
    assert row["verdict"] == ("no interval; paper: degenerate operating point (flags all 155 test images); reproduced: "
                              "degenerate operating point in 2 of 3 seeds (flags all 28 test images)")
    assert row["all_anomalous_paper"] == pytest.approx(2 * (115 / 155) / (1 + 115 / 155))  # the paper's test set
    assert row["all_anomalous_run"] == pytest.approx(2 * (20 / 28) / (1 + 20 / 28))  # this run's
    multikd = table3[(table3["unit"] == "head-ct/default") & (table3["detector"] == "multi-kd")
                     & (table3["metric"] == "recall")].iloc[0]
    assert multikd["paper_degenerate"] == ""  # the paper's: every anomaly and 17 of 20 normals (3 left: p = 0.004)
    assert multikd["reproduced_degenerate"] == ("degenerate operating point (flags every anomaly and 8 of 10 "
                                                "normals)")  # 2 left of 10 + 20: K = 3
    fanogan = table3[(table3["unit"] == "head-ct/default") & (table3["detector"] == "f-anogan")]
    assert (fanogan["reproduced_degenerate"] == "").all()
    pr_auc = table3[(table3["unit"] == "c-nmc/default") & (table3["metric"] == "pr_auc")]
    assert np.allclose(pr_auc["all_anomalous_paper"], 1219 / 1867) and (pr_auc["paper_degenerate"] == "").all()
    assert np.allclose(pr_auc["all_anomalous_run"], 16 / 24)  # this run's smaller test set


def test_the_tables_show_the_reference_and_the_marks(study_units):
    data = study_units
    table = tab.study_table(data, "best_f1", ["mias/full"])
    names = [row[1].text for row in table.rows]
    assert names == ["f-anogan", "ganomaly", "multi-kd", ref.REFERENCE_NAME]
    reference = table.rows[-1]
    precision, recall, f1, roc, pr = (table.columns.index(c) for c in (
        "Precision (best_f1)", "Recall (best_f1)", "F1 (best_f1)", "ROC AUC [95% CI]", "PR AUC [95% CI]"))
    assert [reference[i].text for i in (precision, recall, f1, roc, pr)] == ["0.714", "1.000", "0.833", "0.500", "0.714"]
    ganomaly = table.rows[1]
    assert [b.text for b in ganomaly[f1].badges] == ["oracle", "degenerate"]
    assert "in 2 of 3 seeds" in ganomaly[f1].badges[1].title and "0.833" in ganomaly[f1].title
    assert "chance level (the prevalence) 0.714" in ganomaly[pr].title
    assert not [b for b in table.rows[0][f1].badges if b.text == "degenerate"]  # f-AnoGAN separates
    honest = tab.study_table(data, "val_q95", ["mias/full"])
    assert ref.REFERENCE_NAME in [row[1].text for row in honest.rows]
    every = tab.all_metrics_table(data, "mias/full", "all")
    column = every.columns.index("All-anomalous")
    spec = next(row for row in every.rows if row[0].text == "ganomaly" and row[1].sort == "specificity"
                and row[2].text == "best_f1")
    assert spec[column].text == "0.000" and [b.text for b in spec[3].badges] == ["degenerate"]



def test_the_report_page_and_its_exports_carry_them(tmp_path):
    """A one-unit run (C-NMC, Multi-KD; the report's figures cost seconds a unit)."""
    folder = RunFolder(tmp_path / "one")
    folder.path.mkdir()
    folder.write_manifest({"run_id": "one", "status": "complete", "start": now(), "end": now(),
                           "config": {"datasets": [{"name": "c-nmc", "subsets": ["default"]}],
                                      "detectors": [{"name": "multi-kd", "label": "multi-kd"}]}})
    write_job(folder, "c-nmc", "default", "multi-kd", 0, "inverted")
    folder.merge()
    index = build_report(folder.path, tmp_path / "reports")
    html = index.read_text()
    assert "All-anomalous (paper | run)" in html and "0.653 | 0.667" in html  # the paper's test set | this run's
    assert ("paper: degenerate operating point (3 confusion matrices fit, e.g. flags every anomaly and 644 of 648 "
            "normals); reproduced: degenerate operating point (flags all 24 test images)") in html
    assert html.count(ref.REFERENCE_NAME) >= 2  # a reference row in both TABLE 3 layouts
    wide = pd.read_csv(index.parent / "tables" / "table3_best_f1.csv", header=[0, 1], index_col=0)
    assert wide.loc["c-nmc/default", ("F1", ref.REFERENCE_NAME)] == pytest.approx(0.8, abs=5e-4)  # p = 2/3
    exported = pd.read_csv(index.parent / "tables" / "paper_vs_reproduced.csv", keep_default_na=False)
    assert {"all_anomalous_paper", "all_anomalous_run", "paper_degenerate", "reproduced_degenerate"} <= set(exported)


def test_the_console_gives_the_reference_and_every_degenerate_point(study_units_run):
    text = threshold_reference_text(study_units_run.path)
    assert ("  mias/full: 28 test images, 20 anomalous: precision 0.714, recall 1, F1 0.833, specificity 0; "
            "PR AUC at chance 0.714") in text
    assert "  mias/full ganomaly best_f1 (oracle): in 2 of 3 seeds (flags all 28 test images)" in text
    assert ("  head-ct/default ganomaly best_f1, paper (esmaeili2023-table3): flags every anomaly and 19 of 20 "
            "normals") in text
    assert "mias/full f-anogan best_f1 (oracle)" not in text
    assert "Fisher's exact test" in text
