"""A report over a run without control rows says that the shortcut check was not run and how to add it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medad.benchmark.run_folder import RunFolder, now
from medad.cli import main
from medad.reporting.run_data import load_run
from medad.reporting.shortcut_notice import extend_command, shortcut_check_not_run


def run_with(root, run_id: str, detectors: dict[str, str]) -> RunFolder:
    """A finished one-seed run of ``detectors`` (label -> registry name) on a small test set."""
    folder = RunFolder(root / run_id)
    folder.path.mkdir(parents=True)
    folder.write_manifest({"run_id": run_id, "status": "complete", "start": now(), "end": now(),
                           "config": {"datasets": [{"name": "synthetic", "subsets": ["obvious"]}],
                                      "detectors": [{"name": n, "label": d} for d, n in detectors.items()]}})
    labels = np.r_[np.zeros(6, int), np.ones(6, int)]
    for label, name in detectors.items():
        keys = {"dataset": "synthetic", "subset": "obvious", "detector": label, "seed": 0}
        scores = pd.DataFrame({"run_id": run_id, **keys, "part": "test", "sample_id": [f"s{i}" for i in range(12)],
                               "label": labels, "score": np.arange(12.0)})
        metrics = pd.DataFrame([{"run_id": run_id, **keys, "supervision": "unsupervised", "weights": "none",
                                 "metric": "roc_auc", "value": 1.0, "threshold_policy": "none", "oracle": False}])
        job_id = f"synthetic__obvious__{label}__seed0"
        folder.write_job(job_id, {"run_id": run_id, "job_id": job_id, **keys, "detector_name": name,
                                  "status": "done", "error": ""}, {"metrics": metrics, "scores": scores})
    folder.merge()
    return folder


def test_a_run_without_controls_gets_the_notice_and_the_exact_command(tmp_path, capsys):
    run = run_with(tmp_path / "results", "older", {"ae": "ae", "f-anogan": "f-anogan"})
    assert main(["report", str(run.path), "--reports", str(tmp_path / "reports")]) == 0
    err = capsys.readouterr().err
    command = f"medad run --extend {run.path} --detectors intensity,histogram"
    assert "The shortcut check was not run: this run has no rows of the control detectors (intensity, histogram)" in err
    assert command in err and f"then medad report {run.path} shows the check" in err
    page = (tmp_path / "reports" / "older" / "index.html").read_text()
    assert 'id="shortcut-not-run"' in page and command in page


def test_a_run_with_a_control_gets_none_and_paths_are_quoted(tmp_path):
    with_control = run_with(tmp_path / "results", "new", {"ae": "ae", "intensity": "intensity"})
    assert shortcut_check_not_run(load_run(with_control.path)) is None
    labelled = run_with(tmp_path / "results", "labelled", {"ctl": "histogram"})  # a control under its own label
    assert shortcut_check_not_run(load_run(labelled.path)) is None
    assert extend_command(tmp_path / "my runs" / "a") == (f"medad run --extend '{tmp_path / 'my runs' / 'a'}' "
                                                         "--detectors intensity,histogram")
