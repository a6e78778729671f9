"""`import medad` is the plugin and notebook entry point: the names, `medad.run`, `medad.load_run` and its dtypes."""

from __future__ import annotations

import copy
import subprocess
import sys

import pandas as pd
import pytest

import medad
from tests.conftest import REPO_ROOT

TEMPLATE = "tests.support.detectors:TemplateDistance"
PUBLIC = ["Dataset", "Detector", "ImageSet", "Run", "Subset", "TrainLog", "__version__", "list_datasets",
          "list_detectors", "load_run", "register_dataset", "register_detector", "run"]


def test_import_medad_exposes_the_public_api_lazily():
    for name in PUBLIC:
        assert hasattr(medad, name), name
    assert set(PUBLIC) <= set(dir(medad)) and set(PUBLIC) - {"__version__"} <= set(medad.__all__)
    assert medad.Detector.__module__ == "medad.detectors.base" and "ae" in medad.list_detectors()
    assert "synthetic" in medad.list_datasets()
    with pytest.raises(AttributeError):
        medad.not_a_name  # noqa: B018
    fresh = subprocess.run([sys.executable, "-c", "import sys, medad; print('torch' in sys.modules)"],
                           capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert fresh.stdout.strip() == "False"  # `import medad` alone imports nothing heavy


def test_run_then_load_run_gives_typed_frames_and_leaves_the_config_alone(tmp_path):
    config = {"name": "api", "image_size": 32, "device": "cpu", "seeds": [0, 1],
              "datasets": [{"name": "synthetic", "subsets": ["obvious"], "params": {"n_train": 32, "n_val": 8, "n_test": 16}}],
              "detectors": [{"name": TEMPLATE, "label": "t"}, {"name": "ae", "params": {"epochs": 1, "width": 4}}]}
    before = copy.deepcopy(config)
    run = medad.run(config, results=tmp_path / "results", reports=tmp_path / "reports", run_id="api", detectors=["t"])
    assert config == before
    assert isinstance(run, medad.Run) and run.ok and run.path == tmp_path / "results" / "api"
    assert run.report == tmp_path / "reports" / "api" / "index.html" and run.report.is_file()
    loaded = medad.load_run(run.path)
    metrics, scores, jobs = loaded.metrics, loaded.scores, loaded.jobs
    assert set(metrics["detector"]) == {"t"} and len(jobs) == 2
    for frame, column in ((metrics, "dataset"), (metrics, "detector"), (metrics, "metric"), (scores, "part")):
        assert isinstance(frame[column].dtype, pd.CategoricalDtype), column
    assert metrics["oracle"].dtype == bool and metrics["value"].dtype == "float64"
    assert str(metrics["seed"].dtype) == "Int64" and str(scores["label"].dtype) == "Int64"
    assert metrics.query("metric == 'roc_auc'")["value"].between(0, 1).all()
    assert {"train", "val", "test"} <= set(loaded.splits["part"]) and not loaded.history.empty
    loaded.metrics.drop(columns="value")  # a copy each time: nothing the caller does changes the run
    assert "value" in loaded.metrics.columns
    with pytest.raises(FileNotFoundError, match="not a medad run folder"):
        medad.load_run(tmp_path)
