"""``rider``: RIDER Neuro MRI (TCIA collection "RIDER NEURO MRI"), read from its DICOM series.

The collection ships no slice labels. MAMA Net (Chen et al., IEEE TMI 2021) used 349 slices (109
normal, 240 tumour; T1 and T2, 19 patients) selected by Abd-Ellah et al. (2018), whose list is not
public, so the adapter needs a user manifest ``rider_slices.csv`` in the root with columns
``path`` (relative to the root) or ``sop_instance_uid``, ``label`` (0 normal, 1 tumour) and an
optional ``patient_id`` (default: the DICOM PatientID). Folder names are never trusted: the
instance is found by path or by its SOPInstanceUID header.

Decoding: pydicom, modality LUT (RescaleSlope/RescaleIntercept), then the file's VOI window
(``window: dicom``, falling back to the 1st-99th percentile) or always the percentile window
(``window: percentile``). Split: MAMA Net used stratified k-fold without sizes; we draw one seeded
patient-level split with ``test_normal_fraction`` (0.2, one fold of five) of the normals and every
tumour slice in the test set. Every RIDER patient has tumour slices, so a patient's normal slices
cannot all stay away from the test set: by default (``strict_groups: false``) a patient's normal
slices stay together on one side; ``strict_groups: true`` would put every normal in the test set.
"""

from __future__ import annotations

import csv
import os
from io import StringIO
from pathlib import Path
from typing import Literal

import numpy as np

from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.datasets.files import FileDataset, Record
from medad.registry import register_dataset

MANIFEST = "rider_slices.csv"
WINDOWS = ("dicom", "percentile")


def _manifest(folder: Path) -> Path | None:
    return next((p for p in sorted(folder.iterdir()) if p.is_file() and p.name.lower() == MANIFEST), None)


@register_dataset("rider")
class RiderNeuroMRI(FileDataset):
    """RIDER Neuro MRI slices labelled by a user manifest (DICOM through pydicom)."""

    paper = "RIDER Neuro MRI (TCIA); MAMA Net (Chen et al., IEEE TMI 2021): 349 slices, 109 normal / 240 tumour"
    subsets = ("default",)
    expected_layout = ("  rider_slices.csv   (path or sop_instance_uid, label[, patient_id]): RIDER ships no slice labels\n"
                       "  RIDER NEURO MRI/<PatientID>/<study>/<series>/1-01.dcm ...")
    download = 'TCIA collection "RIDER NEURO MRI" (NBIA Data Retriever) plus your own rider_slices.csv'
    expected_counts = {"MAMA Net (Abd-Ellah et al.)": {"normal": 109, "tumour": 240}}
    default_strict_groups = False

    def __init__(self, *, window: Literal[WINDOWS] = "dicom", **kwargs) -> None:
        super().__init__(**kwargs)
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {', '.join(WINDOWS)}, got {window!r}")
        self.window = window

    def is_root(self, folder: Path) -> bool:
        return _manifest(folder) is not None

    def read(self, path: Path) -> np.ndarray:
        return io.read_image(path, window=self.window)

    def options(self) -> str:
        return f"{self.resize_mode}-{self.window}"

    def scan(self, root: Path) -> list[Record]:
        import pydicom

        manifest = _manifest(root)
        with StringIO(io.read_label_text(manifest), newline="") as handle:
            reader = csv.DictReader(handle)
            columns = {c.strip().lower(): c for c in reader.fieldnames or []}
            rows = list(reader)
        if "label" not in columns or not ({"path", "sop_instance_uid"} & set(columns)):
            raise DatasetError(f"{manifest}: expected columns 'path' or 'sop_instance_uid', 'label' and optionally "
                               f"'patient_id'; got {reader.fieldnames}")
        by_uid: dict[str, Path] = {}
        if "path" not in columns:
            for path in io.walk_files(root):
                if io.is_dicom(path):
                    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                    by_uid[str(header.get("SOPInstanceUID", ""))] = path
        records = []
        for line, row in enumerate(rows, start=2):
            label = row[columns["label"]].strip()
            if label not in ("0", "1"):
                raise DatasetError(f"{manifest} line {line}: label must be 0 or 1, got {label!r}")
            if "path" in columns:
                path = io.listed_file(root, row[columns["path"]], source=manifest, line=line)
                if not path.is_file():
                    raise DatasetError(f"{manifest} line {line}: {row[columns['path']]!r} does not exist under {root}")
            else:
                uid = row[columns["sop_instance_uid"]].strip()
                if uid not in by_uid:
                    raise DatasetError(f"{manifest} line {line}: no DICOM file under {root} has SOPInstanceUID {uid}")
                path = by_uid[uid]
            patient = row.get(columns.get("patient_id", ""), "") if "patient_id" in columns else ""
            if not patient:
                try:
                    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
                except Exception as error:
                    raise DatasetError(f"{manifest} line {line}: {path} is not a readable DICOM file: {error}") from None
                patient = str(header.get("PatientID", ""))
            relpath = path.relative_to(os.path.realpath(root)).as_posix()
            records.append(Record(path=relpath, label=int(label), category="tumour" if label == "1" else "normal",
                                  group=f"patient:{patient}" if patient else ""))
        return records

    def ignored(self, relpath: str) -> bool:
        return True  # the manifest picks a few hundred of the collection's slices: the rest is expected
