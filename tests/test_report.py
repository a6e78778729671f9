"""The HTML report from a run folder: content, labels, escaping, exported tables, paper vs reproduced, CLI.

The run folder is written through the real RunFolder machinery with scores drawn at random (no
training), so the whole report is exercised in a few seconds.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medad.benchmark.examples import EXAMPLES_FILE
from medad.benchmark.run_folder import RunFolder, now
from medad.cli import main
from medad.evaluation.metrics import image_metrics
from medad.evaluation.statistics import bootstrap_intervals
from medad.reporting.paper_results import compare, load_paper_results, read_paper_results

pytestmark = pytest.mark.xdist_group("test_report")  # its tests share a module fixture: one worker builds it

EVIL_ID = "<script>alert(1)</script>"
EVIL_ERROR = "ValueError: <img src=x onerror=alert(2)>"
UNITS = [("synthetic", "obvious"), ("synthetic", "subtle"), ("head-ct", "all")]
DETECTORS = {  # label: (separation, tags)
    "f-anogan": (1.5, {"supervision": "unsupervised", "weights": "none"}),
    "ae": (0.8, {"supervision": "unsupervised", "weights": "none"}),
    "kd": (1.0, {"supervision": "unsupervised", "weights": "random", "protocol": "paper"}),
    "semi": (2.5, {"supervision": "semi-supervised", "weights": "imagenet"}),
}


def _job(folder: RunFolder, dataset: str, subset: str, detector: str, seed: int, rng: np.random.Generator) -> None:
    separation, tags = DETECTORS[detector]
    labels = np.r_[np.zeros(18, int), np.ones(12, int)]
    ids = [f"{subset}-{i:03d}" for i in range(30)]
    ids[0] = EVIL_ID
    scores = rng.normal(size=30) + separation * labels
    val = rng.normal(size=10)
    keys = {"dataset": dataset, "subset": subset, "detector": detector, "seed": seed}
    intervals = bootstrap_intervals(labels, scores, n_resamples=100, seed=seed)
    metrics = pd.DataFrame([{"run_id": folder.run_id, **keys, **tags, "metric": r.metric, "value": r.value,
                             "ci_low": intervals.get(r.metric, (np.nan,))[0], "ci_high": intervals.get(r.metric, (np.nan, np.nan))[1],
                             "threshold_policy": r.threshold_policy, "oracle": r.oracle, "note": r.note}
                            for r in image_metrics(labels, scores, val)])
    score_rows = pd.DataFrame({"run_id": folder.run_id, **keys, "part": "test", "sample_id": ids, "label": labels, "score": scores})
    history = pd.DataFrame([{"run_id": folder.run_id, **keys, "epoch": e, "step": e, "loss_name": "mse", "value": 1.0 / (e + 1)}
                            for e in range(5)])
    job_id = f"{dataset}__{subset}__{detector}__seed{seed}"
    files = {}
    if detector == "ae" and seed == 0 and subset == "obvious":
        index = np.r_[0:4, 18:22]
        path = Path(folder.path.parent / f"{job_id}-{EXAMPLES_FILE}")
        np.savez_compressed(path, ids=np.array([ids[i] for i in index]), labels=labels[index].astype(np.int8),
                            scores=scores[index], threshold=np.array(np.quantile(val, 0.95)), threshold_policy=np.array("val_q95"),
                            images=rng.integers(0, 255, (8, 1, 16, 16), dtype=np.uint8),
                            reconstructions=rng.integers(0, 255, (8, 1, 16, 16), dtype=np.uint8),
                            maps=rng.random((8, 16, 16)).astype(np.float16))
        files[EXAMPLES_FILE] = path.read_bytes()
    record = {"run_id": folder.run_id, "job_id": job_id, **keys, "detector_name": detector, "status": "done", "error": "",
              "wall_s": 1.5, "train_s": 1.0, "score_s": 0.2, "device": "cpu", "started": now(), "finished": now()}
    folder.write_job(job_id, record, {"metrics": metrics, "scores": score_rows, "history": history}, files)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> RunFolder:
    root = tmp_path_factory.mktemp("results")
    folder = RunFolder(root / "fake-run")
    folder.path.mkdir()
    config = {"name": "fake", "datasets": [{"name": d, "subsets": [s for dd, s in UNITS if dd == d]} for d in ("synthetic", "head-ct")],
              "detectors": [{"name": d, "label": d} for d in DETECTORS]}
    folder.write_manifest({"run_id": "fake-run", "config": config, "status": "incomplete", "start": now(), "end": now()})
    rng = np.random.default_rng(0)
    for dataset, subset in UNITS:
        for detector in DETECTORS:
            for seed in (0, 1):
                _job(folder, dataset, subset, detector, seed, rng)
    failed = {"run_id": "fake-run", "job_id": "head-ct__all__broken__seed0", "dataset": "head-ct", "subset": "all",
              "detector": "broken", "detector_name": "broken", "seed": 0, "status": "failed", "error": EVIL_ERROR,
              "traceback": "Traceback ...", "started": now(), "finished": now()}
    folder.write_job(failed["job_id"], failed, {})
    folder.merge()
    return folder


@pytest.fixture(scope="module")
def cli_output(run_folder, tmp_path_factory) -> tuple[int, str, Path]:
    """``medad report RUN_DIR --reports DIR``: exit status, what it printed, the reports root."""
    reports = tmp_path_factory.mktemp("reports")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = main(["report", str(run_folder.path), "--reports", str(reports)])
    return status, printed.getvalue(), reports


@pytest.fixture(scope="module")
def report(cli_output) -> Path:
    return cli_output[2] / "fake-run" / "index.html"


def test_report_is_written_with_every_figure_beside_it(report):
    html = report.read_text()
    assert report.name == "index.html" and report.parent.name == "fake-run"
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) >= 3 * 2 + 2 + 1  # ROC/PR + history per unit, heatmap, sens/spec, examples
    for source in sources:
        assert (report.parent / source).is_file(), source
        assert (report.parent / source).with_suffix(".svg").is_file()
    assert "http://" not in html and "https://" not in html  # nothing loaded from the network
    for anchor in re.findall(r'href="#([^"]+)"', html):
        assert f'id="{anchor}"' in html, anchor


def test_everything_from_csvs_is_escaped(report):
    html = report.read_text()
    assert EVIL_ID not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html          # the sample id, in the examples caption
    assert "&lt;img src=x onerror=alert(2)&gt;" in html              # the failed job's error
    assert html.count("<script>") == 1                                # only the report's own sorting script


def test_rows_are_labelled_oracle_semi_supervised_weights_and_protocol(report):
    html = report.read_text()
    assert 'class="badge oracle"' in html and "best_f1" in html
    assert ">semi-supervised</span>" in html
    assert ">weights: random</span>" in html and ">weights: imagenet</span>" in html
    assert ">protocol: paper</span>" in html


def test_semi_supervised_detectors_are_ranked_apart(run_folder):
    from medad.reporting.run_data import load_run
    from medad.reporting.tables import delong_frame, rank_groups, summary_table

    data = load_run(run_folder.path)
    groups = rank_groups(data)
    assert set(groups) == {"unsupervised", "semi-supervised"}
    assert list(groups["semi-supervised"].columns) == ["semi"]
    assert (groups["semi-supervised"]["semi"] == 1).all()   # alone in its group, never ranked against the others
    summary = summary_table(data, delong_frame(data))
    assert {row[1].text for row in summary.rows} == {"unsupervised", "semi-supervised"}


def test_delong_pairs_and_critical_difference_diagram(run_folder, report):
    delong = pd.read_csv(report.parent / "tables" / "delong.csv")
    # 4 detectors -> 6 pairs, per unit and seed
    assert len(delong) == 6 * len(UNITS) * 2
    assert delong["p_value"].between(0, 1).all() and (delong["p_holm"] >= delong["p_value"] - 1e-12).all()
    assert list((report.parent / "figures").glob("cd__unsupervised*.png"))  # 3 units: enough for the diagram


def test_table3_exports_csv_and_latex(report):
    tables = report.parent / "tables"
    wide = pd.read_csv(tables / "table3_val_q95.csv", header=[0, 1], index_col=0)
    assert ("ROC AUC", "f-anogan") in wide.columns and "synthetic/obvious" in wide.index
    latex = (tables / "table3_best_f1.tex").read_text()
    assert "\\begin{tabular}" in latex and "$\\pm$" in latex


def test_paper_vs_reproduced_matches_on_registry_names(run_folder, report):
    comparison = pd.read_csv(report.parent / "tables" / "paper_vs_reproduced.csv", keep_default_na=False)
    # TABLE 3 lists head-ct with an empty subset: it matches the run's only head-ct subset, 'all'
    row = comparison[(comparison["metric"] == "roc_auc") & (comparison["detector"] == "f-anogan")].iloc[0]
    assert row["unit"] == "head-ct/all" and float(row["value"]) == pytest.approx(0.761)
    metrics = pd.read_csv(run_folder.path / "metrics.csv")
    reproduced = metrics[(metrics["dataset"] == "head-ct") & (metrics["detector"] == "f-anogan")
                         & (metrics["metric"] == "roc_auc")]["value"].mean()
    assert float(row["difference"]) == pytest.approx(reproduced - 0.761)
    precision = comparison[(comparison["metric"] == "precision") & (comparison["detector"] == "f-anogan")].iloc[0]
    assert precision["threshold_policy"] == "best_f1" and str(precision["oracle"]) == "True"
    assert "Paper vs reproduced" in report.read_text() and "Esmaeili" in report.read_text()


def test_packaged_paper_results_hold_the_study_table():
    paper = load_paper_results()
    study = paper[paper["source"] == "esmaeili2023-table3"]
    assert len(study) == 9 * 5 * 3
    assert set(study["detector"]) == {"f-anogan", "ganomaly", "multi-kd"}
    value = study[(study["dataset"] == "oct") & (study["subset"] == "drusen") & (study["detector"] == "multi-kd")
                  & (study["metric"] == "roc_auc")]["value"]
    assert value.tolist() == [pytest.approx(0.934)]


def test_packaged_bmad_oct_rows_are_compared_with_the_pooled_oct_subset_only():
    paper = load_paper_results()
    bmad = paper[paper["source"] == "bao2023-bmad-table"]
    assert dict(zip(bmad["detector"], bmad["value"])) == {
        "patchcore": 0.9857, "reverse-distillation": 0.9730, "padim": 0.9175, "f-anogan": 0.7342, "ganomaly": 0.7047,
        "multi-kd": 0.9674}
    assert set(bmad["dataset"] + "/" + bmad["subset"]) == {"oct/all"} and set(bmad["split_match"]) == {"sizes"}
    metrics = pd.DataFrame([{"dataset": "oct", "subset": subset, "detector": "reverse-distillation", "seed": 0,
                             "metric": "roc_auc", "threshold_policy": "none", "value": 0.95} for subset in ("cnv", "all")])
    compared = compare(paper, metrics)
    row = compared[compared["source"] == "bao2023-bmad-table"]
    assert row["unit"].tolist() == ["oct/all"] and row["difference"].tolist() == [pytest.approx(0.95 - 0.973)]


def test_paper_results_errors_name_the_file_and_row(tmp_path):
    path = tmp_path / "paper_results_x.csv"
    header = "source,paper,dataset,subset,detector,metric,value,threshold_policy,split_match,note\n"
    path.write_text(header + "s,p,head-ct,,ae,roc_auc,91.2,none,sizes,\n")
    with pytest.raises(ValueError, match=r"paper_results_x.csv: row 2: value '91.2'"):
        read_paper_results(path)
    path.write_text(header + "s,p,head-ct,,ae,roc_auc,0.9,none,maybe,\n")
    with pytest.raises(ValueError, match="split_match 'maybe'"):
        read_paper_results(path)
    path.write_text("source,value\ns,0.5\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_paper_results(path)
    assert compare(load_paper_results([]), pd.DataFrame()).empty


def test_cli_report_command(cli_output, tmp_path, capsys):
    status, printed, reports = cli_output
    assert status == 0 and f"report: {reports / 'fake-run' / 'index.html'}" in printed
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a medad run folder" in capsys.readouterr().err


def test_job_examples_artefact_keeps_first_images_with_maps_at_image_size(tmp_path):
    import torch

    from medad.benchmark.examples import examples_npz, read_examples
    from medad.datasets.base import ImageSet

    class HalfSizeMaps:  # a detector whose maps are half the image size and which has no reconstruction
        def reconstruct(self, images):
            return None

        def score_map(self, images):
            return images[:, 0, ::2, ::2] * 2.0

    class Nothing(HalfSizeMaps):
        def score_map(self, images):
            return None

    labels = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1])
    test = ImageSet(torch.randint(0, 255, (12, 1, 8, 8), dtype=torch.uint8), labels, [f"id{i}" for i in range(12)])
    scores = np.arange(12.0)
    path = tmp_path / "examples.npz"
    path.write_bytes(examples_npz(HalfSizeMaps(), test, scores, threshold=5.0, per_class=4))
    arrays = read_examples(path)
    assert arrays["ids"].tolist() == ["id1", "id2", "id4", "id5", "id0", "id3", "id9", "id10"]
    assert arrays["labels"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and arrays["scores"].tolist() == [1, 2, 4, 5, 0, 3, 9, 10]
    assert arrays["maps"].shape == (8, 8, 8) and "reconstructions" not in arrays
    assert float(arrays["threshold"]) == 5.0
    assert examples_npz(Nothing(), test, scores, threshold=5.0) is None
