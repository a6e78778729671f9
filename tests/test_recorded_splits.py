"""Adding cells to a finished run (``medad run --extend``): the run's recorded split when only the split rule changed,
a refusal naming what changed and who wrote the run when the files changed, and ``--detectors`` without a config."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medad.benchmark.recorded_splits import RecordedUnit, SplitCheck, TodaysSplit, _check_unit
from medad.cli import main
from medad.datasets import cache
from medad.datasets import splits as split_rule
from medad.datasets.splits import split_fingerprint
from medad.registry import DATASETS
from tests import dataset_layouts as layouts
from tests.conftest import write_config

TEMPLATE = "tests.support.detectors:TemplateDistance"
EARLIER_COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDAD_DATA", raising=False)


def head_ct_with_half_turned_copies(root: Path) -> Path:
    """Head-CT's layout, 30 images, and a copy turned half round of each of six normals (ids 030-035): the near-
    duplicate rule of medad since December 2026 groups each with its original, the earlier one (as is and mirrored
    only) did not."""
    layouts.head_ct(root, n=30, nested=False)
    images = root / "head_ct"
    labels = root / "labels.csv"
    lines = labels.read_text().splitlines()
    for k, source in enumerate(range(15, 21)):
        pixels = np.asarray(Image.open(images / f"{source:03d}.png").convert("RGB"))
        layouts.save(images / f"{30 + k:03d}.png", np.ascontiguousarray(pixels[::-1, ::-1]))
        lines.append(f"{30 + k},0")
    labels.write_text("\n".join(lines) + "\n")
    return root


def earlier_identity(root: Path) -> str:
    """The dataset identity as medad computed it before its records had an ``ellipses`` field: the files' paths,
    sizes and modification times and the records without that field (written out here, not taken from medad)."""
    dataset = DATASETS.get("head-ct")(root=root, image_size=16)
    records = dataset.select("default", dataset.records())
    files = [dataset.data_root() / r.path for r in records]
    return cache.fingerprint(dataset.data_root(), files,
                             [{k: v for k, v in asdict(r).items() if k != "ellipses"} for r in records])


def config_for(path: Path, root: Path, label: str) -> Path:
    path.write_text(f"name: t\nimage_size: 16\ndevice: cpu\ndatasets: [{{name: head-ct, root: '{root}'}}]\n"
                    f"detectors: [{{name: '{TEMPLATE}', label: {label}}}]\n")
    return path


def run_as_an_earlier_medad(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A run folder as medad 0.1.0 (commit 0123456789ab) wrote it: its split made by that version's near-duplicate
    rule (images compared as is and mirrored, not turned half round), each job's fingerprint over the identity as it
    computed it, no image digests, no medad version in its sessions, and a merged splits.csv that read the ids as
    numbers ("015" as 15), as medad did then. The image files are the same bytes throughout."""
    root = head_ct_with_half_turned_copies(tmp_path / "data" / "head-ct")
    with monkeypatch.context() as earlier:
        earlier.setattr(split_rule, "TRANSFORMS", split_rule.TRANSFORMS[:3])
        assert main(["run", "--config", str(config_for(tmp_path / "c.yaml", root, "t")), "--results", str(tmp_path),
                     "--run-id", "r", "--quiet", "--reports", str(tmp_path / "rep")]) == 0
    run = tmp_path / "r"
    identity = earlier_identity(root)
    for job in (run / "jobs").iterdir():
        rows = pd.read_csv(job / "split.csv", dtype=str)
        record = json.loads((job / "job.json").read_text())
        record["split"].pop("images_digest", None)
        record["split"]["fingerprint"] = split_fingerprint(list(rows["sample_id"]), list(rows["part"]), identity)
        (job / "job.json").write_text(json.dumps(record))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["versions"]["medad"], manifest["git_commit"] = "0.1.0", EARLIER_COMMIT
    manifest["splits"] = {unit: {k: v for k, v in info.items() if k != "images_digest"}
                          for unit, info in manifest["splits"].items()}
    (run / "manifest.json").write_text(json.dumps(manifest))
    merged = pd.read_csv(run / "splits.csv", dtype=str)
    merged.assign(sample_id=merged["sample_id"].astype(int)).to_csv(run / "splits.csv", index=False)
    return run, root


def parts_of(job: Path) -> set[tuple[str, str]]:
    rows = pd.read_csv(job / "split.csv", dtype=str)
    return set(zip(rows["sample_id"], rows["part"]))


def test_an_earlier_medads_run_is_extended_on_its_recorded_split(tmp_path, monkeypatch, capsys):
    run, root = run_as_an_earlier_medad(tmp_path, monkeypatch)
    recorded = parts_of(run / "jobs" / "head-ct__default__t__seed0")
    today = DATASETS.get("head-ct")(root=root, image_size=16).split("default")
    assert set(zip((r.id for r in today.chosen), today.parts)) != recorded  # this medad's rule splits them otherwise
    capsys.readouterr()
    more = config_for(tmp_path / "more.yaml", root, "t2")
    assert main(["run", "--extend", str(run), "--config", str(more), "--quiet", "--reports", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert "head-ct/default: new cells use the split the run recorded" in err
    assert "the same files: names, sizes and modification times" in err
    assert "since medad 0.1.0 (commit 0123456789ab) wrote the run" in err
    new_job = run / "jobs" / "head-ct__default__t2__seed0"
    assert parts_of(new_job) == recorded
    assert json.loads((new_job / "job.json").read_text())["split"]["split_source"] == "recorded"
    scores = pd.read_csv(run / "scores.csv", dtype={"sample_id": str}).query("part == 'test'")
    assert set(scores.query("detector == 't'")["sample_id"]) == set(scores.query("detector == 't2'")["sample_id"])
    splits = pd.read_csv(run / "splits.csv", dtype={"sample_id": str})
    assert set(zip(splits["sample_id"], splits["part"])) == recorded  # merged again from the jobs: "015", not 15
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["sessions"][-1]["recorded_splits"][0].startswith("head-ct/default: new cells use the split")
    assert "t2" in (tmp_path / "rep" / "r" / "index.html").read_text()


@pytest.mark.parametrize("change", ["a new image", "a relabelled image"])
def test_a_refusal_says_the_files_changed_and_which_medad_wrote_the_run(tmp_path, monkeypatch, capsys, change):
    run, root = run_as_an_earlier_medad(tmp_path, monkeypatch)
    labels = root / "labels.csv"
    if change == "a new image":
        layouts.save(root / "head_ct" / "036.png", layouts.noise(np.random.default_rng(5)))
        labels.write_text(labels.read_text() + "36,0\n")
        expected = "1 image is new (e.g. 036)"
    else:
        labels.write_text(labels.read_text().replace("\n15,0\n", "\n15,1\n"))
        expected = "1 image has another label (e.g. 015)"
    capsys.readouterr()
    more = config_for(tmp_path / "more.yaml", root, "t2")
    assert main(["run", "--extend", str(run), "--config", str(more), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert ("head-ct/default: the dataset's files changed since the run was written by medad 0.1.0 (commit "
            f"0123456789ab): {expected}; new cells would be tested on other images than the run's") in err
    assert not (run / "jobs" / "head-ct__default__t2__seed0").exists()


def unit_split(parts: dict[str, str], digest: str = "", takes_recorded: bool = True) -> TodaysSplit:
    return TodaysSplit({i: (p, int(i.startswith("a"))) for i, p in parts.items()}, ["identity"], digest, takes_recorded)


RECORDED = {"a1": "test", "n1": "train", "n2": "test", "n3": "train"}


def recorded_unit(digest: str = "") -> RecordedUnit:
    rows = {i: (p, int(i.startswith("a"))) for i, p in RECORDED.items()}
    return RecordedUnit({"recorded-fingerprint"}, {digest} if digest else set(), rows)


def test_a_changed_rule_on_a_dataset_without_recorded_splits_is_refused_naming_the_rule_and_the_writer():
    check = SplitCheck()
    today = unit_split({**RECORDED, "n2": "train", "n3": "test"}, takes_recorded=False)
    _check_unit("syn/a", "syn", recorded_unit(), today, "medad 0.1.0 (commit 0123456789ab)", check)
    assert not check.parts and len(check.problems) == 1
    message = str(check.problems[0])
    assert message.startswith("syn/a: its split rule changed since the run was written by medad 0.1.0 (commit "
                              "0123456789ab) (the files are unchanged: the same images by name and label")
    assert "would move 2 of 4 images to another part), and dataset 'syn' cannot take the split the run recorded" in message


def test_image_digests_decide_whether_the_files_changed():
    moved = {**RECORDED, "n2": "train", "n3": "test"}
    same_bytes = SplitCheck()
    _check_unit("d/s", "d", recorded_unit("digest-1"), unit_split(moved, "digest-1"), "medad 0.2.0", same_bytes)
    assert not same_bytes.problems and same_bytes.parts["d/s"] == tuple(sorted(RECORDED.items()))
    assert "the same image files, byte for byte, with the same labels" in same_bytes.notes[0]
    other_bytes = SplitCheck()
    _check_unit("d/s", "d", recorded_unit("digest-1"), unit_split(moved, "digest-2"), "medad 0.2.0", other_bytes)
    assert "the image files' contents differ" in str(other_bytes.problems[0]) and not other_bytes.parts


def test_files_touched_but_byte_identical_are_the_runs_files(tmp_path, capsys):
    """The image digest recorded since this change: new modification times (files unpacked again) change nothing."""
    root = layouts.head_ct(tmp_path / "data" / "head-ct", n=24, nested=False)
    assert main(["run", "--config", str(config_for(tmp_path / "c.yaml", root, "t")), "--results", str(tmp_path),
                 "--run-id", "r", "--quiet", "--reports", str(tmp_path / "rep")]) == 0
    for path in root.rglob("*.png"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    capsys.readouterr()
    more = config_for(tmp_path / "more.yaml", root, "t2")
    assert main(["run", "--extend", str(tmp_path / "r"), "--config", str(more), "--quiet", "--reports",
                 str(tmp_path / "rep")]) == 0
    run = tmp_path / "r"
    assert parts_of(run / "jobs" / "head-ct__default__t2__seed0") == parts_of(run / "jobs" / "head-ct__default__t__seed0")


def test_extend_with_detectors_and_no_config_takes_the_runs_own_datasets(tmp_path, capsys):
    first = write_config(tmp_path / "first.yaml", image_size=16, detectors=[{"name": TEMPLATE, "label": "t"}])
    assert main(["run", "--config", str(first), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    run = tmp_path / "r"
    before = {p: p.stat().st_mtime_ns for p in (run / "jobs").rglob("*") if p.is_file()}
    assert main(["run", "--extend", str(run), "--detectors", "ae", "--set", "detectors.ae.params.epochs=1",
                 "--set", "detectors.ae.params.width=4", "--set", "detectors.ae.params.latent=8", "--quiet",
                 "--reports", str(tmp_path / "rep")]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing of the run trained or scored again
    manifest = json.loads((run / "manifest.json").read_text())
    assert [d["label"] for d in manifest["config"]["detectors"]] == ["t", "ae"]
    assert manifest["config"]["detectors"][1]["params"] == {"epochs": 1, "width": 4, "latent": 8}
    assert manifest["config"]["datasets"] == [{"name": "synthetic", "subsets": ["obvious"], "root": None,
                                               "params": {"n_train": 48, "n_val": 12, "n_test": 24}}]
    metrics = pd.read_csv(run / "metrics.csv")
    assert sorted(metrics.query("metric == 'roc_auc'")[["detector", "seed"]].itertuples(index=False, name=None)) == [
        ("ae", 0), ("t", 0)]
    table3 = pd.read_csv(tmp_path / "rep" / "r" / "tables" / "table3_val_q95.csv", header=[0, 1], index_col=0)
    assert {"t", "ae"} <= set(table3.columns.get_level_values(1))  # the rebuilt report holds both
    capsys.readouterr()
    assert main(["run", "--extend", str(run), "--detectors", "intensityy", "--quiet"]) == 2
    assert "intensityy" in capsys.readouterr().err


def test_extend_with_the_controls_adds_the_shortcut_check_to_a_finished_run(tmp_path, capsys):
    first = write_config(tmp_path / "first.yaml", image_size=16, detectors=[{"name": TEMPLATE, "label": "t"}])
    assert main(["run", "--config", str(first), "--results", str(tmp_path), "--run-id", "r", "--quiet",
                 "--reports", str(tmp_path / "rep")]) == 0
    run = tmp_path / "r"
    assert not (run / "shortcut.csv").is_file() or pd.read_csv(run / "shortcut.csv").empty
    assert "medad run --extend" in (tmp_path / "rep" / "r" / "index.html").read_text()  # the check was not run
    before = {p: p.stat().st_mtime_ns for p in (run / "jobs").rglob("*") if p.is_file()}
    assert main(["run", "--extend", str(run), "--detectors", "intensity,histogram", "--quiet",
                 "--reports", str(tmp_path / "rep")]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing of the run trained or scored again
    shortcut = pd.read_csv(run / "shortcut.csv")
    assert shortcut["detector"].tolist() == ["t"] and set(shortcut["controls"].str.split(";").explode()
                                                         .str.strip().str.split(" ").str[0]) == {"histogram", "intensity"}
    page = (tmp_path / "rep" / "r" / "index.html").read_text()
    assert 'id="shortcut-not-run"' not in page and "better than the controls" in page
