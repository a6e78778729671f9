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


def test_copies_flips_half_turns_re_encodes_and_crops_group_and_different_slices_do_not(tmp_path):
    root, names = layouts.copies_and_slices(tmp_path / "br35h")
    dataset = DATASETS.get("br35h")(root=root, image_size=64)
    records = dataset.records()
    ids = [r.id for r in records]
    close = near_duplicate_distances(dataset.hash_thumbnails("default", records), dataset.duplicate_distance)
    labels = duplicate_groups(len(records), close).labels
    family = {int(labels[ids.index(name)]) for name in names["family"]}
    assert len(family) == 1, {name: int(labels[ids.index(name)]) for name in names["family"]}
    distinct = [int(labels[ids.index(name)]) for name in names["distinct"]]
    assert len(set(distinct)) == len(distinct) and family.isdisjoint(distinct)
    info = dataset.split("default").info
    assert (info["duplicate_groups"], info["largest_duplicate_group"]) == (1, 7)


def test_the_check_counts_exact_copies_apart_from_near_copies_and_names_them(tmp_path, capsys):
    root, _ = layouts.copies_and_slices(tmp_path / "br35h")
    info = DATASETS.get("br35h")(root=root, image_size=64).split("default").info
    # 7 images, 21 pairs: y0, y1 (its bytes), y2 (its pixels as PNG) are 3 exact pairs, 1 byte-identical; the mirror
    # image and the half turn are close to the other 5 and to each other only transformed (11); the JPEG re-save
    # and the crop are close as is to y0-y2 and each other (7)
    counts = {key: info[key] for key in ("exact_copy_pairs", "byte_identical_pairs", "flipped_or_rotated_pairs", "near_copy_pairs")}
    assert counts == {"exact_copy_pairs": 3, "byte_identical_pairs": 1, "flipped_or_rotated_pairs": 11, "near_copy_pairs": 7}
    assert info["example_exact"] == ["yes/y0.jpg", "yes/y1.jpg"]
    assert main(["datasets", "check", "br35h", "--root", str(root), "--allow-other-counts"]) == 0
    out = capsys.readouterr().out
    assert "1 holding 7 images, the largest 7 (yes/y0.jpg and 6 near copies)" in out
    assert "exact copies: 3 pairs, 1 byte-identical, the others the same pixels in different files (e.g. yes/y0.jpg = yes/y1.jpg)" in out
    assert "near copies: 11 pairs mirrored or turned" in out and "7 pairs re-encoded, resized, cropped" in out
    assert "mass copies" not in out


def test_the_cap_warning_says_what_it_found(tmp_path, monkeypatch):
    import functools

    from medad.datasets import files

    root, _ = layouts.copies_and_slices(tmp_path / "br35h")
    monkeypatch.setattr(files, "MAX_DUPLICATE_GROUP", 4)
    monkeypatch.setattr(files, "duplicate_groups", functools.partial(duplicate_groups, max_group=4))
    with pytest.warns(UserWarning, match=r"refused at the cap of 4 images a group: the download holds more than 4 "
                                         r"mutual near copies of one image \(e\.g\. yes/y0\.jpg and 3 near copies\)"):
        info = DATASETS.get("br35h")(root=root, image_size=64).split("default").info
    assert info["largest_duplicate_group"] == 4 and info["duplicate_merges_refused_by_cap"] > 0
