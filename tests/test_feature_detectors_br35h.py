"""PatchCore and PaDiM through a whole job on a Br35H download in its publisher's layout (yes/, no/ and the Mask-RCNN
VIA outlines): image metric rows and pixel metric rows (ROC AUC, AUPRO, Dice) from their maps, rows tagged."""

from __future__ import annotations

import math

import pytest

from medad.benchmark.job_runner import execute
from medad.benchmark.jobs import Job
from medad.registry import DETECTORS
from tests import dataset_layouts as layouts


@pytest.fixture(scope="module")
def br35h(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    layouts.br35h(base / "br35h" / "Br35H", n=12, mask_rcnn=True)
    return base / "br35h"


@pytest.mark.parametrize("name", ["patchcore", "padim"])
def test_a_job_on_br35h_gives_image_and_pixel_rows(br35h, name, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    job = Job(dataset="br35h", subset="default", detector=name, detector_name=name, seed=0, image_size=32, channels=1,
              device="cpu", score_batch_size=8, save_checkpoints=False, dataset_root=str(br35h),
              detector_params=dict(DETECTORS.get(name).smoke_params))
    record, tables, _ = execute(job, "r")
    metrics = tables["metrics"]
    values = metrics.set_index(["metric", "threshold_policy"])["value"]
    for metric in ("roc_auc", "pixel_roc_auc", "pixel_pr_auc", "aupro"):
        assert math.isfinite(values[(metric, "none")]), metric
    assert {"dice"} <= set(metrics["metric"]) and set(metrics["weights"]) == {"random"}
    assert "pixel metrics over" in metrics.set_index("metric").loc["pixel_roc_auc", "note"]
    assert record["maps_s"] > 0
