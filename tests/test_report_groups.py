"""The report keeps rows that saw the test set apart, ranks on complete units with Friedman's test beside the
critical difference, and shows intervals over seeds that are intervals of the seed-mean.

A small run folder is written through RunFolder with random scores: three honest unsupervised detectors (one of
them missing on one unit, one with two seeds), a GANomaly-like detector whose epoch was chosen on the test set and
a semi-supervised one whose scores were min-max scaled on the test set.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medad.benchmark.run_folder import RunFolder, now
from medad.evaluation.metrics import image_metrics
from medad.evaluation.statistics import bootstrap_intervals, seed_mean_bootstrap
from medad.reporting import figures as fig
from medad.reporting import tables as tab
from medad.reporting.html import build_report
from medad.reporting.run_data import DetectorTags, RunData, load_run, tags_using_test_labels

pytestmark = pytest.mark.xdist_group("test_report_groups")  # its tests share a module fixture: one worker builds it

UNITS = ["syn/a", "syn/b", "syn/c", "syn/d"]
HONEST = {"supervision": "unsupervised", "weights": "none"}
DETECTORS = {  # label: (separation, tags, seeds, units)
    "honest-a": (0.6, {**HONEST, "selection": "final-epoch", "score_scaling": "none"}, (0, 1), UNITS),
    "honest-b": (1.0, HONEST, (0,), UNITS),
    "honest-c": (1.4, HONEST, (0,), UNITS[:3]),          # no result on syn/d: that unit is incomplete
    "ganomaly-ref": (4.0, {**HONEST, "protocol": "reference", "selection": "best-test-epoch"}, (0,), UNITS),
    "semi-scaled": (4.0, {"supervision": "semi-supervised", "weights": "none", "score_scaling": "test-minmax"},
                    (0,), UNITS),
}
SHIFTED = ("syn/c", "honest-a", 1)   # this job was scored on other test images than the detector's seed 0
N_NORMAL, N_ANOMALOUS = 24, 16


def _sample_ids(unit: str, detector: str, seed: int) -> list[str]:
    offset = 100 if (unit, detector, seed) == SHIFTED else 0
    return [f"{unit}-{i + offset:03d}" for i in range(N_NORMAL + N_ANOMALOUS)]


def _write_job(folder: RunFolder, unit: str, detector: str, seed: int, rng: np.random.Generator) -> None:
    separation, tags = DETECTORS[detector][:2]
    dataset, subset = unit.split("/")
    labels = np.r_[np.zeros(N_NORMAL, int), np.ones(N_ANOMALOUS, int)]
    scores = rng.normal(size=len(labels)) + separation * labels
    keys = {"dataset": dataset, "subset": subset, "detector": detector, "seed": seed}
    intervals = bootstrap_intervals(labels, scores, n_resamples=200, seed=seed)
    nan = (np.nan, np.nan)
    metrics = pd.DataFrame([{"run_id": folder.run_id, **keys, **tags, "metric": r.metric, "value": r.value,
                             "ci_low": intervals.get(r.metric, nan)[0], "ci_high": intervals.get(r.metric, nan)[1],
                             "threshold_policy": r.threshold_policy, "oracle": r.oracle, "note": r.note}
                            for r in image_metrics(labels, scores, rng.normal(size=10))])
    score_rows = pd.DataFrame({"run_id": folder.run_id, **keys, "part": "test",
                               "sample_id": _sample_ids(unit, detector, seed), "label": labels, "score": scores})
    job_id = f"{dataset}__{subset}__{detector}__seed{seed}"
    record = {"run_id": folder.run_id, "job_id": job_id, **keys, "detector_name": detector, "status": "done",
              "error": "", "wall_s": 1.0, "train_s": 0.5, "score_s": 0.1, "device": "cpu", "started": now(),
              "finished": now()}
    folder.write_job(job_id, record, {"metrics": metrics, "scores": score_rows})


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> RunFolder:
    folder = RunFolder(tmp_path_factory.mktemp("results") / "groups-run")
    folder.path.mkdir()
    config = {"name": "groups", "datasets": [{"name": "syn", "subsets": [u.split("/")[1] for u in UNITS]}],
              "detectors": [{"name": d, "label": d} for d in DETECTORS]}
    folder.write_manifest({"run_id": "groups-run", "config": config, "status": "complete", "start": now(), "end": now()})
    rng = np.random.default_rng(5)
    for detector, (_, _, seeds, units) in DETECTORS.items():
        for unit in units:
            for seed in seeds:
                _write_job(folder, unit, detector, seed, rng)
    folder.merge()
    return folder


@pytest.fixture(scope="module")
def data(run_folder) -> RunData:
    return load_run(run_folder.path)


@pytest.fixture(scope="module")
def html(run_folder, tmp_path_factory) -> str:
    return build_report(run_folder.path, tmp_path_factory.mktemp("reports")).read_text()


def _row(table: tab.Table, **cells_by_column: str) -> list[tab.Cell]:
    """The one row of ``table`` whose cells in the named columns have the given texts."""
    found = [row for row in table.rows
             if all(row[table.columns.index(column)].text == text for column, text in cells_by_column.items())]
    assert len(found) == 1, cells_by_column
    return found[0]


# --- rows whose model saw the test set -------------------------------------------------------------
def test_test_set_selection_is_read_from_the_selection_and_scaling_tags(data):
    assert tags_using_test_labels({"selection": "best-test-epoch", "protocol": "reference"}) == \
        {"selection": "best-test-epoch"}
    assert tags_using_test_labels({"score_scaling": "test-minmax"}) == {"score_scaling": "test-minmax"}
    assert tags_using_test_labels({"selection": "final-epoch", "score_scaling": "none", "protocol": "test"}) == {}
    assert data.tags["ganomaly-ref"].selected_on_test and data.tags["semi-scaled"].selected_on_test
    assert not data.tags["honest-a"].selected_on_test and not DetectorTags().selected_on_test


def test_test_selected_detectors_are_their_own_groups(data):
    assert tab.detector_group(data, "honest-a") == "unsupervised"
    assert tab.detector_group(data, "ganomaly-ref") == "unsupervised, test-selected"
    assert tab.detector_group(data, "semi-scaled") == "semi-supervised, test-selected"
    groups = tab.rank_groups(data)
    assert {name: list(ranks.columns) for name, ranks in groups.items()} == {
        "unsupervised": ["honest-a", "honest-b", "honest-c"], "unsupervised, test-selected": ["ganomaly-ref"],
        "semi-supervised, test-selected": ["semi-scaled"]}


def test_summary_never_names_a_test_selected_detector_best_among_honest_ones(data):
    summary = tab.summary_table(data, tab.delong_frame(data))
    group, best, runner_up = (summary.columns.index(c) for c in ("Group", "Best", "Runner-up"))
    honest = [row for row in summary.rows if row[group].text == "unsupervised"]
    assert len(honest) == len(UNITS)
    named = {row[best].text for row in honest} | {row[runner_up].text for row in honest}
    assert named <= {"honest-a", "honest-b", "honest-c"}
    # the test-selected detectors score far higher, yet are best only in their own groups
    for name, detector in (("unsupervised, test-selected", "ganomaly-ref"),
                           ("semi-supervised, test-selected", "semi-scaled")):
        assert {row[best].text for row in summary.rows if row[group].text == name} == {detector}


def test_delong_marks_pairs_across_groups(data):
    frame = tab.delong_frame(data)
    pairs = frame.set_index(["unit", "seed", "detector_a", "detector_b"])["same_group"]
    assert not pairs[("syn/a", 0, "honest-a", "ganomaly-ref")]
    assert not pairs[("syn/a", 0, "ganomaly-ref", "semi-scaled")]
    assert pairs[("syn/a", 0, "honest-a", "honest-b")]
    table = tab.delong_table(data, frame, "syn/a")
    p = table.columns.index("p")
    crossing = _row(table, **{"Detector A": "honest-b", "Detector B": "ganomaly-ref"})
    honest = _row(table, **{"Detector A": "honest-a", "Detector B": "honest-b", "Seed": "0"})
    assert [b.text for b in crossing[p].badges] == ["across groups"] and not honest[p].badges
    assert "across groups" in table.note


def test_html_shows_the_test_selection_badge_and_groups(html):
    badge = re.search(r'<span class="badge oracle" title="([^"]*)">model selection used test labels</span>', html)
    assert badge and "selection: best-test-epoch" in badge.group(1)
    assert 'title="score_scaling: test-minmax' in html
    summary = html[html.index('id="table-summary"'):html.index('id="overview"')]
    assert "unsupervised, test-selected" in summary and "model selection used test labels" in summary
    assert "across groups" in html


# --- ranks on complete units, Friedman's test beside the critical difference ---------------------
def test_average_ranks_use_the_complete_units_the_cd_diagram_uses(data, html):
    unsupervised = {g.name: g for g in tab.rank_summaries(data)}["unsupervised"]
    assert unsupervised.complete_units == ["syn/a", "syn/b", "syn/c"] and unsupervised.left_out == ["syn/d"]
    table = tab.ranks_table(data)
    average = table.columns.index("Average rank")
    for detector in ("honest-a", "honest-b", "honest-c"):
        row = _row(table, Detector=detector)
        expected = unsupervised.ranks.loc[["syn/a", "syn/b", "syn/c"], detector].mean()
        assert row[average].sort == pytest.approx(expected)
        assert "left out" in row[table.columns.index("syn/d")].title
    assert ("unsupervised: 3 detector(s); average ranks over the 3 unit(s) where every detector of the group has a "
            "result; left out (some detector has no result): syn/d") in table.note
    assert "syn/d" in table.note
    caption = re.search(r"<figcaption>(Critical-difference diagram \(unsupervised detectors.*?)</figcaption>", html,
                        re.S).group(1)
    assert "3 datasets/subsets" in caption and "left out (some detector has no result): syn/d" in caption
    assert f"p = {tab.p_text(unsupervised.friedman_p_value)}" in caption


def _group(ranks: list[list[float]]) -> tab.RankGroup:
    frame = pd.DataFrame(ranks, columns=["x", "y", "z"], index=[f"u{i}" for i in range(len(ranks))])
    return tab.RankGroup("unsupervised", frame, list(frame.index), [])


def test_friedman_verdict_beside_the_diagram():
    same = _group([[1, 2, 3], [3, 1, 2], [2, 3, 1], [1, 3, 2], [2, 1, 3], [3, 2, 1]])
    assert same.friedman_p_value >= 0.05
    assert "do not differ significantly" in tab.friedman_text(same)
    apart = _group([[1, 2, 3]] * 8)
    assert apart.friedman_p_value < 0.05 and "differ significantly" in tab.friedman_text(apart)
    assert "no p-value" in tab.friedman_text(_group([[1, 2, 3]]))


def test_cd_diagram_is_drawn_for_many_detectors_with_friedman_p(tmp_path):
    ranks = pd.Series(np.linspace(1.5, 11.5, 12), index=[f"d{i}" for i in range(12)])
    figure = fig.cd_diagram(ranks, 20, tmp_path, "many", friedman_p=0.3, note="Friedman: no difference.")
    assert figure is not None and figure.caption.endswith("Friedman: no difference.")
    assert (tmp_path / Path(figure.png).name).is_file()


# --- intervals over seeds ------------------------------------------------------------------------
def _metric_rows(data: RunData, unit: str, detector: str, metric: str = "roc_auc") -> pd.DataFrame:
    return data.metric_rows(unit, detector, metric)


def test_one_seed_shows_that_seeds_metrics_csv_interval(data):
    rows = _metric_rows(data, "syn/a", "honest-b")
    interval = tab.metric_interval(data, "syn/a", "honest-b", rows)
    assert (interval.low, interval.high) == (float(rows["ci_low"].iloc[0]), float(rows["ci_high"].iloc[0]))
    cell = tab.number_cell(rows["value"], ci=interval)
    assert f"[{tab.fmt(interval.low)}, {tab.fmt(interval.high)}]" in cell.text and "metrics.csv" in cell.title


def test_several_seeds_show_the_bootstrap_of_the_seed_mean(data):
    for metric, score in (("roc_auc", roc_auc_score), ("pr_auc", average_precision_score)):
        rows = _metric_rows(data, "syn/a", "honest-a", metric)
        interval = tab.metric_interval(data, "syn/a", "honest-a", rows)
        labels, scores = tab.seed_scores(data, "syn/a", "honest-a", (0, 1))
        seed_mean = np.mean([score(labels, scores[:, s]) for s in range(2)])
        assert seed_mean == pytest.approx(rows["value"].mean())
        assert interval.low < seed_mean < interval.high
        expected = seed_mean_bootstrap(labels, scores, seed=tab._stable_seed("syn/a", "honest-a"))[metric]
        assert (interval.low, interval.high) == pytest.approx(expected)
        # no longer the average of the per-seed interval ends
        assert (interval.low, interval.high) != pytest.approx((rows["ci_low"].mean(), rows["ci_high"].mean()))
    table = tab.study_table(data, "val_q95", ["syn/a"])
    assert tab.INTERVAL_TEXT in table.caption
    cell = _row(table, Detector="honest-a")[table.columns.index("ROC AUC [95% CI]")]
    assert "stratified bootstrap of the mean over 2 seeds" in cell.title and "[" in cell.text


def test_seeds_scored_on_other_images_get_no_interval_and_say_why(data):
    rows = _metric_rows(data, "syn/c", "honest-a")
    interval = tab.metric_interval(data, "syn/c", "honest-a", rows)
    assert not interval.found and "sample_ids differ" in interval.how
    cell = tab.number_cell(rows["value"], ci=interval)
    assert "[" not in cell.text and "no interval: the seeds' test sample_ids differ" in cell.title
    assert tab.INTERVAL_TEXT in tab.all_metrics_table(data, "syn/c", "all").caption
