"""Brain MRI sets with ``yes/`` (tumour) and ``no/`` (normal) folders: ``brain-tumor-mri`` and ``br35h``.

Names are irregular (``Y1.jpg``, ``1 no.jpeg``, ``No11.jpg``), extensions mixed (``.jpg/.JPG/.jpeg/
.png``) and some PNGs carry a ``.jpg`` name, so files are matched case-insensitively and decoded
by content. Both sets hold exact and flipped/contrast-changed duplicates; the near-duplicate guard
(``dedupe``) keeps each such group on one side of the split.

Later Br35H releases add ``Br35H-Mask-RCNN/`` with VIA outlines of 801 of the 1500 tumours (666 polygon,
257 ellipse and 8 circle regions: 554 images outlined by polygons only, 160 by ellipses only, 83 by both,
4 by circles); its images are byte copies of ``yes/`` images, so only its JSON is read and every region
is filled into the tumour mask (:mod:`medad.datasets.via`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from medad.datasets import io, via
from medad.datasets.base import DatasetError
from medad.datasets.files import FileDataset, Record
from medad.registry import register_dataset

BR35H_MASK_FOLDER = "Br35H-Mask-RCNN"         # later releases: VIA outlines + byte copies of yes/ images


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


@register_dataset("br35h")
class Br35H(YesNoFolders):
    """Br35H (Kaggle ahmedhamada0): 1500 tumour, 1500 normal; ``pred/`` is not read.

    With ``Br35H-Mask-RCNN/`` present, its VIA exports (``annotations_*.json``) give tumour masks: the
    union of an image's regions (polygons, rotated ellipses, circles, rects) drawn on the image's own
    pixel grid, then resized like the image. Normals have empty masks; a tumour image with no region, or
    with a region of a shape that outlines no area (VIA's ``point``, ``polyline``) or is unknown, has an
    unknown mask (``mask_known`` False), never a partial one, and pixel metrics leave it out. Its images
    (copies of ``yes/``) are never indexed.
    """

    paper = "Br35H brain tumour detection 2020 (Kaggle ahmedhamada0); study TABLE 1: 1200/300 normals + 1500 tumour"
    expected_layout = ("  yes/  y0.jpg ... y1499.jpg\n  no/   no0.jpg ... no1499.jpg\n  pred/ (unlabelled; ignored)\n"
                       "  Br35H-Mask-RCNN/{TRAIN,VAL,TEST}/annotations_*.json  (optional: VIA tumour outlines)")
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

    def read_outlines(self, root: Path, records: list[Record]) -> dict[str, via.Outlines]:
        """Record path -> the union of its VIA regions over every export (the same region in two files counts once)."""
        tumours = {Path(r.path).name.lower(): r.path for r in records if r.label == 1}
        outlines: dict[str, via.Outlines] = {}
        for source in self.annotation_files(root):
            for filename, found in via.read_via(source).items():
                if filename.lower() not in tumours:
                    raise DatasetError(f"br35h: {source.relative_to(root)} outlines {filename!r}, which is not in "
                                       f"{root / 'yes'}; the annotations name yes/ images (y0.jpg ... y1499.jpg)")
                outlines.setdefault(tumours[filename.lower()], via.Outlines()).update(found)
        return outlines

    def scan(self, root: Path) -> list[Record]:
        records = super().scan(root)
        if not self.annotation_files(root):
            return records
        outlines = self.read_outlines(root, records)
        annotated = []
        for record in records:
            found = outlines.get(record.path)
            if found is not None and found.fillable():
                record = replace(record, polygons=found.filled_polygons(), ellipses=tuple(sorted(found.ellipses)),
                                 circles=tuple(sorted(found.circles)))
            elif record.label == 1:   # a tumour not (fully) outlined: its mask is unknown, not empty or partial
                record = replace(record, mask_known=False)
            annotated.append(record)
        return annotated

    def mask_notes(self, root: Path) -> list[str]:
        """The regions per shape, and the images whose masks are unknown because a region cannot be filled."""
        return [via.summary(self.read_outlines(root, self.records()))]
