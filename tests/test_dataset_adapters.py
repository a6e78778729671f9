"""Real dataset adapters on tiny fake downloads in each publisher's layout: counts, labels, splits, masks, cache, check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medad.benchmark.job_runner import execute, load_subset
from medad.benchmark.jobs import Job
from medad.cli import main
from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.datasets.splits import SplitPlan, assign_parts, group_labels
from medad.registry import DATASETS
from tests import dataset_layouts as layouts
from tests.conftest import write_config
from tests.support.detectors import TemplateDistance

pytestmark = pytest.mark.xdist_group("test_dataset_adapters")  # its tests share a module fixture: one worker builds it

SIZE = 32


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDAD_NO_CACHE", raising=False)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    """One fake download per dataset, several with an extra nesting level."""
    base = tmp_path_factory.mktemp("data")
    layouts.head_ct(base / "head-ct" / "head_ct_archive")
    layouts.brain_tumor_mri(base / "brain-tumor-mri")
    layouts.br35h(base / "br35h" / "Br35H", mask_rcnn=True)
    layouts.mias(base / "mias")
    layouts.oct(base / "oct" / "oct2017")
    layouts.cnmc(base / "c-nmc")
    layouts.covidx(base / "covidx")
    layouts.montgomery_shenzhen(base / "montgomery-shenzhen")
    layouts.rider(base / "rider")
    layouts.covid_ct(base / "covid-ct" / "COVID-CT-master")
    return base


def load(downloads, name: str, subset: str, **params):
    return DATASETS.get(name)(root=downloads / name, image_size=SIZE, **params).load(subset)


def assert_well_formed(subset, channels: int = 1) -> None:
    """Parts disjoint, train/val normal, uint8 images of the right shape with real content."""
    parts = [p for p in (subset.train, subset.val, subset.test, subset.anomaly_pool) if p is not None]
    ids = [i for p in parts for i in p.ids]
    assert len(ids) == len(set(ids))
    for part in parts:
        assert part.images.dtype == torch.uint8 and tuple(part.images.shape[1:]) == (channels, SIZE, SIZE)
        assert int(part.images.max()) > 0
    assert (subset.train.labels == 0).all() and set(subset.test.labels) == {0, 1}


# ---- decoding --------------------------------------------------------------------------------


def test_read_image_decodes_every_publisher_format_by_content(tmp_path):
    rng = np.random.default_rng(0)
    grey = layouts.noise(rng, 12, 10)
    twelve_bit = (grey.astype(np.uint16) * 16 + 15)
    cases = {
        "a.pgm": layouts.write_pgm(tmp_path / "a.pgm", grey),
        "b.pgm": layouts.write_pgm(tmp_path / "b.pgm", twelve_bit, maxval=4095),
        "c.png": layouts.save(tmp_path / "c.png", twelve_bit),
        "d.bmp": layouts.save(tmp_path / "d.bmp", np.dstack([grey] * 3)),
        "e.tif": layouts.save(tmp_path / "e.tif", twelve_bit),
        "f.jpg": layouts.save(tmp_path / "f.jpg", grey, fmt="PNG"),   # PNG content under .jpg
        "g.png": layouts.save(tmp_path / "g.png", grey, mode="P"),
    }
    for name, path in cases.items():
        pixels = io.read_image(path)
        assert pixels.dtype == np.float32 and pixels.shape[:2] == (12, 10), name
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0 and pixels.max() > 0.5, name
    # 12 bits used in a 16-bit PNG: scaled by 4095, so the brightest pixel is white
    assert io.read_image(cases["c.png"]).max() == pytest.approx(twelve_bit.max() / 4095)
    np.testing.assert_allclose(io.read_image(cases["a.pgm"]), grey / 255.0, atol=1e-6)
    rgba = np.dstack([np.full((4, 4), 200, np.uint8)] * 3 + [np.full((4, 4), 128, np.uint8)])
    composited = io.read_image(layouts.save(tmp_path / "h.png", rgba))
    np.testing.assert_allclose(composited, 200 / 255 * 128 / 255, atol=1e-6)  # alpha composited on black


def test_dicom_applies_rescale_slope_intercept_and_window(tmp_path):
    import pydicom

    layouts.rider(tmp_path, n_patients=1, per_patient=1)
    path = next(tmp_path.rglob("*.dcm"))
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.float64)
    expected = np.clip((stored * 2.0 - 100.0 - (1900.0 - 3800.0 / 2)) / 3800.0, 0, 1)  # slope 2, intercept -100, window 1900/3800
    np.testing.assert_allclose(io.read_image(path), expected, atol=1e-5)
    low, high = np.percentile(stored * 2.0 - 100.0, [1, 99])
    np.testing.assert_allclose(io.read_image(path, window="percentile"),
                               np.clip((stored * 2.0 - 100.0 - low) / (high - low), 0, 1), atol=1e-5)


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    good = layouts.save(tmp_path / "ok.png", layouts.noise(np.random.default_rng(1), 64, 64))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    for path in (truncated, garbage):
        with pytest.raises(DatasetError, match=path.name):
            io.read_image(path)


# ---- adapters --------------------------------------------------------------------------------


def test_head_ct_labels_study_ratio_and_nesting(downloads):
    subset = load(downloads, "head-ct", "default")
    assert_well_formed(subset)
    labels = dict(zip(subset.test.ids, subset.test.labels))
    assert sorted(i for i, label in labels.items() if label == 1) == [f"{i:03d}" for i in range(10)]
    assert sum(1 for label in labels.values() if label == 0) == 2        # 20 / 100 of the 10 normals
    assert len(subset.train) + len(subset.val) == 8
    flat = downloads.parent / "flat"
    layouts.head_ct(flat / "head-ct", n=6, nested=False)                   # a mirror without head_ct/head_ct
    assert DATASETS.get("head-ct")(root=flat / "head-ct", image_size=SIZE).records()[0].path == "head_ct/000.png"


def test_head_ct_missing_file_is_a_clear_error(tmp_path):
    layouts.head_ct(tmp_path / "head-ct", n=6)
    (tmp_path / "head-ct" / "head_ct" / "head_ct" / "004.png").unlink()
    with pytest.raises(DatasetError, match=r"lists id 4 but head_ct/head_ct/004.png is missing"):
        DATASETS.get("head-ct")(root=tmp_path / "head-ct", image_size=SIZE).load("default")


def test_brain_tumor_mri_reads_one_copy_and_keeps_duplicates_together(downloads):
    dataset = DATASETS.get("brain-tumor-mri")(root=downloads / "brain-tumor-mri", image_size=SIZE)
    records = dataset.records()
    assert not any("brain_tumor_dataset" in r.path or "DS_Store" in r.path for r in records)
    assert sum(r.label for r in records) == 8 and sum(1 - r.label for r in records) == 14
    subset = dataset.load("default")
    assert_well_formed(subset)
    assert int(subset.split_info["near_duplicate_pairs"]) >= 2
    copies = {"no/N1.JPG", "no/N1 flipped.png", "no/N1 bright.png"}
    sides = {("test" if i in subset.test.ids else "train") for i in copies}
    assert len(sides) == 1  # the flipped and contrast-changed copies stay with their original


def test_br35h_ignores_pred_and_matches_capitalised_names(downloads):
    subset = load(downloads, "br35h", "default", channels=3)
    assert_well_formed(subset, channels=3)
    ids = subset.train.ids + (subset.val.ids if subset.val else []) + subset.test.ids
    assert "no/No2.jpg" in ids and not any(i.startswith("pred/") for i in ids)
    assert int((subset.test.labels == 1).sum()) == 10


def rasterise_via_region(shape: dict, height: int, width: int) -> np.ndarray:
    """One VIA region drawn without medad's code: pixel (r, c) is the point (x = c, y = r), edges included."""
    from matplotlib.path import Path as PlanePath

    rows, cols = np.mgrid[:height, :width]
    points = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(float)
    name = shape["name"]
    if name == "polygon":
        start = np.stack([shape["all_points_x"], shape["all_points_y"]], axis=1).astype(float)
        inside = PlanePath(start).contains_points(points)   # says nothing reliable about points on an edge
        edge = np.roll(start, -1, axis=0) - start
        along = np.clip(((points[:, None] - start) * edge).sum(-1) / (edge * edge).sum(-1), 0.0, 1.0)
        on_edge = (np.abs(points[:, None] - (start + along[..., None] * edge)).max(-1) < 1e-9).any(axis=1)
        return (inside | on_edge).reshape(height, width)
    if name == "ellipse":   # the canvas draws centre + R(theta) (rx cos t, ry sin t): undo the rotation
        cos, sin = np.cos(shape["theta"]), np.sin(shape["theta"])
        local = (points - [shape["cx"], shape["cy"]]) @ np.array([[cos, -sin], [sin, cos]])
        return (((local / [shape["rx"], shape["ry"]]) ** 2).sum(axis=1) <= 1).reshape(height, width)
    if name == "circle":
        return (np.hypot(*(points - [shape["cx"], shape["cy"]]).T) <= shape["r"]).reshape(height, width)
    assert name == "rect"
    mask = np.zeros((height, width), dtype=bool)
    mask[int(np.ceil(shape["y"])):int(np.floor(shape["y"] + shape["height"])) + 1,
         int(np.ceil(shape["x"])):int(np.floor(shape["x"] + shape["width"])) + 1] = True
    return mask


def test_br35h_every_via_shape_becomes_the_tumour_mask(downloads):
    dataset = DATASETS.get("br35h")(root=downloads / "br35h", image_size=SIZE)
    assert not any("mask-rcnn" in r.path.lower() for r in dataset.records())   # the byte copies are not indexed
    assert len(dataset.records()) == 20
    subset = dataset.load("default")
    test = subset.test
    assert test.masks is not None and subset.train.masks is not None and subset.train.mask_known.all()
    assert int(subset.train.masks.sum()) == 0
    root = downloads / "br35h" / "Br35H"
    shapes_seen = set()
    for i in range(7):   # outlined in TRAIN / VAL / TEST by fillable shapes: the union, on the source grid, resized
        k = test.ids.index(f"yes/y{i}.jpg")
        height, width = np.asarray(Image.open(root / "yes" / f"y{i}.jpg")).shape[:2]
        expected = np.zeros((height, width), dtype=bool)
        for shape in layouts.br35h_regions(i):
            region = rasterise_via_region(shape, height, width)
            assert region.any() and not region.all()
            expected |= region
            shapes_seen.add(shape["name"])
        rows, cols = np.arange(SIZE) * height // SIZE, np.arange(SIZE) * width // SIZE   # nearest-neighbour resizing
        assert test.mask_known[k]
        np.testing.assert_array_equal(test.masks[k].numpy().astype(bool), expected[np.ix_(rows, cols)], err_msg=f"y{i}")
    assert shapes_seen == {"polygon", "ellipse", "circle", "rect"}
    for name in ("yes/y7.jpg", "yes/y8.jpg", "yes/y9.jpg"):   # a polyline among its regions; nobody outlined
        k = test.ids.index(name)
        assert not test.mask_known[k] and int(test.masks[k].sum()) == 0
    normals = test.labels == 0
    assert normals.any() and test.mask_known[normals].all() and int(test.masks[torch.from_numpy(normals)].sum()) == 0
    assert list(test.subset(np.array([test.ids.index("yes/y9.jpg")])).mask_known) == [False]
    report = dataset.check(strict_counts=False)
    assert "anomaly masks: 7 of 10 anomalous images annotated; pixel metrics use only those and the normals" in report.lines
    assert ("VIA regions: 5 polygon, 3 circle, 3 ellipse, 1 polyline, 1 rect over 8 images; 1 image with a region of a "
            "shape that outlines no area or is unknown (polyline 1), so their masks are unknown, not partial: yes/y7.jpg"
            ) in report.lines
    assert report.ok and not any("unexpected file" in line for line in report.lines)


def test_via_ellipse_turns_by_theta_from_x_towards_y():
    """A long ellipse turned by a quarter turn lies along the rows; the sign of theta tilts it like VIA's canvas."""
    upright = io.ellipse_mask((21, 21), ((10.0, 10.0, 8.0, 2.0, np.pi / 2),))
    assert upright[2:19, 10].all() and not upright[10, [4, 16]].any()
    tilted = io.ellipse_mask((21, 21), ((10.0, 10.0, 8.0, 1.0, np.pi / 4),))   # +x towards +y: down and right
    assert tilted[15, 15] and tilted[5, 5] and not tilted[5, 15] and not tilted[15, 5]


def test_br35h_without_mask_rcnn_has_no_masks_and_bad_annotations_name_the_file(tmp_path):
    layouts.br35h(tmp_path / "br35h", n=6)
    plain = DATASETS.get("br35h")(root=tmp_path / "br35h", image_size=SIZE).load("default")
    assert plain.test.masks is None and plain.test.mask_known is None
    layouts.br35h_mask_rcnn(tmp_path / "br35h", {"TRAIN": range(2)})
    source = tmp_path / "br35h" / "Br35H-Mask-RCNN" / "TRAIN" / "annotations_train.json"
    entries = json.loads(source.read_text())
    entries["y77.jpg123"] = {"filename": "y77.jpg", "size": 123, "regions": [], "file_attributes": {}}
    source.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"annotations_train.json outlines 'y77.jpg', which is not in"):
        DATASETS.get("br35h")(root=tmp_path / "br35h", image_size=SIZE).records()
    del entries["y77.jpg123"]
    y0 = next(key for key in entries if entries[key]["filename"] == "y0.jpg")
    entries[y0]["regions"][0]["shape_attributes"]["all_points_y"] = [1, 1]   # 4 x values, 2 y values
    source.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"annotations_train.json: entry 'y0.jpg\d+' has a polygon whose all_points_x"):
        DATASETS.get("br35h")(root=tmp_path / "br35h", image_size=SIZE).records()
    entries[y0]["regions"] = [{"shape_attributes": {"name": "ellipse", "cx": 5, "cy": 6, "rx": 0, "ry": 3, "theta": 0},
                               "region_attributes": {}}]
    source.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"annotations_train.json: entry 'y0.jpg\d+' has a region of shape 'ellipse' "
                                           r"whose size is not positive"):
        DATASETS.get("br35h")(root=tmp_path / "br35h", image_size=SIZE).records()
    entries[y0]["regions"][0]["shape_attributes"]["theta"] = None
    source.write_text(json.dumps(entries))
    with pytest.raises(DatasetError, match=r"has a region of shape 'ellipse' whose cx, cy, rx, ry, theta are not all finite"):
        DATASETS.get("br35h")(root=tmp_path / "br35h", image_size=SIZE).records()


def test_a_via_ellipse_without_theta_is_axis_aligned(tmp_path):
    """VIA 1.x and early 2.0 exports write no theta (their ellipses cannot be turned): theta 0, rx along x."""
    from medad.datasets.via import read_via

    export = {"y0.jpg123": {"filename": "y0.jpg", "size": 123, "file_attributes": {}, "regions": {
        "0": {"shape_attributes": {"name": "ellipse", "cx": 10, "cy": 6, "rx": 8, "ry": 2}, "region_attributes": {}}}}}
    (tmp_path / "via1.json").write_text(json.dumps(export))
    outlines = read_via(tmp_path / "via1.json")["y0.jpg"]
    assert outlines.ellipses == {(6.0, 10.0, 8.0, 2.0, 0.0)} and outlines.fillable()
    mask = io.ellipse_mask((13, 21), tuple(outlines.ellipses))
    assert mask[6, 2:19].all() and not mask[6, [1, 19]].any() and mask[4:9, 10].all() and not mask[[3, 9], 10].any()


class IntensityMaps(TemplateDistance):
    """Pixel maps = grey level: fixed by the image alone, so a test can recompute the pixel metrics."""

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=1)


def test_pixel_metrics_cover_only_images_with_known_masks(downloads):
    from sklearn.metrics import roc_auc_score

    job = Job(dataset="br35h", subset="default", detector="maps", detector_name=f"{__name__}:IntensityMaps", seed=0,
              image_size=SIZE, channels=1, device="cpu", score_batch_size=8, save_checkpoints=False,
              dataset_root=str(downloads / "br35h"))
    _, tables, _ = execute(job, "r")
    metrics = tables["metrics"].set_index("metric")
    test = load_subset(job).test
    known = test.mask_known
    assert 0 < known.sum() < len(test)
    assert metrics.loc["pixel_roc_auc", "note"] == f"pixel metrics over {known.sum()} of {len(test)} test images with masks"
    maps = test.float_images().mean(dim=1).numpy()
    masks = test.masks.numpy()
    expected = roc_auc_score(masks[known].ravel(), maps[known].ravel())
    assert metrics.loc["pixel_roc_auc", "value"] == pytest.approx(expected)
    assert expected != pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))   # unknown masks would change it


def test_mias_discs_patches_and_patient_pairs(downloads):
    full = DATASETS.get("mias")(root=downloads / "mias", image_size=64).load("full")
    assert full.test.masks is not None and full.train.masks is not None and int(full.train.masks.sum()) == 0
    index = full.test.ids.index("mdb002")                   # x 522, y 280 (from the bottom), r 69
    mask = full.test.masks[index]
    assert mask[(1023 - 280) * 64 // 1024, 522 * 64 // 1024] == 1 and mask[5, 5] == 0
    assert int(full.test.masks[full.test.ids.index("mdb059")].sum()) == 0   # no coordinates in the table:
    assert not full.test.mask_known[full.test.ids.index("mdb059")]          # its mask is unknown, not empty
    assert full.test.mask_known[index] and full.test.mask_known[full.test.ids.index("mdb001")]
    assert sorted(full.test.ids[i] for i in np.flatnonzero(full.test.labels)) == ["mdb001", "mdb002", "mdb005", "mdb059"]
    patches = DATASETS.get("mias")(root=downloads / "mias", image_size=SIZE).load("patches")
    assert_well_formed(patches)
    assert sorted(patches.test.ids[i] for i in np.flatnonzero(patches.test.labels)) == [
        "mdb001-patch0", "mdb002-patch0", "mdb005-patch0", "mdb005-patch1"]
    centre = patches.test.masks[patches.test.ids.index("mdb002-patch0")]
    assert centre[SIZE // 2, SIZE // 2] == 1
    assert int(patches.train.masks.sum()) == 0
    # the two normal images of one woman (mdb007 + mdb008, ...) stay on one side
    train_patients = {(int(i[3:6]) + 1) // 2 for i in full.train.ids + (full.val.ids if full.val else [])}
    test_normal_patients = {(int(i[3:6]) + 1) // 2 for i, label in zip(full.test.ids, full.test.labels) if label == 0}
    assert not train_patients & test_normal_patients


def test_mias_full_resolution_release_is_refused(tmp_path):
    (tmp_path / "mias" / "MIASDBv1.21").mkdir(parents=True)
    (tmp_path / "mias" / "00README.pdf").write_bytes(b"%PDF")
    with pytest.raises(DatasetError, match="full-resolution MIAS v1.21"):
        DATASETS.get("mias")(root=tmp_path / "mias", image_size=SIZE).load("full")


def test_oct_keeps_the_publisher_split_and_decodes_normals_once(downloads, monkeypatch):
    calls = []
    real = io.read_image
    monkeypatch.setattr(io, "read_image", lambda path, *a, **k: calls.append(path) or real(path, *a, **k))
    subsets = {name: load(downloads, "oct", name) for name in ("cnv", "dme", "drusen")}
    # train/NORMAL + test/* decoded once at the job's size, and once as the fixed-size thumbnails of the dedupe
    assert len(calls) == 2 * (12 + 4 * 3)
    for name, subset in subsets.items():
        assert_well_formed(subset)
        assert all(i.startswith("train/NORMAL/") for i in subset.train.ids + (subset.val.ids if subset.val else []))
        anomalies = [i for i, label in zip(subset.test.ids, subset.test.labels) if label == 1]
        assert len(anomalies) == 3 and all(i.startswith(f"test/{name.upper()}/") for i in anomalies)
        train_patients = {i.split("-")[-2] for i in subset.train.ids}
        assert not train_patients & {i.split("-")[-2] for i in subset.test.ids}


def test_cnmc_train_hem_test_prelim_and_colour(downloads):
    subset = load(downloads, "c-nmc", "default", channels=3)
    assert_well_formed(subset, channels=3)
    assert all("/hem/" in i for i in subset.train.ids)
    assert len(subset.train) + len(subset.val) == 9 and len(subset.test) == 6 and int(subset.test.labels.sum()) == 3
    assert not any("final_phase" in i for i in subset.test.ids)
    assert (subset.test.images[:, 0] != subset.test.images[:, 1]).any()   # stain colour kept


def test_covidx_parses_quirky_lines_holds_out_a_pool_and_refuses_binary_negative(downloads, tmp_path):
    dataset = DATASETS.get("covidx")(root=downloads / "covidx", image_size=SIZE, n_anomaly_pool=4)
    groups = {r.group for r in dataset.records()}
    assert "patient:COVID train0" in groups              # SIRM ids hold a space
    subset = dataset.load("covid")
    assert_well_formed(subset)
    assert len(subset.anomaly_pool) == 4 and (subset.anomaly_pool.labels == 1).all()
    assert all(i.startswith("train/train-COVID-19") for i in subset.anomaly_pool.ids)
    assert all("pneumonia" not in i for i in subset.test.ids)
    layouts.covidx(tmp_path / "binary", binary=True)
    with pytest.raises(DatasetError, match="not a normal class"):
        DATASETS.get("covidx")(root=tmp_path / "binary", image_size=SIZE).load("covid")
    opted = DATASETS.get("covidx")(root=tmp_path / "binary", image_size=SIZE, negative_as_normal=True).load("covid")
    assert int(opted.test.labels.sum()) == 3


def test_montgomery_lung_masks_and_nested_shenzhen(downloads, tmp_path):
    montgomery = load(downloads, "montgomery-shenzhen", "montgomery")
    assert_well_formed(montgomery)
    roi = montgomery.test.roi_masks
    assert roi is not None and (roi[:, SIZE // 2, 6] == 1).all() and (roi[:, SIZE // 2, 25] == 1).all()
    assert (roi[:, SIZE // 2, SIZE // 2] == 0).all()           # left OR right lung, nothing between
    shenzhen = load(downloads, "montgomery-shenzhen", "shenzhen")
    assert all(i.startswith("shenzhen/CHNCXR_") for i in shenzhen.test.ids) and shenzhen.test.roi_masks is None
    both = load(downloads, "montgomery-shenzhen", "both", require_lung_mask=True)
    assert both.test.roi_masks is not None and all(i.startswith("montgomery/") for i in both.test.ids)
    assert montgomery.anomaly_pool is not None and len(montgomery.anomaly_pool) == 2
    layouts.montgomery_shenzhen(tmp_path / "ms")
    import shutil
    shutil.rmtree(tmp_path / "ms" / "ChinaSet_AllFiles")
    with pytest.raises(DatasetError, match="ChinaSet_AllFiles"):
        DATASETS.get("montgomery-shenzhen")(root=tmp_path / "ms", image_size=SIZE).load("shenzhen")


def test_rider_manifest_by_path_or_uid_and_patient_grouping(downloads, tmp_path):
    subset = load(downloads, "rider", "default")
    assert_well_formed(subset)
    assert int(subset.test.labels.sum()) == 6 and len(subset.train) + len(subset.test) + len(subset.val or []) == 16

    def patient(i: str) -> str:
        return i.split("/")[1]

    normals_test = {patient(i) for i, label in zip(subset.test.ids, subset.test.labels) if label == 0}
    assert not normals_test & {patient(i) for i in subset.train.ids}
    layouts.rider(tmp_path / "rider", n_patients=2, per_patient=3, by_uid=True)
    by_uid = DATASETS.get("rider")(root=tmp_path / "rider", image_size=SIZE).records()
    assert len(by_uid) == 6 and all(r.path.endswith(".dcm") and r.group.startswith("patient:RIDER") for r in by_uid)
    (tmp_path / "rider" / "rider_slices.csv").unlink()
    with pytest.raises(DatasetError, match="rider_slices.csv"):
        DATASETS.get("rider")(root=tmp_path / "rider", image_size=SIZE).load("default")


def test_covid_ct_official_split_and_verbatim_names(downloads):
    subset = load(downloads, "covid-ct", "default", n_anomaly_pool=3)
    assert_well_formed(subset)
    assert any("%" in i for i in subset.test.ids)
    assert len(subset.test) == 3 + 3 and int(subset.test.labels.sum()) == 3
    assert len(subset.train) == 6 and len(subset.val) == 3 and len(subset.anomaly_pool) == 3
    assert all("/CT_COVID/" in i for i in subset.anomaly_pool.ids)


# ---- splits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("normals,anomalies,test_normals", [(100, 100, 20), (98, 155, 18), (1500, 1500, 300), (207, 115, 40)])
def test_study_split_sizes_match_table_1(normals, anomalies, test_normals):
    labels = np.array([0] * normals + [1] * anomalies)
    plan = SplitPlan(seed=0, test_normal_fraction=test_normals / normals, val_fraction=0.1)
    parts = assign_parts(labels, np.arange(len(labels)), [""] * len(labels), plan)
    counts = pd.Series(parts).groupby(labels).value_counts()
    assert counts[(0, "test")] == test_normals and counts[(1, "test")] == anomalies
    assert counts[(0, "train")] + counts[(0, "val")] == normals - test_normals


def test_head_ct_full_size_layout_gives_table_1_and_passes_check(tmp_path, capsys):
    layouts.head_ct(tmp_path / "head-ct", n=200)
    subset = DATASETS.get("head-ct")(root=tmp_path / "head-ct", image_size=16).load("default")
    assert len(subset.train) + len(subset.val) == 80 and len(subset.test) == 120 and int(subset.test.labels.sum()) == 100
    assert main(["datasets", "check", "head-ct", "--data-root", str(tmp_path)]) == 0
    assert "counts match the known variant: Kaggle" in capsys.readouterr().out


def test_splits_are_seeded_and_group_disjoint():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    keys = [f"p{i // 3}" for i in range(200)]
    groups = group_labels(200, keys)
    first = assign_parts(labels, groups, [""] * 200, SplitPlan(seed=1, n_anomaly_pool=10))
    assert first == assign_parts(labels, groups, [""] * 200, SplitPlan(seed=1, n_anomaly_pool=10))
    assert first != assign_parts(labels, groups, [""] * 200, SplitPlan(seed=2, n_anomaly_pool=10))
    sides = {}
    for key, part in zip(keys, first):
        sides.setdefault(key, set()).add("test" if part == "test" else "other")
    assert all(len(s) == 1 for s in sides.values())                       # strict: no patient on both sides


# ---- cache -----------------------------------------------------------------------------------


def test_second_load_hits_the_cache_and_a_changed_file_rebuilds(tmp_path, monkeypatch):
    layouts.br35h(tmp_path / "br35h", n=6)
    calls = []
    real = io.read_image
    monkeypatch.setattr(io, "read_image", lambda path, *a, **k: calls.append(path) or real(path, *a, **k))

    def build():
        return DATASETS.get("br35h")(root=tmp_path / "br35h", image_size=SIZE).load("default")

    first = build()  # 12 files, decoded at the job's size and as the dedupe's fixed-size thumbnails
    assert len(calls) == 24
    second = build()
    assert len(calls) == 24 and torch.equal(first.test.images, second.test.images)
    assert first.split_rows() == second.split_rows()
    changed = tmp_path / "br35h" / "yes" / "y0.jpg"
    Image.fromarray(np.full((24, 24), 255, np.uint8)).save(changed, format="JPEG")
    third = build()
    assert len(calls) == 48
    assert int(third.test.images[third.test.ids.index("yes/y0.jpg")].min()) > 250
    # one entry per decode (images, thumbnails): the stale ones are gone
    assert len(list((tmp_path / "cache" / "br35h" / "default").glob("*.npz"))) == 2
    monkeypatch.setenv("MEDAD_NO_CACHE", "1")
    build()
    assert len(calls) == 72


# ---- medad datasets check, and a run -------------------------------------------------------


def test_check_reports_counts_unreadable_and_unexpected_files(downloads, tmp_path, capsys):
    assert main(["datasets", "check", "br35h", "--data-root", str(downloads)]) == 1
    out = capsys.readouterr().out
    assert "images per class: no 10, yes 10" in out and "counts differ" in out and "NOT OK" in out
    assert main(["datasets", "check", "br35h", "--data-root", str(downloads), "--allow-other-counts"]) == 0
    capsys.readouterr()
    assert main(["datasets", "check", "brain-tumor-mri", "--data-root", str(downloads), "--allow-other-counts"]) == 0
    out = capsys.readouterr().out
    assert ("default: split train 10, val 1, test 11; near-duplicate groups (dHash <= 8 of 256 bits, as is, mirrored or "
            "turned half round, complete linkage): 1 holding 3 images, the largest 3 (no/N1 bright.png and 2 near copies); "
            "exact copies: none; near copies: 2 pairs mirrored or turned (e.g. no/N1 bright.png ~ no/N1 flipped.png), 1 pair "
            "re-encoded, resized, cropped or contrast-changed (e.g. no/N1 bright.png ~ no/N1.JPG); unused 0") in out
    layouts.br35h(tmp_path / "br35h", n=4)
    (tmp_path / "br35h" / "no" / "no1.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "br35h" / "yes" / "notes.doc").write_bytes(b"x")
    assert main(["datasets", "check", "br35h", "--data-root", str(tmp_path), "--allow-other-counts"]) == 1
    out = capsys.readouterr().out
    assert "cannot decode image" in out and "no1.jpg" in out and "unexpected file(s) not read: yes/notes.doc" in out
    assert main(["datasets", "check", "oct", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "does not exist" in out and "Fix:" in out and "OCT2017 /train/" in out


def test_wrong_layout_says_what_was_expected_where(tmp_path, capsys):
    (tmp_path / "covid-ct" / "stuff").mkdir(parents=True)
    (tmp_path / "covid-ct" / "COVID-CT.zip").write_bytes(b"PK")
    assert main(["datasets", "check", "covid-ct", "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "extract them first" in out and "Images-processed/CT_COVID/" in out and "Found: COVID-CT.zip, stuff/" in out


def test_missing_dataset_fails_its_job_with_the_message(tmp_path):
    job = Job(dataset="oct", subset="cnv", detector="x", detector_name="x", seed=0, image_size=SIZE, channels=1,
              device="cpu", score_batch_size=8, save_checkpoints=False, dataset_root=str(tmp_path / "oct"))
    with pytest.raises(DatasetError, match="oct: data folder .* does not exist"):
        load_subset(job)


def test_one_epoch_run_on_every_fixture_after_the_preflight_refuses_a_missing_dataset(downloads, tmp_path):
    import yaml

    # a one-pass detector: this checks the dataset -> job -> run folder path, not training
    config = write_config(tmp_path / "c.yaml", detectors=[{"name": "tests.support.detectors:TemplateDistance", "label": "template"}])
    raw = yaml.safe_load(config.read_text())
    fixtures = {"head-ct": "default", "brain-tumor-mri": "default", "br35h": "default", "mias": "patches", "oct": "cnv",
                "c-nmc": "default", "covidx": "covid", "montgomery-shenzhen": "montgomery", "rider": "default"}
    raw["datasets"] = [{"name": name, "subsets": [subset]} for name, subset in fixtures.items()]
    raw["datasets"].append({"name": "covid-ct", "root": str(tmp_path / "nothing")})
    config.write_text(yaml.safe_dump(raw))
    arguments = ["run", "--config", str(config), "--data-root", str(downloads), "--results", str(tmp_path),
                 "--run-id", "r", "--quiet", "--no-cache"]
    assert main(arguments) == 2               # the pre-flight check names the missing root; nothing is run
    assert not (tmp_path / "r").exists()
    raw["datasets"].pop()
    config.write_text(yaml.safe_dump(raw))
    assert main(arguments) == 0
    jobs = pd.read_csv(tmp_path / "r" / "jobs.csv").set_index("dataset")
    assert (jobs.loc[list(fixtures), "status"] == "done").all(), jobs["error"].dropna().to_dict()
    splits = pd.read_csv(tmp_path / "r" / "splits.csv")
    head = splits[splits["dataset"] == "head-ct"]
    assert set(head["part"]) == {"train", "val", "test"} and len(head) == 20
    assert set(splits[splits["dataset"] == "covidx"]["part"]) >= {"train", "test", "anomaly_pool"}
    assert not (tmp_path / "cache").exists()   # --no-cache: nothing written
