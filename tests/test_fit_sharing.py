"""Fit sharing: jobs whose training is identical (OCT's three tasks on the same normals) train once, and every number
is what the jobs get unshared; resume, --extend, failures, test-set-seeing detectors and the dry run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

import medad.benchmark.job_runner as job_runner
from medad.benchmark.config import load_config, parse_config
from medad.benchmark.engine import run_matrix
from medad.benchmark.jobs import expand_jobs
from medad.benchmark.run_folder import RunFolder
from medad.cli import main
from medad.datasets.oct import RetinalOCT
from medad.reporting.figures import history_figure
from medad.reporting.run_data import load_run
from tests import dataset_layouts as layouts
from tests.conftest import REPO_ROOT

COUNTED = "tests.support.detectors:CountedFit"
SUBSETS = ("cnv", "dme", "drusen")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDAD_DATA", raising=False)


@pytest.fixture
def data_root(tmp_path) -> Path:
    layouts.oct(tmp_path / "data" / "oct", n_train=20, n_test=4)
    return tmp_path / "data"


def oct_config(path: Path, data_root: Path, detectors: list[dict], *, subsets=SUBSETS, seeds=(0,),
               share_fits: bool = True) -> Path:
    config = {"name": "share", "image_size": 32, "seeds": list(seeds), "device": "cpu",
              "datasets": [{"name": "oct", "subsets": list(subsets), "root": str(data_root / "oct")}],
              "detectors": detectors, **({} if share_fits else {"share_fits": False})}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run(config: Path, folder: Path) -> RunFolder:
    run_folder = RunFolder(folder)
    summary = run_matrix(load_config(config), run_folder, progress=False, argv=["test"])
    assert summary.ok, pd.read_csv(folder / "jobs.csv")[["job_id", "status", "error"]].to_string()
    return run_folder


def table(folder: Path, name: str) -> pd.DataFrame:
    frame = pd.read_csv(folder / f"{name}.csv")
    return frame.drop(columns=[c for c in ("run_id", "fit_id") if c in frame]).sort_values(
        [c for c in ("subset", "detector", "seed", "part", "sample_id", "metric", "threshold_policy") if c in frame]
    ).reset_index(drop=True)


def fits_counted(count_file: Path) -> list[str]:
    return count_file.read_text().splitlines() if count_file.exists() else []


def test_oct_tasks_train_on_the_same_normals_even_when_a_normal_copies_one_tasks_test_image(tmp_path):
    root = layouts.oct(tmp_path / "oct", n_train=20, n_test=4)
    base = root / "OCT2017 "
    # a training normal that is a copy of a DME test image: left out of training for every task, not only for dme
    shutil.copy(sorted((base / "test" / "DME").glob("*.jpeg"))[0], base / "train" / "NORMAL" / "NORMAL-1099-0.jpeg")
    dataset = RetinalOCT(root=root, image_size=32)
    loaded = {subset: dataset.load(subset) for subset in SUBSETS}
    for subset in SUBSETS[1:]:
        assert loaded[subset].train.ids == loaded["cnv"].train.ids, subset
        assert loaded[subset].val.ids == loaded["cnv"].val.ids, subset
    assert not any("NORMAL-1099-0" in i for i in loaded["cnv"].train.ids + loaded["cnv"].val.ids)
    assert len(loaded["cnv"].train) + len(loaded["cnv"].val) == 20


def test_oct_all_pools_the_three_diseases_against_the_same_normals_and_shares_their_fit(data_root, tmp_path):
    """BMAD's OCT2017 protocol: every test image of the three tasks in one test set, trained as they are."""
    from medad.benchmark.fit_sharing import fit_ids

    dataset = RetinalOCT(root=data_root / "oct", image_size=32)
    loaded = {subset: dataset.load(subset) for subset in (*SUBSETS, "all")}
    pooled = loaded["all"]
    assert pooled.train.ids == loaded["cnv"].train.ids and pooled.val.ids == loaded["cnv"].val.ids
    assert sorted(pooled.test.ids) == sorted(set().union(*(loaded[s].test.ids for s in SUBSETS)))
    anomalies = {i.split("/")[1] for i, label in zip(pooled.test.ids, pooled.test.labels) if label == 1}
    assert anomalies == {"CNV", "DME", "DRUSEN"}
    assert int(pooled.test.labels.sum()) == 3 * int(loaded["cnv"].test.labels.sum())
    assert {i.split("/")[1] for i, label in zip(pooled.test.ids, pooled.test.labels) if label == 0} == {"NORMAL"}
    config = load_config(oct_config(tmp_path / "c.yaml", data_root, [{"name": "ae", "params": {"epochs": 1}}],
                                    subsets=(*SUBSETS, "all")))
    assert len(set(fit_ids(expand_jobs(config)).values())) == 1


def test_fit_ids_share_across_oct_tasks_but_not_seeds_settings_or_test_set_seeing_detectors(data_root, tmp_path):
    from medad.benchmark.fit_sharing import fit_ids, fit_units

    config = load_config(oct_config(tmp_path / "c.yaml", data_root, [
        {"name": "ae", "params": {"epochs": 1}}, {"name": "ae", "label": "ae-2", "params": {"epochs": 2}},
        {"name": "ae", "label": "ae-copy", "params": {"epochs": 1}},
        {"name": "ganomaly", "label": "g-ref", "params": {"protocol": "reference", "epochs": 1}}], seeds=(0, 1)))
    jobs = expand_jobs(config)
    ids = fit_ids(jobs)
    by = {(j.subset, j.detector, j.seed): ids[j.job_id] for j in jobs}
    for seed in (0, 1):
        assert by[("cnv", "ae", seed)] == by[("dme", "ae", seed)] == by[("drusen", "ae", seed)]
        assert by[("cnv", "ae-copy", seed)] == by[("cnv", "ae", seed)]  # a second label of the same entry: same fit
        assert by[("cnv", "ae-2", seed)] != by[("cnv", "ae", seed)]     # another hyper-parameter: another fit
        assert len({by[(s, "g-ref", seed)] for s in SUBSETS}) == 3      # trains on each task's test set: never shared
    assert by[("cnv", "ae", 0)] != by[("cnv", "ae", 1)]
    assert len(set(fit_ids(jobs, share=False).values())) == len(jobs)
    units = fit_units(jobs)
    assert len(units) == 2 * (1 + 1 + 3) and all(u.leader.subset == "cnv" for u in units if len(u.jobs) > 1)
    other_split = parse_config({**config.to_dict(), "datasets": [{"name": "oct", "subsets": list(SUBSETS),
                                                                  "params": {"val_fraction": 0.2}}]})
    assert not set(fit_ids(expand_jobs(other_split, str(data_root)))).isdisjoint(ids)  # same job ids ...
    assert set(fit_ids(expand_jobs(other_split, str(data_root))).values()).isdisjoint(ids.values())  # ... other fits


def test_jobs_recording_the_test_set_diagnostic_never_share_a_fit(data_root, tmp_path):
    """The test-curve diagnostic scores the job's own test set during the fit: a fit that records it is that job's."""
    from medad.benchmark.fit_sharing import fit_ids

    config = load_config(oct_config(tmp_path / "c.yaml", data_root, [{"name": "ae", "params": {"epochs": 1}}]))
    shared = fit_ids(expand_jobs(config))
    assert len(set(shared.values())) == 1
    with_curve = fit_ids(expand_jobs(parse_config({**config.to_dict(), "test_curve": True})))
    assert len(set(with_curve.values())) == len(SUBSETS)


def test_shared_and_unshared_fits_give_the_same_metrics_and_scores_and_only_the_first_task_trains(data_root, tmp_path):
    detectors = [{"name": "ae", "params": {"epochs": 2, "batch_size": 8}}]
    shared = run(oct_config(tmp_path / "s.yaml", data_root, detectors, seeds=(0, 1)), tmp_path / "shared").path
    alone = run(oct_config(tmp_path / "u.yaml", data_root, detectors, seeds=(0, 1), share_fits=False),
                tmp_path / "alone").path
    for name in ("metrics", "scores"):
        pd.testing.assert_frame_equal(table(shared, name), table(alone, name), check_exact=True, obj=name)

    jobs = pd.read_csv(shared / "jobs.csv").set_index("job_id")
    assert jobs.groupby("seed")["fit_id"].nunique().tolist() == [1, 1]
    assert jobs["fit_id"].nunique() == 2 and pd.read_csv(alone / "jobs.csv")["fit_id"].nunique() == 6
    leaders = jobs[jobs["subset"] == "cnv"]
    assert (leaders["fit_by"] == leaders.index).all() and leaders["train_s"].notna().all()
    followers = jobs[jobs["subset"] != "cnv"]
    assert followers["train_s"].isna().all()  # they did not train ...
    assert {jobs.loc[f, "fit_by"] for f in followers.index} == set(leaders.index)  # ... they used the cnv job's fit
    # every task has its training curves: a follower's are the shared fit's, each row's fit_by naming who trained it
    history = pd.read_csv(shared / "history.csv", dtype={"fit_by": str})
    assert set(history["subset"]) == set(SUBSETS) == set(pd.read_csv(alone / "history.csv")["subset"])
    curve = ["seed", "epoch", "step", "loss_name", "value", "fit_by"]
    for subset in SUBSETS:
        rows = history[history["subset"] == subset]
        assert set(rows["fit_by"]) == set(leaders.index)
        pd.testing.assert_frame_equal(rows[curve].reset_index(drop=True),
                                      history[history["subset"] == "cnv"][curve].reset_index(drop=True))
    data = load_run(shared)
    figures = {subset: history_figure(data, f"oct/{subset}", tmp_path / "figures") for subset in SUBSETS}
    assert [subset for subset, figure in figures.items() if "shows that fit's curves" in figure.caption] == ["dme", "drusen"]
    metrics = pd.read_csv(shared / "metrics.csv")
    assert metrics.groupby(["subset", "seed"])["fit_id"].first().to_dict() == {
        (s, seed): jobs[(jobs["subset"] == s) & (jobs["seed"] == seed)]["fit_id"].item() for s in SUBSETS for seed in (0, 1)}
    log = (shared / "jobs" / followers.index[0] / "log.txt").read_text()
    assert "not trained again" in log and "epoch 1/2" not in log

    assert "fit_id" not in load_run(shared).tag_columns  # a standard column, not a detector's tag in the report
    for name in ("metrics", "jobs"):  # a run of an earlier medad, without the fit columns, still loads
        frame = pd.read_csv(alone / f"{name}.csv")
        frame.drop(columns=[c for c in ("fit_id", "fit_by") if c in frame]).to_csv(alone / f"{name}.csv", index=False)
    assert len(load_run(alone).metrics) == len(metrics)


def test_resume_with_only_the_first_task_done_trains_the_shared_fit_once_more(data_root, tmp_path):
    count = tmp_path / "fits.txt"
    config = oct_config(tmp_path / "c.yaml", data_root, [{"name": COUNTED, "label": "t", "params": {"count_file": str(count)}}],
                        seeds=(0, 1))
    folder = run(config, tmp_path / "r").path
    assert sorted(fits_counted(count)) == ["0", "1"]  # one fit per seed for three tasks
    before = table(folder, "metrics")
    for job_dir in (folder / "jobs").iterdir():  # what a run killed after the first task's jobs leaves behind
        if not job_dir.name.startswith("oct__cnv"):
            shutil.rmtree(job_dir)
    count.unlink()

    summary = run_matrix(load_config(config), RunFolder(folder), resume=True, progress=False, argv=["test"])
    assert summary.ok
    assert sorted(fits_counted(count)) == ["0", "1"]  # the pending dme and drusen jobs of a seed: one fit
    pd.testing.assert_frame_equal(table(folder, "metrics"), before, check_exact=True)
    jobs = pd.read_csv(folder / "jobs.csv").set_index(["seed", "subset"])
    assert set(jobs[jobs.index.get_level_values("subset") == "drusen"]["fit_by"].str.split("__").str[1]) == {"dme"}
    for seed in (0, 1):  # trained again: another training, so another fit id (on a GPU, without deterministic,
        #                  another model), the first one's with "-2"
        first = jobs.loc[(seed, "cnv"), "fit_id"]
        assert jobs.loc[(seed, "dme"), "fit_id"] == jobs.loc[(seed, "drusen"), "fit_id"] == f"{first}-2"


def test_a_fit_trained_again_takes_the_first_id_no_finished_job_used():
    from medad.benchmark.fit_sharing import training_id

    assert training_id("fit-0123456789ab") == "fit-0123456789ab"
    assert training_id("fit-0123456789ab", {"fit-0123456789ab"}) == "fit-0123456789ab-2"
    assert training_id("fit-0123456789ab", {"fit-0123456789ab", "fit-0123456789ab-2"}) == "fit-0123456789ab-3"


def test_extend_with_tasks_that_share_a_finished_fit_trains_it_once(data_root, tmp_path):
    count = tmp_path / "fits.txt"
    detectors = [{"name": COUNTED, "label": "t", "params": {"count_file": str(count)}}]
    first = oct_config(tmp_path / "first.yaml", data_root, detectors, subsets=("cnv",))
    assert main(["run", "--config", str(first), "--results", str(tmp_path), "--run-id", "r", "--quiet",
                 "--reports", str(tmp_path / "rep")]) == 0
    assert fits_counted(count) == ["0"]
    more = oct_config(tmp_path / "more.yaml", data_root, detectors, subsets=("dme", "drusen"))
    assert main(["run", "--extend", str(tmp_path / "r"), "--config", str(more), "--quiet",
                 "--reports", str(tmp_path / "rep")]) == 0
    assert fits_counted(count) == ["0", "0"]  # the two new tasks: one fit, trained again (fits are not kept)
    jobs = pd.read_csv(tmp_path / "r" / "jobs.csv").set_index("subset")
    assert jobs.loc["drusen", "fit_by"] == jobs.loc["dme", "job_id"]
    assert jobs.loc["dme", "fit_id"] == jobs.loc["drusen", "fit_id"] == jobs.loc["cnv", "fit_id"] + "-2"


def test_a_failed_shared_fit_fails_every_task_once_and_a_failed_scoring_only_its_own(data_root, tmp_path, monkeypatch):
    count = tmp_path / "fits.txt"
    failing = [{"name": "tests.support.cluster_probes:CountedFailure", "label": "f", "params": {"count_file": str(count)}}]
    summary = run_matrix(load_config(oct_config(tmp_path / "f.yaml", data_root, failing)), RunFolder(tmp_path / "f"),
                         progress=False, argv=["test"])
    jobs = pd.read_csv(tmp_path / "f" / "jobs.csv").set_index("subset")
    assert summary.counts["failed"] == 3 and len(fits_counted(count)) == 1
    assert jobs["error"].str.contains("deliberate failure inside fit").all()
    assert jobs.loc["dme", "error"].startswith("RuntimeError: the shared fit")

    original = job_runner._score_subset

    def score_fails_on_dme(detector, subset, job, times):
        if job.subset == "dme":
            raise RuntimeError("deliberate failure while scoring dme")
        return original(detector, subset, job, times)

    monkeypatch.setattr(job_runner, "_score_subset", score_fails_on_dme)
    count.unlink()
    counted = [{"name": COUNTED, "label": "t", "params": {"count_file": str(count)}}]
    summary = run_matrix(load_config(oct_config(tmp_path / "s.yaml", data_root, counted)), RunFolder(tmp_path / "s"),
                         progress=False, argv=["test"])
    jobs = pd.read_csv(tmp_path / "s" / "jobs.csv").set_index("subset")
    assert jobs["status"].to_dict() == {"cnv": "done", "dme": "failed", "drusen": "done"}
    assert "while scoring dme" in jobs.loc["dme", "error"] and len(fits_counted(count)) == 1


def test_a_detector_whose_training_sees_the_test_set_never_shares_even_undeclared(data_root, tmp_path):
    count = tmp_path / "fits.txt"
    peeking = [{"name": COUNTED, "label": "peek", "params": {"count_file": str(count), "sees_test": True}}]
    folder = run(oct_config(tmp_path / "c.yaml", data_root, peeking), tmp_path / "r").path
    assert len(fits_counted(count)) == 3  # each task trained its own: its test set is part of its training
    jobs = pd.read_csv(folder / "jobs.csv")
    assert jobs["fit_id"].nunique() == 3 and (jobs["fit_by"] == jobs["job_id"]).all()


def test_dry_run_of_the_study_shows_the_oct_tasks_sharing_one_fit_per_seed(data_root, capsys):
    # no estimate: it would time every study detector on this CPU (minutes); test_estimate covers it
    main(["run", "--config", "study", "--dry-run", "--no-estimate", "--data-root", str(data_root)])
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("oct ")]
    frame = pd.DataFrame([(r[1], r[2], r[3], r[-1]) for r in rows], columns=["subset", "detector", "seed", "fit"])
    assert len(frame) == 72 and set(frame["subset"]) == set(SUBSETS)  # (5 detectors + 3 controls) x 3 tasks x 3 seeds
    per_unit = frame.groupby(["detector", "seed"])["fit"].nunique()
    assert (per_unit.drop("ganomaly-reference") == 1).all()        # one fit per seed for the three tasks ...
    assert (per_unit["ganomaly-reference"] == 3).all()             # ... except where training sees the test set
    assert "216 jobs, 174 fits" in out                              # 7 detectors x 3 seeds x 2 fits saved


@pytest.mark.parametrize("executor", ["pool", "slurm", "ray"])
def test_every_executor_trains_a_shared_fit_once_and_gives_the_in_process_numbers(executor, data_root, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))  # worker processes import tests.support
    options, workers = {}, None
    if executor == "pool":
        executor, workers = "local", 2
    elif executor == "slurm":
        pytest.importorskip("submitit")
        options = {"slurm_cluster": "local"}
    else:
        pytest.importorskip("ray")
    count = tmp_path / "fits.txt"
    config = oct_config(tmp_path / "c.yaml", data_root, [{"name": COUNTED, "label": "t", "params": {"count_file": str(count)}}],
                        seeds=(0, 1))
    in_process = run(config, tmp_path / "in-process").path
    count.unlink()
    summary = run_matrix(load_config(config), RunFolder(tmp_path / "r"), executor=executor, workers=workers,
                         progress=False, argv=["test"], executor_options=options)
    assert summary.ok and sorted(fits_counted(count)) == ["0", "1"]
    for name in ("metrics", "scores"):
        pd.testing.assert_frame_equal(table(tmp_path / "r", name), table(in_process, name), check_exact=True, obj=name)
    fits = {path: pd.read_csv(path / "jobs.csv").set_index("job_id")["fit_id"].sort_index() for path in (tmp_path / "r",
                                                                                                         in_process)}
    pd.testing.assert_series_equal(*fits.values())


def test_a_lost_slurm_task_records_every_job_of_its_unit_failed(data_root, tmp_path):
    submitit = pytest.importorskip("submitit")
    from medad.benchmark.executors.slurm import SlurmExecutor
    from medad.benchmark.fit_sharing import fit_units

    class LostHandle:
        job_id = "4242_0"

        def result(self):
            raise submitit.core.utils.UncompletedJobError("Job 4242_0 has not produced any output")

    config = load_config(oct_config(tmp_path / "c.yaml", data_root, [{"name": COUNTED, "label": "t"}]))
    (unit,) = fit_units(expand_jobs(config))
    run_folder, records = RunFolder(tmp_path / "r"), []
    assert SlurmExecutor(cluster="local", max_retries=0)._collect(submitit, LostHandle(), [unit], 0, run_folder,
                                                                  records.append) is False
    assert [r["job_id"] for r in records] == [job.job_id for job in unit.jobs]
    assert all(r["status"] == "failed" and r["error"].startswith("lost after 0 retries") for r in records)


def test_a_pool_worker_dying_mid_unit_records_the_units_unfinished_jobs_failed(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    dies = [{"name": "tests.support.cluster_probes:DiesScoringTheSecondJob", "label": "d",
             "params": {"score_file": str(tmp_path / "scored.txt")}}]
    summary = run_matrix(load_config(oct_config(tmp_path / "c.yaml", data_root, dies)), RunFolder(tmp_path / "r"),
                         workers=2, progress=False, argv=["test"])
    jobs = pd.read_csv(tmp_path / "r" / "jobs.csv").set_index("subset")
    assert summary.counts == {"done": 1, "failed": 2, "skipped": 0}
    assert jobs.loc["cnv", "status"] == "done"
    assert len((tmp_path / "scored.txt").read_text().splitlines()) == 2  # drusen was not started: --resume runs it
    assert jobs.loc[["dme", "drusen"], "error"].str.contains("died .* while running the job or another job of its "
                                                             "shared fit").all()
