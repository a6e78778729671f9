"""The split: near-duplicate groups that cannot chain, and a split that depends on the files alone (not on image size)."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from medad.cli import main
from medad.datasets.splits import (
    MAX_DUPLICATE_GROUP,
    duplicate_groups,
    group_labels,
    near_duplicate_distances,
    near_duplicate_pairs,
)
from medad.registry import DATASETS
from tests import dataset_layouts as layouts

FIXTURES = {  # dataset -> (builder, subsets)
    "head-ct": (lambda root: layouts.head_ct(root), ("default",)),
    "brain-tumor-mri": (layouts.brain_tumor_mri, ("default",)),
    "br35h": (lambda root: layouts.br35h(root, mask_rcnn=True), ("default",)),
    "mias": (layouts.mias, ("full", "patches")),
    "oct": (layouts.oct, ("cnv", "dme", "drusen")),
    "c-nmc": (layouts.cnmc, ("default",)),
    "covidx": (layouts.covidx, ("covid", "pneumonia", "abnormal")),
    "montgomery-shenzhen": (layouts.montgomery_shenzhen, ("montgomery", "shenzhen")),
    "rider": (layouts.rider, ("default",)),
    "covid-ct": (layouts.covid_ct, ("default",)),
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))


def test_complete_linkage_never_chains():
    # a-b and b-c are close, a-c is not: a and b group (closest first), c stays alone
    close = [(0, 1, 3), (1, 2, 5)]
    groups = duplicate_groups(3, close)
    assert groups.labels[0] == groups.labels[1] != groups.labels[2] and groups.sizes() == [2]
    # a clique of four is one group; a fifth image close to only one of them is not pulled in
    clique = [(i, j, 1) for i in range(4) for j in range(i + 1, 4)] + [(3, 4, 1)]
    assert duplicate_groups(5, clique).sizes() == [4]


def test_the_group_cap_refuses_and_counts():
    n = MAX_DUPLICATE_GROUP + 4
    everything = [(i, j, 0) for i in range(n) for j in range(i + 1, n)]
    groups = duplicate_groups(n, everything)
    assert max(groups.sizes()) == MAX_DUPLICATE_GROUP and groups.refused_by_cap > 0


def test_similar_looking_images_do_not_chain_and_table_1_sizes_hold(tmp_path):
    root = layouts.br35h_similar(tmp_path / "br35h")
    dataset = DATASETS.get("br35h")(root=root, image_size=64)
    thumbs = dataset.hash_thumbnails("default", dataset.records())
    chained = Counter(group_labels(len(thumbs), [""] * len(thumbs), near_duplicate_pairs(thumbs, 12)).tolist())
    assert max(chained.values()) > 300  # transitive joining at the old 12 bits: one giant group
    close = near_duplicate_distances(thumbs, dataset.duplicate_distance)
    assert max(duplicate_groups(len(thumbs), close).sizes(), default=1) <= 3
    subset = dataset.load("default")
    normals_in_training = len(subset.train) + len(subset.val)
    assert (normals_in_training, int((subset.test.labels == 0).sum()), int(subset.test.labels.sum())) == (1200, 300, 1500)
    assert subset.split_info["largest_duplicate_group"] <= 3 and subset.split_info["unused"] == 0


def test_a_published_train_image_duplicated_in_the_test_set_is_unused_and_recorded(tmp_path, capsys):
    root = layouts.oct(tmp_path / "data" / "oct")
    test_image = sorted((root / "OCT2017 " / "test" / "NORMAL").glob("*.jpeg"))[0]
    copy = root / "OCT2017 " / "train" / "NORMAL" / "NORMAL-9999999-1.jpeg"
    copy.write_bytes(test_image.read_bytes())
    assert main(["datasets", "check", "oct", "--root", str(root), "--allow-other-counts"]) == 0
    assert "unused 1" in capsys.readouterr().out
    config = tmp_path / "c.yaml"
    config.write_text(f"name: t\nimage_size: 32\ndevice: cpu\ndatasets: [{{name: oct, subsets: [cnv], root: '{root}'}}]\n"
                      "detectors: [{name: 'tests.support.detectors:TemplateDistance', label: t}]\n")
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    splits = pd.read_csv(tmp_path / "r" / "splits.csv")
    assert splits.loc[splits["part"] == "unused", "sample_id"].tolist() == ["train/NORMAL/NORMAL-9999999-1.jpeg"]
    summary = json.loads((tmp_path / "r" / "manifest.json").read_text())["splits"]["oct/cnv"]
    assert summary["unused"] == 1 and summary["duplicate_groups"] == 1 and len(summary["fingerprint"]) == 16


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_the_split_does_not_depend_on_image_size_or_channels(tmp_path, name):
    build, subsets = FIXTURES[name]
    root = build(tmp_path / name)
    for subset in subsets:
        reference = None
        for size, channels in ((32, 1), (64, 1), (128, 1), (64, 3)):
            rows = sorted(DATASETS.get(name)(root=root, image_size=size, channels=channels).load(subset).split_rows())
            reference = reference or rows
            assert rows == reference, f"{name}/{subset} at {size} px, {channels} channel(s)"
        pad = DATASETS.get(name)(root=root, image_size=48, resize_mode="pad").load(subset)
        assert sorted(pad.split_rows()) == reference


def test_val_source_train_trains_on_table_1_sizes_with_an_in_sample_threshold(tmp_path):
    from medad.benchmark.config import load_config
    from medad.reporting.tables import split_cell

    root = layouts.head_ct(tmp_path / "head-ct", n=200)
    carved = DATASETS.get("head-ct")(root=root, image_size=16).load("default")
    exact = DATASETS.get("head-ct")(root=root, image_size=16, val_source="train").load("default")
    assert (len(carved.train), len(carved.val)) == (72, 8)          # 10% of TABLE 1's 80 carved off
    assert len(exact.train) == 80 and exact.val is exact.train and exact.val_in_sample
    assert sorted(exact.test.ids) == sorted(carved.test.ids)           # the test set is the same
    assert {part for _, part, _ in exact.split_rows()} == {"train", "test"}
    study = load_config("study")
    assert all(d.params.get("val_source") == "train" for d in study.datasets)
    assert split_cell("sizes", {"val_source": "carved", "split": {"val_fraction": 0.1}}).text == "test sizes only"
    assert split_cell("sizes", {"val_source": "train", "split": {"val_fraction": 0.0}}).text == "sizes"


def test_in_sample_thresholds_say_so_in_their_note(tmp_path):
    from medad.cli import main

    root = layouts.head_ct(tmp_path / "head-ct", n=40)
    config = tmp_path / "c.yaml"
    config.write_text(f"name: t\nimage_size: 16\ndevice: cpu\ndatasets: [{{name: head-ct, root: '{root}', "
                      "params: {val_source: train}}]\ndetectors: [{name: 'tests.support.detectors:TemplateDistance', "
                      "label: t}]\n")
    assert main(["run", "--config", str(config), "--results", str(tmp_path), "--run-id", "r", "--quiet"]) == 0
    metrics = pd.read_csv(tmp_path / "r" / "metrics.csv")
    notes = metrics.loc[metrics["threshold_policy"] == "val_q95", "note"]
    assert len(notes) and notes.str.contains("in-sample").all()
