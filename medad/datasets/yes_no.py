"""Brain MRI sets with ``yes/`` (tumour) and ``no/`` (normal) folders: ``brain-tumor-mri`` and ``br35h``.

Names are irregular (``Y1.jpg``, ``1 no.jpeg``, ``No11.jpg``), extensions mixed (``.jpg/.JPG/.jpeg/
.png``) and some PNGs carry a ``.jpg`` name, so files are matched case-insensitively and decoded
by content. Both sets hold exact and flipped/contrast-changed duplicates; the near-duplicate guard
(``dedupe``) keeps each such group on one side of the split.

Later Br35H releases add ``Br35H-Mask-RCNN/`` with VIA polygon outlines of 801 tumours; its images
are byte copies of ``yes/`` images, so only its JSON is read and the polygons become tumour masks.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.datasets.files import FileDataset, Record
from medad.registry import register_dataset

Polygon = tuple[tuple[float, float], ...]   # (row, col) vertices in source pixels
BR35H_MASK_FOLDER = "Br35H-Mask-RCNN"         # later releases: VIA polygons + byte copies of yes/ images


class YesNoFolders(FileDataset):
    """Labels from the folder: ``yes`` = 1, ``no`` = 0; only the shallowest copy is indexed."""

    subsets = ("default",)

    def is_root(self, folder: Path) -> bool:
        return io.child_dir(folder, "yes") is not None and io.child_dir(folder, "no") is not None

    def scan(self, root: Path) -> list[Record]:
        records = []
        for name, label in (("no", 0), ("yes", 1)):
            folder = io.child_dir(root, name)
            files = [p for p in sorted(folder.iterdir(), key=lambda p: io.natural_key(p.name))
                     if p.is_file() and not io.is_junk(p) and p.suffix.lower() in io.IMAGE_SUFFIXES]
            records += [Record(path=p.relative_to(root).as_posix(), label=label, category=name) for p in files]
        return records

    def ignored(self, relpath: str) -> bool:
        top = relpath.split("/", 1)[0].lower()
        return super().ignored(relpath) or top not in ("yes", "no")


@register_dataset("brain-tumor-mri")
class BrainTumorMRI(YesNoFolders):
    """Navoneel's "Brain MRI Images for Brain Tumor Detection" (Kaggle): 155 tumour, 98 normal."""

    paper = "Brain MRI for tumor detection (Kaggle navoneel); study TABLE 1: 80/18 normals + 155 tumour"
    expected_layout = "  yes/  (155 images: Y1.jpg ...)\n  no/   (98 images: 1 no.jpeg ...)\n  brain_tumor_dataset/  (a second copy; ignored)"
    download = 'Kaggle dataset "navoneel/brain-mri-images-for-brain-tumor-detection"'
    expected_counts = {"Kaggle": {"yes": 155, "no": 98}}
    default_test_normal_fraction = 18 / 98


def _via_polygon(source: Path, key: str, region: object) -> Polygon | None:
    """One VIA region as (row, col) vertices; None for a shape other than a polygon."""
    shape = region.get("shape_attributes") if isinstance(region, dict) else None
    if not isinstance(shape, dict):
        raise DatasetError(f"{source}: entry {key!r} has a region without 'shape_attributes'; expected VIA "
                           f"regions like {{'shape_attributes': {{'name': 'polygon', 'all_points_x': [...], 'all_points_y': [...]}}}}")
    if shape.get("name") != "polygon":
        return None
    xs, ys = shape.get("all_points_x"), shape.get("all_points_y")
    if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys) or len(xs) < 3:
        raise DatasetError(f"{source}: entry {key!r} has a polygon whose all_points_x / all_points_y are not two "
                           f"lists of the same length >= 3 (got {xs!r:.80} and {ys!r:.80})")
    try:
        return tuple((float(y), float(x)) for x, y in zip(xs, ys))
    except (TypeError, ValueError) as error:
        raise DatasetError(f"{source}: entry {key!r} has a non-numeric polygon vertex: {error}") from error


def read_via_polygons(source: Path) -> dict[str, list[Polygon]]:
    """File name -> polygons of a VIA annotation export (``{key: {filename, size, regions}}``).

    Entries are keyed by their ``filename`` (the dict key is ``filename + size``); ``regions`` may be
    a list (VIA 2) or a dict of index -> region (VIA 1). A file listed with no polygon maps to [].
    """
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read VIA annotations {source}: {type(error).__name__}: {error}") from error
    data = data.get("_via_img_metadata", data) if isinstance(data, dict) else data   # a full VIA project file
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: expected a VIA export, a JSON object of entries, got {type(data).__name__}")
    polygons: dict[str, list[Polygon]] = {}
    for key, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            raise DatasetError(f"{source}: entry {key!r} has no 'filename'; expected "
                               f"{{'filename': 'y0.jpg', 'size': ..., 'regions': [...]}}")
        regions = entry.get("regions") or []
        regions = list(regions.values()) if isinstance(regions, dict) else regions
        outlines = [_via_polygon(source, key, region) for region in regions]
        polygons.setdefault(entry["filename"], []).extend(p for p in outlines if p is not None)
    return polygons


@register_dataset("br35h")
class Br35H(YesNoFolders):
    """Br35H (Kaggle ahmedhamada0): 1500 tumour, 1500 normal; ``pred/`` is not read.

    With ``Br35H-Mask-RCNN/`` present, its VIA polygons (``annotations_*.json``) give tumour masks:
    normals have empty masks, tumour images without a polygon unknown ones (``mask_known`` False),
    which pixel metrics leave out. Its images (copies of ``yes/``) are never indexed.
    """

    paper = "Br35H brain tumour detection 2020 (Kaggle ahmedhamada0); study TABLE 1: 1200/300 normals + 1500 tumour"
    expected_layout = ("  yes/  y0.jpg ... y1499.jpg\n  no/   no0.jpg ... no1499.jpg\n  pred/ (unlabelled; ignored)\n"
                       "  Br35H-Mask-RCNN/{TRAIN,VAL,TEST}/annotations_*.json  (optional: tumour polygons)")
    download = 'Kaggle dataset "ahmedhamada0/brain-tumor-detection"'
    expected_counts = {"Kaggle": {"yes": 1500, "no": 1500}}
    default_test_normal_fraction = 300 / 1500

    def annotation_files(self, root: Path) -> list[Path]:
        """The VIA exports (``annotations_*.json``) in ``Br35H-Mask-RCNN/`` and its split folders."""
        folder = io.child_dir(root, BR35H_MASK_FOLDER)
        if folder is None:
            return []
        return [p for p in io.walk_files(folder, max_depth=1)
                if p.suffix.lower() == ".json" and p.name.lower().startswith("annotations")]

    def masks_shipped(self) -> bool:
        """True when ``Br35H-Mask-RCNN/`` holds VIA exports (the later releases)."""
        return bool(self.annotation_files(self.data_root()))

    def scan(self, root: Path) -> list[Record]:
        records = super().scan(root)
        sources = self.annotation_files(root)
        if not sources:
            return records
        tumours = {Path(r.path).name.lower(): r.path for r in records if r.label == 1}
        outlines: dict[str, set[Polygon]] = {}
        for source in sources:
            for filename, polygons in read_via_polygons(source).items():
                if filename.lower() not in tumours:
                    raise DatasetError(f"br35h: {source.relative_to(root)} outlines {filename!r}, which is not in "
                                       f"{root / 'yes'}; the annotations name yes/ images (y0.jpg ... y1499.jpg)")
                outlines.setdefault(tumours[filename.lower()], set()).update(polygons)
        annotated = []
        for record in records:
            if outlines.get(record.path):
                record = replace(record, polygons=tuple(sorted(outlines[record.path])))
            elif record.label == 1:   # a tumour nobody outlined: its mask is unknown, not empty
                record = replace(record, mask_known=False)
            annotated.append(record)
        return annotated
