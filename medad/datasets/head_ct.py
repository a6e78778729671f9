"""``head-ct``: Kaggle "Head CT - hemorrhage" (felipekitamura/head-ct-hemorrhage).

200 windowed 8-bit PNG slices ``head_ct/head_ct/000.png..199.png`` and ``labels.csv`` (header
``id, hemorrhage`` with a leading space): ids 0-99 hemorrhage, 100-199 normal. One slice per
patient. Study split (Esmaeili et al., TABLE 1): 80 / 20 normals, all 100 hemorrhages in the test set.
"""

from __future__ import annotations

import csv
import re
from io import StringIO
from pathlib import Path

from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.datasets.files import FileDataset, Record
from medad.registry import register_dataset

_SLICE = re.compile(r"^\d{3}\.png$", re.IGNORECASE)


def _label_file(folder: Path) -> Path | None:
    return next((p for p in sorted(folder.iterdir()) if p.is_file() and p.name.lower() == "labels.csv"), None)


def _image_dir(root: Path) -> Path | None:
    """The shallowest folder (root, head_ct/, head_ct/head_ct/) holding the ``NNN.png`` slices."""
    level = [root]
    for _ in range(3):
        for folder in level:
            if any(_SLICE.match(p.name) for p in folder.iterdir() if p.is_file()):
                return folder
        level = [c for f in level for c in sorted(f.iterdir()) if c.is_dir()]
    return None


@register_dataset("head-ct")
class HeadCT(FileDataset):
    """Head CT hemorrhage slices (Kaggle), labels from ``labels.csv``."""

    paper = "Head CT hemorrhage (Kaggle felipekitamura); study TABLE 1: 80/20 normals + 100 hemorrhage"
    subsets = ("default",)
    expected_layout = "  labels.csv            (id, hemorrhage)\n  head_ct/head_ct/000.png ... 199.png"
    download = 'Kaggle dataset "felipekitamura/head-ct-hemorrhage"'
    expected_counts = {"Kaggle": {"hemorrhage": 100, "normal": 100}}
    default_test_normal_fraction = 20 / 100

    def is_root(self, folder: Path) -> bool:
        return _label_file(folder) is not None and _image_dir(folder) is not None

    def scan(self, root: Path) -> list[Record]:
        label_file = _label_file(root)
        images = _image_dir(root)
        with StringIO(io.read_label_text(label_file), newline="") as handle:
            rows = list(csv.reader(handle))
        header = [h.strip().lower() for h in rows[0]] if rows else []
        if "id" not in header or "hemorrhage" not in header:
            raise DatasetError(f"{label_file}: expected columns 'id' and 'hemorrhage', got {rows[0] if rows else 'an empty file'}")
        id_col, label_col = header.index("id"), header.index("hemorrhage")
        records = []
        for line, row in enumerate(rows[1:], start=2):
            if not any(cell.strip() for cell in row):
                continue
            try:
                index, label = int(row[id_col]), int(row[label_col])
            except (ValueError, IndexError):
                raise DatasetError(f"{label_file} line {line}: expected an integer id and a 0/1 hemorrhage, got {row}") from None
            if label not in (0, 1):
                raise DatasetError(f"{label_file} line {line}: hemorrhage must be 0 or 1, got {label}")
            path = images / f"{index:03d}.png"
            if not path.is_file():
                raise DatasetError(f"{label_file} lists id {index} but {path.relative_to(root)} is missing under {root}")
            records.append(Record(path=path.relative_to(root).as_posix(), label=label,
                                  category="hemorrhage" if label else "normal", sample_id=f"{index:03d}"))
        return records
