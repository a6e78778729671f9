"""``mias``: the mini-MIAS mammograms (PEIPA ``all-mias.tar.gz``; Kaggle "kmader/mias-mammography").

322 1024x1024 8-bit PGM images ``mdb001.pgm..mdb322.pgm`` and a whitespace-separated truth table
(``Info.txt``, or the tarball's README) with rows ``REFNUM BG CLASS [SEVERITY X Y RADIUS]``; 207
``NORM`` images, 115 abnormal ones (several rows per image for some). ``y`` is measured from the
bottom-left corner: the row is ``1023 - y`` (our choice of the two conventions). Consecutive pairs
are one patient (``(n + 1) // 2``).

Subsets (Esmaeili et al., TABLE 1: 167/40 normals):
- ``full``: whole images; anomaly masks are the annotated discs (empty for the 4 abnormal images
  without coordinates).
- ``patches``: ``patch_size`` crops (120 in the study) centred on every annotated abnormality,
  shifted inside the image at the border (119 rows have coordinates; the study reports 117 patches
  without saying which two it dropped), and one crop per normal image centred at a seeded random
  point inside the breast (Otsu foreground, the study does not say how it placed them).

Patient grouping: by default only the normal images of one patient stay together
(``strict_groups: false``), because forcing every normal whose other breast is abnormal into the
test set cannot give TABLE 1's 167/40; ``strict_groups: true`` keeps whole patients on one side.
The full-resolution v1.21 release (labels only in a PDF) is refused with a clear message.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import numpy as np
from skimage.filters import threshold_otsu

from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.datasets.files import FileDataset, Record
from medad.params import Range
from medad.registry import register_dataset

_REF = re.compile(r"^mdb(\d{3})$", re.IGNORECASE)
SIDE = 1024  # mini-MIAS images are 1024 x 1024


def _truth_table(folder: Path) -> Path | None:
    for name in ("info.txt", "readme"):
        found = next((p for p in sorted(folder.iterdir()) if p.is_file() and p.name.lower() == name), None)
        if found is not None and name == "info.txt":
            return found
        if found is not None and _image_dir(folder) is not None and re.search(r"^mdb\d{3}\s", io.read_label_text(found), re.M):
            return found
    return None


def _image_dir(folder: Path) -> Path | None:
    for candidate in (folder, io.child_dir(folder, "all-mias")):
        if candidate is not None and any(p.name.lower() == "mdb001.pgm" for p in candidate.iterdir()):
            return candidate
    return None


def parse_truth_table(path: Path) -> dict[str, list[tuple[str, str, tuple[float, float, float] | None]]]:
    """refnum -> [(class, severity, (x, y, radius) or None)], one entry per row of the table."""
    table: dict[str, list] = {}
    for line_number, line in enumerate(io.read_label_text(path).splitlines(), start=1):
        tokens = line.split()
        if not tokens or not _REF.match(tokens[0]):
            continue
        if len(tokens) < 3:
            raise DatasetError(f"{path} line {line_number}: expected 'REFNUM BG CLASS [SEVERITY X Y RADIUS]', got {line!r}")
        ref, kind = tokens[0].lower(), tokens[2].upper()
        severity = tokens[3].upper() if len(tokens) > 3 else ""
        circle = None
        if len(tokens) >= 7:
            try:
                circle = (float(tokens[4]), float(tokens[5]), float(tokens[6]))
            except ValueError:
                circle = None
        table.setdefault(ref, []).append((kind, severity, circle))
    if not table:
        raise DatasetError(f"{path}: no 'mdbNNN ...' rows found; expected the MIAS truth table")
    return table


@register_dataset("mias")
class MIAS(FileDataset):
    """mini-MIAS mammograms: whole images (disc masks) and 120 px patches."""

    paper = "mini-MIAS mammography (PEIPA / Kaggle kmader); study TABLE 1: 167/40 normals + 115 images / 117 patches"
    subsets = ("full", "patches")
    expected_layout = "  Info.txt              (REFNUM BG CLASS SEVERITY X Y RADIUS)\n  all-mias/mdb001.pgm ... mdb322.pgm"
    download = 'PEIPA "mini-MIAS" (all-mias.tar.gz) or Kaggle dataset "kmader/mias-mammography"'
    expected_counts = {"mini-MIAS": {"NORM": 207, "abnormal": 115}}
    has_masks = True
    default_test_normal_fraction = 40 / 207
    default_strict_groups = False

    def __init__(self, *, patch_size: Annotated[int, Range(8)] = 120, **kwargs) -> None:
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)

    def is_root(self, folder: Path) -> bool:
        names = {p.name.lower() for p in folder.iterdir()}
        if ("miasdbv1.21" in names or "00readme.pdf" in names) and "info.txt" not in names:
            raise DatasetError(f"mias: {folder} is the full-resolution MIAS v1.21 release; its labels are only in a "
                               f"PDF. Use mini-MIAS (all-mias/ + Info.txt) for the study")
        return _truth_table(folder) is not None and _image_dir(folder) is not None

    def scan(self, root: Path) -> list[Record]:
        table = parse_truth_table(_truth_table(root))
        images = _image_dir(root)
        records = []
        half = self.patch_size // 2
        for ref in sorted(table):
            path = images / f"{ref}.pgm"
            if not path.is_file():
                match = next((p for p in images.iterdir() if p.name.lower() == f"{ref}.pgm"), None)
                if match is None:
                    raise DatasetError(f"the MIAS truth table lists {ref} but {path.relative_to(root)} is missing under {root}")
                path = match
            rows = table[ref]
            abnormal = any(kind != "NORM" for kind, _, _ in rows)
            circles = tuple((SIDE - 1 - y, x, r) for kind, _, c in rows if kind != "NORM" and c is not None for x, y, r in [c])
            # an abnormality listed without centre and radius leaves the image's mask unknown (not empty)
            outlined = all(c is not None for kind, _, c in rows if kind != "NORM")
            base = Record(path=path.relative_to(root).as_posix(), label=int(abnormal),
                          category="abnormal" if abnormal else "NORM",
                          group=f"patient{(int(_REF.match(ref).group(1)) + 1) // 2}", sample_id=ref, circles=circles,
                          mask_known=outlined)
            records.append(base)
            if not abnormal:
                records.append(replace(base, sample_id=f"{ref}-patch"))
            for k, (row, col, _) in enumerate(circles):
                crop = (int(round(row)) - half, int(round(col)) - half, self.patch_size, self.patch_size)
                records.append(replace(base, sample_id=f"{ref}-patch{k}", crop=crop, mask_known=True))
        return records

    def select(self, subset: str, records: list[Record]) -> list[Record]:
        if subset == "full":
            return [r for r in records if "-patch" not in r.sample_id]
        return [r for r in records if "-patch" in r.sample_id]

    def crop_for(self, record: Record, pixels: np.ndarray) -> tuple[int, int, int, int]:
        if record.label == 0 and record.sample_id.endswith("-patch"):
            return self._normal_patch(record, pixels)
        return super().crop_for(record, pixels)

    def _normal_patch(self, record: Record, pixels: np.ndarray) -> tuple[int, int, int, int]:
        """A window centred at a random point of the breast, seeded by the file name (same every run)."""
        grey = pixels if pixels.ndim == 2 else pixels.mean(axis=-1)
        size = self.patch_size
        half = size // 2
        if grey.shape[0] < size or grey.shape[1] < size:
            raise DatasetError(f"mias: {record.path} ({grey.shape}) is smaller than a {size} px patch")
        inside = grey > threshold_otsu(grey) if grey.max() > grey.min() else np.ones_like(grey, dtype=bool)
        inside[:half, :] = inside[-half:, :] = False
        inside[:, :half] = inside[:, -half:] = False
        rows, cols = np.nonzero(inside)
        rng = np.random.default_rng(zlib.crc32(record.sample_id.encode()))
        if len(rows) == 0:
            row, col = grey.shape[0] // 2, grey.shape[1] // 2
        else:
            pick = rng.integers(len(rows))
            row, col = int(rows[pick]), int(cols[pick])
        return row - half, col - half, size, size
