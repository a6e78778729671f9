"""The cost estimate of ``medad run --dry-run``: a short calibration per detector setting, cached, scaled by the split."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest

from medad.benchmark import estimate as estimate_module
from medad.benchmark.config import load_config
from medad.benchmark.estimate import calibrate, estimate_jobs, format_estimate
from medad.benchmark.jobs import expand_jobs
from medad.cli import main
from tests import dataset_layouts as layouts
from tests.conftest import write_config

TINY_AE = {"epochs": 2, "batch_size": 8, "width": 4, "latent": 8}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Calibrations go to a cache of the test's own, and the first one in a test warms the CPU up."""
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(estimate_module, "_WARM_CPU", set())


def counting_fits(monkeypatch, seconds: Callable[[dict], float] | None = None) -> list[dict]:
    """Record the hyper-parameters of every timed calibration fit; with ``seconds``, each fit still runs but its
    timing is ``seconds(params)`` (a modelled clock: the estimate's arithmetic, free of the machine's noise)."""
    calls: list[dict] = []
    real = estimate_module._timed_fit

    def counted(cls, params, *args):
        calls.append(dict(params))
        took, detector = real(cls, params, *args)
        return (seconds(params) if seconds is not None else took), detector

    monkeypatch.setattr(estimate_module, "_timed_fit", counted)
    return calls


def test_a_calibration_times_each_budget_once_and_is_cached(tmp_path, monkeypatch):
    fits = counting_fits(monkeypatch, seconds=lambda params: 0.5 + 0.25 * params["epochs"])
    first = calibrate("ae", TINY_AE, image_size=32, channels=1, device="cpu", n_cal=16)
    # a warm-up (the process's first) and a base fit with one epoch, then one with 1 + 1 epochs
    assert [f["epochs"] for f in fits] == [1, 1, 2]
    # one epoch over the 16 images costs 0.25 s, the rest of a fit 0.5 s (a timing shorter than the machine's noise
    # would make the measured difference zero: the modelled clock checks the arithmetic, not this machine)
    assert first.budget == {"epochs": "epochs"} and first.unit_s["epochs"] == pytest.approx(0.25 / 16)
    assert first.setup_s_per_image == pytest.approx(0.5 / 16) and first.score_s_per_image > 0
    assert first.n_cal == 16 and "threads" in first.device
    cached = list((tmp_path / "cache" / "calibration").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["budget"] == {"epochs": "epochs"}

    again = calibrate("ae", {**TINY_AE, "epochs": 30}, image_size=32, channels=1, device="cpu", n_cal=16)
    assert again == first and len(fits) == 3            # another budget value: the same setting, not timed again
    calibrate("ae", TINY_AE, image_size=32, channels=1, device="cpu", n_cal=16, memory_format="contiguous")
    assert [f["epochs"] for f in fits[3:]] == [1, 2]    # another memory format (precision, size): timed, CPU warm
    calibrate("ae", TINY_AE, image_size=32, channels=1, device="cpu", n_cal=16, deterministic=True)
    assert [f["epochs"] for f in fits[5:]] == [1, 2]    # deterministic algorithms: other arithmetic, timed apart
    assert len(list((tmp_path / "cache" / "calibration").glob("*.json"))) == 3


def test_the_budget_each_detector_declares():
    from medad.registry import DETECTORS

    fanogan = estimate_module.resolved_params(DETECTORS.get("f-anogan"), {})
    assert DETECTORS.get("f-anogan").training_budget(fanogan) == {"gan_epochs": "epochs", "encoder_epochs": "epochs"}
    mama = DETECTORS.get("mama-net")
    assert mama.training_budget(estimate_module.resolved_params(mama, {})) == {"iterations": "steps"}
    assert mama.training_budget(estimate_module.resolved_params(mama, {"epochs": 3})) == {"epochs": "epochs"}
    semi = DETECTORS.get("coronet-semi")
    assert semi.training_budget(estimate_module.resolved_params(semi, {})) == {
        "epochs": "epochs", "cin_epochs": "epochs", "anomaly_ae_steps": "steps"}
    distillation = DETECTORS.get("reverse-distillation")  # its teacher's cache (MB) is no budget
    assert distillation.training_budget(estimate_module.resolved_params(distillation, {})) == {"epochs": "epochs"}


def tiny_jobs(tmp_path, name: str, n_train: int, epochs: int, seeds=(0,)):
    config = write_config(tmp_path / f"{name}.yaml", name=name, seeds=seeds,
                          detectors=[{"name": "ae", "params": {**TINY_AE, "epochs": epochs}}],
                          dataset_params={"n_train": n_train, "n_val": 8, "n_test": 16})
    return expand_jobs(load_config(config))


def test_estimates_scale_with_the_training_images_and_the_epochs(tmp_path, monkeypatch):
    fits = counting_fits(monkeypatch)
    base = estimate_jobs(tiny_jobs(tmp_path, "a", n_train=32, epochs=2), n_cal=16).jobs[0]
    more_images = estimate_jobs(tiny_jobs(tmp_path, "b", n_train=64, epochs=2), n_cal=16).jobs[0]
    more_epochs = estimate_jobs(tiny_jobs(tmp_path, "c", n_train=32, epochs=4), n_cal=16).jobs[0]
    assert len(fits) == 3, "one calibration serves every budget and size"
    assert (base.n_train, more_images.n_train) == (32, 64)
    assert more_images.fit_s == pytest.approx(2 * base.fit_s)
    calibration = next(iter(estimate_jobs(tiny_jobs(tmp_path, "a", 32, 2), n_cal=16).calibrations.values()))
    epoch = calibration.unit_s["epochs"] * 32
    assert more_epochs.fit_s == pytest.approx(base.fit_s + 2 * epoch)   # two more epochs over the 32 images
    assert more_epochs.score_s == base.score_s
    assert base.score_s == pytest.approx(calibration.score_s_per_image * base.n_scored) and base.n_scored > 16


def test_a_shared_fit_is_counted_once_and_unknown_jobs_are_named(tmp_path):
    layouts.oct(tmp_path / "data" / "oct" / "oct2017")
    oct_config = tmp_path / "oct.yaml"
    oct_config.write_text(json.dumps({"name": "oct", "image_size": 32, "seeds": [0], "device": "cpu",
                                      "datasets": [{"name": "oct", "subsets": ["cnv", "dme", "drusen"]}],
                                      "detectors": [{"name": "ae", "params": TINY_AE}]}))
    oct_jobs = expand_jobs(load_config(oct_config), str(tmp_path / "data"))
    shared = estimate_jobs(oct_jobs, n_cal=16)  # as the run shares them: OCT's three tasks train one model
    assert shared.fits == 1 and shared.jobs[1].fit_s is None and shared.jobs[2].fit_s is None
    alone = estimate_jobs(oct_jobs, share_fits=False, n_cal=16)
    assert alone.fits == 3 and all(job.fit_s for job in alone.jobs) and shared.jobs[0].fit_s == alone.jobs[0].fit_s
    assert shared.total_s == pytest.approx(alone.total_s - alone.jobs[1].fit_s - alone.jobs[2].fit_s)
    assert "oct: 3 jobs, 1 fits, about" in format_estimate(shared, "oct")

    jobs = tiny_jobs(tmp_path, "shared", n_train=32, epochs=2, seeds=(0, 1, 2))
    alone = estimate_jobs(jobs, n_cal=16)
    missing = [dataclasses.replace(job, dataset="oct", subset="cnv", dataset_params={},
                                   dataset_root=str(tmp_path / "nowhere")) for job in jobs[:1]]
    unreadable = estimate_jobs(jobs + missing, n_cal=16)
    assert unreadable.jobs[-1].unknown.startswith("dataset unreadable") and unreadable.total_s == alone.total_s
    text = format_estimate(unreadable, "tiny")
    assert "oct__cnv__ae__seed0" in text and "unknown: dataset unreadable" in text
    assert "tiny: 4 jobs, 4 fits, about" in text and "1 jobs unknown (not counted)" in text


def test_the_dry_run_prints_each_jobs_estimate_and_the_total(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "ae", "params": TINY_AE}], seeds=(0, 1))
    assert main(["run", "--config", str(config), "--dry-run", "--results", str(tmp_path / "results")]) == 0
    out, err = capsys.readouterr()
    assert "tiny: 2 jobs, 2 fits, about" in out and "CPU-hours" in out and "an estimate from a short calibration" in out
    assert "synthetic__obvious__ae__seed1" in out and not (tmp_path / "results").exists()
    # while it times (minutes for a first study estimate on a CPU) it says so; a cached setting is silent
    assert "estimate: timing ae at 32 px x1, fp32, on " in err and "estimate: timed ae at 32 px x1" in err
    assert main(["run", "--config", str(config), "--dry-run", "--results", str(tmp_path / "results")]) == 0
    assert "estimate: timing" not in capsys.readouterr().err
    assert main(["run", "--config", str(config), "--dry-run", "--no-estimate"]) == 0
    assert "fits, about" not in capsys.readouterr().out


def test_the_study_dry_run_on_the_publishers_layouts_estimates_what_it_can_read(tmp_path, capsys):
    layouts.oct(tmp_path / "data" / "oct" / "oct2017")
    status = main(["run", "--config", "study", "--dry-run", "--data-root", str(tmp_path / "data"), "--seeds", "0",
                   "--datasets", "oct,head-ct", "--detectors", "ganomaly", "--set", "image_size=32",
                   "--set", "detectors.ganomaly.params.batch_size=8"])
    out = capsys.readouterr().out
    assert status == 2  # head-ct is not there: the pre-flight check says so, and the estimate goes on without it
    for subset in ("cnv", "dme", "drusen"):
        line = next(line for line in out.splitlines() if line.startswith(f"oct__{subset}__ganomaly__seed0"))
        assert "unknown" not in line and line.split()[1] == "12"   # the fake download's 12 training normals
    assert "head-ct__default__ganomaly__seed0" in out and "unknown: dataset unreadable" in out
    assert "study: 4 jobs, 2 fits, about" in out and "1 jobs unknown (not counted)" in out  # OCT's tasks: one fit
    assert sum(" shared " in line for line in out.splitlines() if line.startswith("oct__")) == 2


def test_cost_terms_follow_the_work_that_does_not_scale_with_the_images(tmp_path, monkeypatch):
    """PatchCore's coreset (quadratic in a chunk) and search (per scored image, growing with the bank): the estimate
    adds each term's units x its timed seconds per unit, and takes the terms' share out of the calibration's set-up."""
    from medad.detectors.patchcore import PatchCoreDetector

    unit = {"coreset_steps": 1e-5, "coreset_distances": 1e-10, "search": 1e-11}
    monkeypatch.setattr(PatchCoreDetector, "time_cost_term", classmethod(lambda cls, name, params, device: unit[name]))
    params = {**PatchCoreDetector.smoke_params, "batch_size": 8}
    config = write_config(tmp_path / "p.yaml", name="p", detectors=[{"name": "patchcore", "params": params}],
                          dataset_params={"n_train": 48, "n_val": 8, "n_test": 16})
    job = expand_jobs(load_config(config))[0]
    result = estimate_jobs([job], n_cal=16)
    calibration, estimate = next(iter(result.calibrations.values())), result.jobs[0]
    full = estimate_module.resolved_params(PatchCoreDetector, params)
    terms = PatchCoreDetector.cost_terms(full, 48, 32)
    assert calibration.term_s == unit
    # 48 images x 4 x 4 patches of 96 floats, 10 %, one chunk: 76 steps of 768 distances in 96 dimensions
    assert terms == {"coreset_steps": (76, 0.0), "coreset_distances": (76 * 768 * 96, 0.0), "search": (0.0, 16 * 76 * 96)}
    assert estimate.fit_s == pytest.approx(calibration.setup_s_per_image * 48 + 76 * 1e-5 + 76 * 768 * 96 * 1e-10)
    assert estimate.score_s == pytest.approx((calibration.score_s_per_image + 16 * 76 * 96 * 1e-11) * estimate.n_scored)
    # the fit the detector really makes does that much work
    detector = PatchCoreDetector(image_size=32, channels=1, **params)
    detector.fit(job_subset(job).train)
    assert detector.bank.shape == (76, 96) and detector.plan.chunks == 1


def job_subset(job):
    from medad.benchmark.job_runner import load_subset

    return load_subset(job)
