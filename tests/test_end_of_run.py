"""The end of ``medad run``: the console table over several seeds, and end-of-run steps that fail.

A finished run's outcome is its run folder and its exit status; the report, its figures and the console table are
derived from the folder, so none of them may lose it: a step that raises is named on stderr with the command that
rebuilds the report, and the exit status still says whether every job finished.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from medad.cli import main
from medad.reporting.console import auc_table
from tests.conftest import write_config

TEMPLATE = "tests.support.detectors:TemplateDistance"


def metric_rows(dataset: str, subset: str, detector: str, values: list[float], metric: str = "roc_auc") -> list[dict]:
    return [{"run_id": "r", "dataset": dataset, "subset": subset, "detector": detector, "seed": seed,
             "supervision": "unsupervised", "weights": "none", "metric": metric, "value": value, "ci_low": value - 0.05, "ci_high": value + 0.05, "threshold_policy": "none"}
            for seed, value in enumerate(values)]


SEVERAL_SEEDS = (metric_rows("synthetic", "obvious", "ae", [0.9, 0.8, 0.7]) + metric_rows("synthetic", "obvious", "kd", [0.6, 0.62])
                 + metric_rows("synthetic", "subtle", "ae", [0.6, 0.7])
                 + metric_rows("synthetic", "subtle", "kd", [0.1, 0.2], metric="pr_auc"))  # another metric: not shown


@pytest.mark.parametrize("single_seed_cell", [False, True], ids=["every-cell-over-seeds", "one-cell-one-seed"])
def test_auc_table_gives_mean_and_std_over_seeds_a_single_seed_alone_and_a_dash_where_nothing_ran(tmp_path,
                                                                                                  single_seed_cell):
    # every cell over several seeds (a --seeds 0,1,2 run) is the case pandas 3.0.x's str dtype refused in the masked
    # assignment the table used to be built with (TypeError: only integer scalar arrays can be converted to ...)
    rows = SEVERAL_SEEDS + (metric_rows("synthetic", "subtle", "kd", [0.55]) if single_seed_cell else [])
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    (tmp_path / "manifest.json").write_text(json.dumps({"run_id": "r"}))
    lines = [line.split() for line in auc_table(tmp_path).splitlines()]
    assert lines == [["roc_auc", "(mean", "over", "seeds)"],
                     ["detector", "ae", "kd"],
                     ["dataset/subset"],
                     ["synthetic/obvious", "0.800±0.100", "0.610±0.014"],
                     ["synthetic/subtle", "0.650±0.071", "0.550" if single_seed_cell else "-"]]


def run(tmp_path: Path, detectors: list[dict]) -> int:
    config = write_config(tmp_path / "c.yaml", seeds=(0, 1, 2), detectors=detectors)
    return main(["run", "--config", str(config), "--results", str(tmp_path / "results"), "--reports",
                 str(tmp_path / "reports"), "--run-id", "r", "--quiet"])


def assert_run_folder_complete(run: Path, done: int) -> None:
    assert json.loads((run / "manifest.json").read_text())["end"]
    jobs = pd.read_csv(run / "jobs.csv")
    assert (jobs["status"] == "done").sum() == done
    roc = pd.read_csv(run / "metrics.csv").query("metric == 'roc_auc'")
    scores = pd.read_csv(run / "scores.csv")
    assert sorted(roc["seed"]) == [0, 1, 2][:done] and (scores["part"] == "test").sum() == done * 24


def test_a_table_that_raises_leaves_exit_status_0_the_report_built_and_names_the_rebuild_command(tmp_path, capsys,
                                                                                                  monkeypatch):
    from medad.reporting import console

    def broken_table(run_path, metric="roc_auc", data=None):
        raise TypeError("only integer scalar arrays can be converted to a scalar index")

    monkeypatch.setattr(console, "auc_table", broken_table)
    assert run(tmp_path, [{"name": TEMPLATE, "label": "t"}]) == 0
    out, err = capsys.readouterr()
    run_dir, reports = tmp_path / "results" / "r", tmp_path / "reports"
    assert "the ROC AUC table failed: TypeError: only integer scalar arrays" in err
    assert f"medad report {run_dir} --reports {reports}" in err and "Traceback" not in err
    assert (reports / "r" / "index.html").is_file() and f"report: {reports / 'r' / 'index.html'}" in out
    assert "3 jobs: 3 done" in out and f"run folder: {run_dir}" in out
    assert_run_folder_complete(run_dir, done=3)


def test_a_report_that_raises_leaves_exit_status_0_the_table_printed_and_its_rebuild_command_works(tmp_path, capsys,
                                                                                                    monkeypatch):
    from medad.reporting import html

    real = html.build_report

    def broken_report(run_dir, reports_dir="reports", paper_files=None, data=None):
        raise ValueError("a figure could not be drawn")

    monkeypatch.setattr(html, "build_report", broken_report)
    assert run(tmp_path, [{"name": TEMPLATE, "label": "t"}]) == 0
    out, err = capsys.readouterr()
    run_dir, reports = tmp_path / "results" / "r", tmp_path / "reports"
    assert f"the report of {run_dir} failed: ValueError: a figure could not be drawn" in err
    assert f"rebuild it with: medad report {run_dir} --reports {reports}" in err
    assert "roc_auc (mean over seeds)" in out and "±" in out and "report:" not in out
    assert not (reports / "r").exists()
    assert_run_folder_complete(run_dir, done=3)
    monkeypatch.setattr(html, "build_report", real)
    assert main(["report", str(run_dir), "--reports", str(reports)]) == 0  # the command it names does rebuild it
    assert (reports / "r" / "index.html").is_file()


@pytest.mark.parametrize("broken", ["auc_table", "build_report"])
def test_a_failed_job_still_sets_the_exit_status_when_an_end_of_run_step_raises(tmp_path, capsys, monkeypatch, broken):
    from medad.reporting import console, html

    def raises(*args, **kwargs):
        raise RuntimeError("broken")

    monkeypatch.setattr(console if broken == "auc_table" else html, broken, raises)
    assert run(tmp_path, [{"name": "tests.support.detectors:FailingDetector", "label": "f"}]) == 1
    assert "medad report" in capsys.readouterr().err
    assert (pd.read_csv(tmp_path / "results" / "r" / "jobs.csv")["status"] == "failed").all()


def test_the_python_api_returns_the_run_and_warns_with_the_rebuild_command_when_the_report_raises(tmp_path,
                                                                                                   monkeypatch):
    from medad import api
    from medad.reporting import html

    def broken_report(run_dir, reports_dir="reports", paper_files=None, data=None):
        raise ValueError("a figure could not be drawn")

    monkeypatch.setattr(html, "build_report", broken_report)
    config = write_config(tmp_path / "c.yaml", seeds=(0, 1, 2), detectors=[{"name": TEMPLATE, "label": "t"}])
    with pytest.warns(RuntimeWarning, match="a figure could not be drawn") as record:
        result = api.run(config, results=tmp_path / "results", reports=tmp_path / "reports", run_id="r", workers=1)
    run_dir = tmp_path / "results" / "r"
    assert f"medad report {run_dir} --reports {tmp_path / 'reports'}" in str(record[0].message)
    assert result.ok and result.report is None and result.path == run_dir
    assert_run_folder_complete(run_dir, done=3)
