"""Identifiers in a run's tidy CSVs stay text: a Head-CT sample id "007" and a fit id that reads like a number in
scientific notation ("7645e5312180", which a CSV reader takes for infinity) come back as they were written."""

from __future__ import annotations

import io

import pandas as pd

from medad.api import Run
from medad.benchmark.fit_sharing import fit_id
from medad.benchmark.jobs import Job
from medad.benchmark.run_folder import RunFolder, now
from medad.reporting.run_data import load_run

NUMBER_LIKE_FIT = "7645e5312180"
SAMPLES = ["007", "010", "123"]


def _run_with_number_like_ids(tmp_path) -> RunFolder:
    folder = RunFolder(tmp_path / "ids-run")
    folder.path.mkdir()
    config = {"name": "ids", "datasets": [{"name": "head-ct", "subsets": ["hemorrhage"]}],
              "detectors": [{"name": "ae", "label": "ae"}]}
    folder.write_manifest({"run_id": "ids-run", "config": config, "status": "complete", "start": now(), "end": now()})
    keys = {"run_id": "ids-run", "dataset": "head-ct", "subset": "hemorrhage", "detector": "ae", "seed": 0}
    job_id = "head-ct__hemorrhage__ae__seed0"
    metrics = pd.DataFrame([{**keys, "supervision": "unsupervised", "weights": "none", "metric": "roc_auc",
                             "value": 0.5, "threshold_policy": "none", "oracle": False, "note": "",
                             "fit_id": NUMBER_LIKE_FIT}])
    scores = pd.DataFrame({**keys, "part": "test", "sample_id": SAMPLES, "label": [0, 1, 1], "score": [0.1, 0.2, 0.3]})
    record = {**keys, "job_id": job_id, "detector_name": "ae", "status": "done", "error": "", "wall_s": 1.0,
              "device": "cpu", "started": now(), "finished": now(), "fit_id": NUMBER_LIKE_FIT, "fit_by": job_id}
    folder.write_job(job_id, record, {"metrics": metrics, "scores": scores})
    folder.merge()
    return folder


def test_number_like_sample_and_fit_ids_survive_the_merge_and_every_reader(tmp_path):
    folder = _run_with_number_like_ids(tmp_path)
    merged = pd.read_csv(folder.path / "scores.csv", dtype=str)
    assert merged["sample_id"].tolist() == SAMPLES  # the merge read each job's file with ids as text
    assert pd.read_csv(folder.path / "metrics.csv", dtype=str)["fit_id"].tolist() == [NUMBER_LIKE_FIT]
    run = Run(folder.path)
    assert run.scores["sample_id"].tolist() == SAMPLES
    assert run.metrics["fit_id"].tolist() == [NUMBER_LIKE_FIT]
    data = load_run(folder.path)
    assert data.metrics["fit_id"].tolist() == [NUMBER_LIKE_FIT]
    assert data.scores["sample_id"].tolist() == SAMPLES


def test_fit_ids_read_back_as_text_by_a_plain_csv_reader():
    """A user's ``pd.read_csv`` without dtypes gets each fit id back unchanged (never a number or infinity): of
    1200 bare 12-digit hex hashes, about 1% read as numbers when they are the column's only value."""
    jobs = [Job(dataset="oct", subset=subset, detector="ae", detector_name="ae", seed=seed, image_size=64, channels=1,
                device="cpu", score_batch_size=32, save_checkpoints=False)
            for subset in ("cnv", "dme", "drusen") for seed in range(400)]
    ids = sorted({fit_id(job, share=False) for job in jobs})
    # a run whose jobs all share one fit has a fit_id column of one value: read each id as such a column
    read = [pd.read_csv(io.StringIO(f"fit_id\n{value}\n"))["fit_id"].iloc[0] for value in ids]
    assert read == ids
