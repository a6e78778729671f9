"""Hostile or damaged downloads: label files that climb out of the root, links out of it, decompression bombs,
label files in other encodings, file names that are not UTF-8. Each is refused with the file (and line) named."""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.registry import DATASETS
from tests import dataset_layouts as layouts

SIZE = 32


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAD_CACHE", str(tmp_path / "cache"))


def load(root: Path, name: str, subset: str = "default"):
    return DATASETS.get(name)(root=root, image_size=SIZE).load(subset)


def plant_outside(tmp_path: Path) -> Path:
    """An image outside every dataset root (what a traversal entry would reach)."""
    return layouts.save(tmp_path / "outside.png", layouts.noise(np.random.default_rng(0)))


def replace_line(path: Path, line_number: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_number - 1] = new
    path.write_text("\n".join(lines) + "\n")


# --- label-file entries that leave the root (one test per adapter that reads paths from a file) -----
@pytest.mark.parametrize("entry", ["../../outside.png", "ABSOLUTE"])
def test_covidx_refuses_entries_outside_the_root(tmp_path, entry):
    plant_outside(tmp_path)
    root = layouts.covidx(tmp_path / "data" / "covidx")
    entry = str(tmp_path / "outside.png") if entry == "ABSOLUTE" else entry
    replace_line(root / "test_COVIDx9A.txt", 2, f"patient9 {entry} COVID-19 sirm")
    with pytest.raises(DatasetError) as error:
        load(root, "covidx", "covid")
    assert "test_COVIDx9A.txt line 2" in str(error.value)
    assert "points outside the dataset root" in str(error.value) or "absolute path" in str(error.value)


@pytest.mark.parametrize("entry", ["../../../../../outside.png", "ABSOLUTE"])
def test_cnmc_refuses_entries_outside_the_root(tmp_path, entry):
    plant_outside(tmp_path)
    root = layouts.cnmc(tmp_path / "data" / "c-nmc")
    labels = root / "C-NMC_Leukemia" / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"
    entry = str(tmp_path / "outside.png") if entry == "ABSOLUTE" else entry
    replace_line(labels, 3, f"UID_21_2_1_all.bmp,{entry},1")
    with pytest.raises(DatasetError) as error:
        load(root, "c-nmc")
    assert "C-NMC_test_prelim_phase_data_labels.csv line 3" in str(error.value)
    assert "points outside the dataset root" in str(error.value) or "absolute path" in str(error.value)


def test_rider_refuses_entries_outside_the_root(tmp_path):
    plant_outside(tmp_path)
    root = layouts.rider(tmp_path / "data" / "rider")
    replace_line(root / "rider_slices.csv", 2, "../../outside.png,1")
    with pytest.raises(DatasetError, match=r"rider_slices.csv line 2: '../../outside.png' points outside"):
        load(root, "rider")


def test_an_entry_through_a_symlink_out_of_the_root_is_refused(tmp_path):
    outside = plant_outside(tmp_path)
    root = layouts.covidx(tmp_path / "data" / "covidx")
    (root / "test" / "link.png").symlink_to(outside)
    replace_line(root / "test_COVIDx9A.txt", 2, "patient9 link.png COVID-19 sirm")
    with pytest.raises(DatasetError, match="test_COVIDx9A.txt line 2: 'link.png' points outside the dataset root"):
        load(root, "covidx", "covid")


def test_an_image_linked_from_outside_the_root_is_refused(tmp_path):
    """Adapters that list folders (no label file) get the same guard: a symlinked image is not read."""
    outside = plant_outside(tmp_path)
    root = layouts.head_ct(tmp_path / "data" / "head-ct", nested=False)
    target = next(root.rglob("000.png"))
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(DatasetError, match="is a link to a file outside the dataset root"):
        load(root, "head-ct")


def test_listed_file_keeps_entries_inside_the_root(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    source = tmp_path / "labels.txt"
    assert io.listed_file(tmp_path, "b/../b/x.png", folder=tmp_path / "a", source=source, line=1) == \
        Path(os.path.realpath(tmp_path / "a" / "b" / "x.png"))
    for entry, reason in (("", "empty"), ("../../x.png", "outside"), ("/etc/passwd", "absolute")):
        with pytest.raises(DatasetError, match=reason):
            io.listed_file(tmp_path / "a", entry, source=source, line=7)


# --- label files in other encodings --------------------------------------------------------------
def test_a_labels_csv_with_a_byte_order_mark_is_read(tmp_path):
    root = layouts.head_ct(tmp_path / "head-ct", n=20, nested=False)
    labels = next(root.rglob("labels.csv"))
    labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())
    assert len(load(root, "head-ct").test) > 0


def test_a_latin1_label_file_names_the_file_and_line(tmp_path):
    root = layouts.cnmc(tmp_path / "c-nmc")
    labels = root / "C-NMC_Leukemia" / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"
    labels.write_bytes(labels.read_bytes().replace(b"UID_H31_1", "UID_H31_\xe91".encode("latin-1")))
    with pytest.raises(DatasetError, match=r"C-NMC_test_prelim_phase_data_labels.csv line 2: not UTF-8 text"):
        load(root, "c-nmc")


# --- decompression bombs ----------------------------------------------------------------------
def tiny_png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG of ~100 bytes whose header claims ``width`` x ``height`` grey pixels (the data is a few zeros)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_a_png_claiming_huge_dimensions_is_refused_before_decoding(tmp_path, monkeypatch):
    bomb = tiny_png_claiming(tmp_path / "bomb.png", 12000, 12000)
    assert bomb.stat().st_size < 200
    with pytest.raises(DatasetError) as error:
        io.read_image(bomb)
    assert str(bomb) in str(error.value) and "MEDAD_MAX_IMAGE_PIXELS" in str(error.value)
    monkeypatch.setenv("MEDAD_MAX_IMAGE_PIXELS", str(10 ** 9))  # configurable: then it is decoded (and found broken)
    with pytest.raises(DatasetError, match="cannot decode image"):
        io.read_image(bomb)


def test_datasets_check_names_a_bomb_instead_of_a_traceback(tmp_path, capsys):
    from medad.cli import main

    root = layouts.head_ct(tmp_path / "head-ct", n=20, nested=False)
    tiny_png_claiming(next(root.rglob("003.png")), 12000, 12000)
    assert main(["datasets", "check", "head-ct", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "003.png declares 12000 x 12000" in out and "NOT OK" in out


# --- file names that are not UTF-8 -------------------------------------------------------------
@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that stores raw bytes in names")
def test_a_non_utf8_file_name_is_named(tmp_path, capsys):
    from medad.cli import main

    root = layouts.yes_no(tmp_path / "brain-tumor-mri", yes=["Y1.jpg", "Y2.jpg", "Y3.jpg"], no=["1 no.jpg", "2 no.jpg",
                                                                                              "3 no.jpg", "4 no.jpg"])
    odd = os.fsencode(root / "yes") + b"/Y\xff.jpg"
    os.rename(os.fsencode(root / "yes" / "Y3.jpg"), odd)
    with pytest.raises(DatasetError, match=r"the file name .*Y\\udcff.jpg.* is not valid UTF-8"):
        load(root, "brain-tumor-mri")
    assert main(["datasets", "check", "brain-tumor-mri", "--root", str(root)]) == 1
    assert "is not valid UTF-8" in capsys.readouterr().out
