"""The researcher's workflow: check before running, a dry run, extend a finished run, one report over runs,
your own data in a folder or a manifest, --set, and an install outside the repository."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medad.cli import main
from tests import dataset_layouts as layouts
from tests.conftest import REPO_ROOT, write_config

TEMPLATE = "tests.support.detectors:TemplateDistance"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDAD_DATA", raising=False)


# --- pre-flight and dry run ------------------------------------------------------------------------
def test_the_study_without_data_root_fails_in_preflight_listing_every_root_and_makes_no_run_folder(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["run", "--config", "study", "--results", str(results), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pre-flight check found" in err and "nothing was run" in err
    for name in ("head-ct", "brain-tumor-mri", "br35h", "mias", "oct", "c-nmc"):
        assert f"({name}): needs its files: pass --data-root" in err, name
    assert "multi-kd" in err  # its ImageNet weights: not in the cache, and this machine is offline
    assert not results.exists()


def test_dry_run_lists_the_216_study_jobs_quickly(tmp_path, capsys):
    started = time.perf_counter()
    status = main(["run", "--config", "study", "--dry-run", "--data-root", str(tmp_path / "nowhere")])
    elapsed = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert status == 2 and "216 jobs: 216 pending" in out  # 135 of the study, 81 of the controls and "does not exist" in err
    assert elapsed < 5, f"the dry run took {elapsed:.1f} s"
    assert "head-ct" in out and "ganomaly-reference" in out and "128px x3" in out
    assert not (Path("results") / "study").exists()


def test_detectors_filter_matches_labels_exactly(capsys):
    main(["run", "--config", "study", "--dry-run", "--detectors", "ganomaly", "--data-root", "/nowhere"])
    out = capsys.readouterr().out
    assert "27 jobs" in out and "ganomaly-reference" not in out  # 9 units x 3 seeds, not twice that


def test_dry_run_of_a_finished_run_says_what_is_done(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", seeds=(0, 1), detectors=[{"name": TEMPLATE, "label": "t"}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(tmp_path / "r"), "--dry-run"]) == 0
    assert "2 jobs: 2 done" in capsys.readouterr().out


def test_an_input_size_a_detector_cannot_take_is_a_preflight_problem(tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", image_size=40, detectors=[{"name": "ganomaly"}, {"name": "multi-kd",
                                                                           "params": {"source": "random"}}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "detectors[0] (ganomaly): DCGAN blocks need image_size a power of two" in err
    assert "detectors[1] (multi-kd): multi-kd needs image_size divisible by 32" in err


# --- --set and YAML floats -------------------------------------------------------------------------
def test_set_overrides_keys_by_label_and_is_recorded(tmp_path):
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "ae", "params": {"epochs": 5}},
                                                          {"name": TEMPLATE, "label": "t"}])
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet",
                 "--set", "detectors.ae.params.epochs=1", "--set", "detectors.ae.params.lr=1e-3",
                 "--set", "detectors.ae.params.width=4", "--set", "image_size=16", "--set", "seeds=[3]"]) == 0
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    ae = manifest["config"]["detectors"][0]
    assert ae["params"] == {"epochs": 1, "lr": 0.001, "width": 4} and manifest["config"]["image_size"] == 16
    assert manifest["config"]["seeds"] == [3] and "detectors.ae.params.epochs=1" in manifest["overrides"]


# --- extend a finished run, and one report over runs -------------------------------------------------
def test_extending_a_finished_run_runs_only_the_new_detector_and_reports_both(tmp_path):
    first = write_config(tmp_path / "first.yaml", seeds=(0, 1), detectors=[{"name": TEMPLATE, "label": "t"}])
    assert main(["run", "--config", str(first), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    run = tmp_path / "r"
    before = {p: p.stat().st_mtime_ns for p in (run / "jobs").rglob("*") if p.is_file()}
    more = write_config(tmp_path / "more.yaml", seeds=(0, 1), detectors=[{"name": TEMPLATE, "label": "t2",
                                                                          "params": {"fit_seconds": 0.0}}])
    assert main(["run", "--extend", str(run), "--config", str(more), "--quiet", "--reports", str(tmp_path / "rep")]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before          # the first detector's jobs untouched
    metrics = pd.read_csv(run / "metrics.csv")
    assert set(metrics["detector"]) == {"t", "t2"} and len(metrics.query("metric == 'roc_auc'")) == 4
    page = (tmp_path / "rep" / "r" / "index.html").read_text()
    assert "t2" in page
    manifest = json.loads((run / "manifest.json").read_text())
    assert [d["label"] for d in manifest["config"]["detectors"]] == ["t", "t2"] and "extended" in manifest["sessions"][-1]


def test_extending_with_a_dataset_whose_split_changed_is_refused(tmp_path, capsys):
    root = layouts.head_ct(tmp_path / "data" / "head-ct", n=30, nested=False)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: t\nimage_size: 16\ndevice: cpu\ndatasets: [{{name: head-ct, root: '{root}'}}]\n"
                      f"detectors: [{{name: '{TEMPLATE}', label: t}}]\n")
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    extra = next(root.rglob("029.png"))
    layouts.save(extra.with_name("030.png"), layouts.noise(np.random.default_rng(5)))
    labels = root / "labels.csv"
    labels.write_text(labels.read_text() + "30,0\n")
    more = tmp_path / "more.yaml"
    more.write_text(config.read_text().replace("label: t}", "label: t2}"))
    capsys.readouterr()
    assert main(["run", "--extend", str(tmp_path / "r"), "--config", str(more), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "head-ct/default: the dataset's files changed since the run was written by medad " in err
    assert "1 image is new (e.g. 030); new cells would be tested on other images than the run's" in err


def test_one_report_over_two_runs_with_equal_splits_and_a_refusal_for_different_ones(tmp_path, capsys):
    a = write_config(tmp_path / "a.yaml", detectors=[{"name": TEMPLATE, "label": "a"}])
    b = write_config(tmp_path / "b.yaml", detectors=[{"name": TEMPLATE, "label": "b", "params": {"fit_seconds": 0.0}}])
    other = write_config(tmp_path / "o.yaml", detectors=[{"name": TEMPLATE, "label": "o"}],
                         dataset_params={"n_train": 48, "n_val": 12, "n_test": 24, "split_seed": 1})
    for name, config in (("A", a), ("B", b), ("O", other)):
        assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", name, "--quiet",
                     "--reports", str(tmp_path / "rep")]) == 0
    assert main(["report", str(tmp_path / "A"), str(tmp_path / "B"), "--reports", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "A+B" / "index.html").read_text()
    assert ">a<" in page.replace(" ", "") or "a" in page
    assert "DeLong" in page
    capsys.readouterr()
    assert main(["report", str(tmp_path / "A"), str(tmp_path / "O"), "--reports", str(tmp_path / "rep")]) == 2
    assert "split it differently" in capsys.readouterr().err


# --- your own data ---------------------------------------------------------------------------------------
def folder_layout(root: Path, n: int = 16) -> Path:
    rng = np.random.default_rng(3)
    for i in range(n):
        layouts.save(root / "normal" / f"n{i}.png", layouts.noise(rng, 24, 24))
    for i in range(n // 2):
        image = layouts.noise(rng, 24, 24).copy()
        image[8:16, 8:16] = 255
        layouts.save(root / "abnormal" / "site-a" / f"a{i}.png", image)
        mask = np.zeros((24, 24), np.uint8)
        mask[8:16, 8:16] = 255
        layouts.save(root / "masks" / "site-a" / f"a{i}.png", mask)
    return root


def test_the_folder_dataset_runs_end_to_end_from_folders_and_from_a_manifest(tmp_path):
    from medad.registry import DATASETS

    folders = folder_layout(tmp_path / "data" / "folder")
    subset = DATASETS.get("folder")(root=folders, image_size=16).load("default")
    assert int(subset.test.labels.sum()) == 8 and subset.test.masks is not None and subset.test.mask_known.all()
    assert int(subset.test.masks[subset.test.labels == 1].sum()) > 0
    listed = tmp_path / "listed"
    listed.mkdir()
    os.rename(folders, listed / "images")
    lines = ["path,label,split,patient_id,mask_path"]
    for k, path in enumerate(sorted((listed / "images" / "normal").iterdir())):
        lines.append(f"images/normal/{path.name},normal,{'test' if k < 4 else ''},p{path.stem},")
    for path in sorted((listed / "images" / "abnormal" / "site-a").iterdir()):
        lines.append(f"images/abnormal/site-a/{path.name},1,test,,images/masks/site-a/{path.name}")
    (listed / "manifest.csv").write_text("\n".join(lines) + "\n")
    for root in (listed,):
        config = tmp_path / "c.yaml"
        config.write_text(f"name: own\nimage_size: 16\ndevice: cpu\ndatasets: [{{name: folder, root: '{root}'}}]\n"
                          f"detectors: [{{name: '{TEMPLATE}', label: t}}]\n")
        assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "own", "--quiet",
                     "--reports", str(tmp_path / "rep")]) == 0
        metrics = pd.read_csv(tmp_path / "own" / "metrics.csv")
        assert metrics.query("metric == 'roc_auc'")["value"].between(0, 1).all()
        assert metrics.query("metric == 'pixel_roc_auc'")["value"].notna().all()
        splits = pd.read_csv(tmp_path / "own" / "splits.csv")
        test = splits.query("part == 'test'")
        assert (test["label"] == 1).sum() == 8 and (test["label"] == 0).sum() == 4  # the manifest's own test split
    (listed / "manifest.csv").write_text(lines[0] + "\n../outside.png,1,,,\n")
    with pytest.raises(Exception, match="manifest.csv line 2: '../outside.png' points outside"):
        DATASETS.get("folder")(root=listed, image_size=16).load("default")
    assert main(["datasets", "check", "folder", "--root", str(folder_layout(tmp_path / "f2"))]) == 0


# --- an install outside the repository ------------------------------------------------------------------
def see_dependencies_of_this_interpreter(venv: Path) -> None:
    """Let ``venv`` import what this interpreter has installed (torch and the rest), wherever that lives: a virtual
    or conda environment, or the system. ``--system-site-packages`` would give the *base* interpreter's packages,
    which lack torch when this one is a virtual environment. A ``.pth`` line puts these directories after the venv's
    own site-packages (so the wheel installed there wins) without running their ``.pth`` files (so an editable
    install of the checkout is not imported)."""
    here = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    there = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    (Path(there) / "dependencies-of-the-test-interpreter.pth").write_text(
        "".join(f"{path}\n" for path in here if Path(path).is_dir()))


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_runs_a_dry_run_and_describe(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(REPO_ROOT)], check=True)
    wheel = next(dist.glob("medad-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"  # installed into by this interpreter's pip (no pip bootstrapped in the venv)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--force-reinstall",
                    str(wheel)], check=True)
    see_dependencies_of_this_interpreter(venv)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import medad; print(medad.__file__)"], capture_output=True, text=True,
                           cwd=outside, env=env, check=True)
    assert str(venv) in where.stdout, where.stdout  # the wheel, not the checkout
    dry = subprocess.run([str(venv / "bin" / "medad"), "run", "--dry-run", "--no-estimate"], capture_output=True,
                         text=True, cwd=outside, env=env)  # the estimate has tests of its own (it times every detector)
    assert dry.returncode == 0 and "24 jobs: 24 pending" in dry.stdout, dry.stdout + dry.stderr
    described = subprocess.run([str(venv / "bin" / "medad"), "describe", "ganomaly"], capture_output=True, text=True,
                               cwd=outside, env=env)
    assert described.returncode == 0 and "epochs: int >= 1 = 15" in described.stdout
    version = subprocess.run([str(venv / "bin" / "medad"), "--version"], capture_output=True, text=True, env=env)
    assert version.stdout.startswith("medad ")
