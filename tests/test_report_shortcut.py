"""A run with the controls: shortcut.csv in the run folder, the report's section, controls shown but never ranked,
verdicts beside the Summary and the console table; a run without controls says the check was not run."""

from __future__ import annotations

import re
import shutil

import pandas as pd
import pytest

from medad.cli import main
from medad.evaluation.shortcut import SHORTCUT_COLUMNS, VERDICTS
from medad.reporting import tables as tab
from medad.reporting.console import CONTROL_SUFFIX, auc_table
from medad.reporting.run_data import load_run
from medad.reporting.shortcut_section import shortcut_not_run_message
from tests.conftest import write_config

CONTROLS = [{"name": "intensity"}, {"name": "histogram"}, {"name": "mean-image"}]
pytestmark = pytest.mark.xdist_group("report-shortcut")   # one worker builds the run the tests share
# an autoencoder trained for one epoch: a weak detector, so that a control outscores it here
WEAK_AE = {"name": "ae", "params": {"epochs": 1, "batch_size": 16, "width": 8, "latent": 16}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shortcut")
    config = write_config(folder / "c.yaml", detectors=[WEAK_AE, *CONTROLS])
    assert main(["run", "--config", str(config), "--results", str(folder), "--run-id", "r", "--quiet",
                 "--reports", str(folder / "reports")]) == 0
    return folder


def test_the_run_folder_has_one_shortcut_row_per_detector_unit_and_seed(run):
    frame = pd.read_csv(run / "r" / "shortcut.csv")
    assert list(frame.columns) == SHORTCUT_COLUMNS
    assert list(zip(frame["subset"], frame["detector"], frame["seed"])) == [("obvious", "ae", 0)]
    assert set(frame["verdict"]) <= set(VERDICTS) and set(frame["control"]) <= {"intensity", "histogram", "mean-image"}
    assert frame["spearman_normal"].between(-1, 1).all() and frame["intensity_roc_auc_oracle"].between(0.5, 1).all()
    scores = pd.read_csv(run / "r" / "scores.csv")
    assert scores["mean_intensity"].between(0, 1).all()   # from the images each job scored
    metrics = pd.read_csv(run / "r" / "metrics.csv")
    assert set(metrics.loc[metrics["role"] == "control", "detector"]) == {"intensity", "histogram", "mean-image"}
    assert metrics.loc[metrics["detector"] == "ae", "role"].isna().all()


def test_controls_are_shown_but_never_ranked_or_named_best(run):
    data = load_run(run / "r")
    matrix = tab.mean_matrix(data)
    assert matrix.loc["synthetic/obvious", data.controls].max() > matrix.loc["synthetic/obvious", "ae"]
    summary = tab.summary_table(data, tab.delong_frame(data))
    assert {row[2].text for row in summary.rows} == {"ae"} and summary.columns[-1] == "Best vs the controls"
    for row in summary.rows:
        verdict = data.shortcut_verdict(row[0].text, "ae")
        assert row[-1].text == verdict.text
        assert [b.text for b in row[2].badges if b.text in VERDICTS] == ([] if verdict.better else [verdict.verdict])
    ranked = {row[0].text for row in tab.ranks_table(data).rows}
    assert ranked == {"ae"}
    table3 = tab.study_table(data, "val_q95")
    shown = {row[1].text: [b.text for b in row[1].badges] for row in table3.rows}
    assert all("control" in shown[name] for name in data.controls) and "control" not in shown["ae"]
    assert tab.delong_frame(data).empty   # detector-vs-control pairs belong to the shortcut check


def test_the_report_has_the_shortcut_section_and_the_console_marks_controls_and_verdicts(run):
    html = (run / "reports" / "r" / "index.html").read_text()
    section = html[html.index('<h2 id="shortcut">'):html.index('<h2 id="overview">')]
    assert "table-shortcut-controls" in section and "table-shortcut-verdicts" in section
    assert len(re.findall(r'src="figures/shortcut__synthetic-obvious', section)) == 1
    assert "oracle" in section and "tables/shortcut.csv" in section
    assert (run / "reports" / "r" / "tables" / "shortcut.csv").is_file()
    console = auc_table(run / "r")
    header = console.splitlines()[1]
    assert header.split()[:2] == ["detector", "ae"] and f"intensity{CONTROL_SUFFIX}" in header
    data = load_run(run / "r")
    for unit in data.units:
        verdict = data.shortcut_verdict(unit, "ae")
        line = next(line for line in console.splitlines() if line.startswith(unit))
        assert ("(~control)" in line or "(<control)" in line) == (not verdict.better)


def test_a_run_without_controls_or_mean_intensities_says_the_check_was_not_run(run, tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "tests.support.detectors:TemplateDistance"}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "plain", "--quiet",
                 "--reports", str(tmp_path / "reports")]) == 0
    html = (tmp_path / "reports" / "plain" / "index.html").read_text()
    assert shortcut_not_run_message(load_run(tmp_path / "plain")) in html.replace("&#39;", "'")
    assert pd.read_csv(tmp_path / "plain" / "shortcut.csv").empty
    # a run of an earlier medad: scores.csv without mean intensities still reports, without correlations
    old = shutil.copytree(run / "r", tmp_path / "old-run")
    pd.read_csv(old / "scores.csv").drop(columns="mean_intensity").to_csv(old / "scores.csv", index=False)
    assert main(["report", str(old), "--reports", str(tmp_path / "old")]) == 0
    frame = load_run(old).shortcut
    assert frame["spearman_normal"].isna().all() and frame["verdict"].isin(VERDICTS).all()
