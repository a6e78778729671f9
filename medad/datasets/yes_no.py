"""Brain MRI sets with ``yes/`` (tumour) and ``no/`` (normal) folders: ``brain-tumor-mri`` and ``br35h``.

Names are irregular (``Y1.jpg``, ``1 no.jpeg``, ``No11.jpg``), extensions mixed (``.jpg/.JPG/.jpeg/
.png``) and some PNGs carry a ``.jpg`` name, so files are matched case-insensitively and decoded
by content. Both sets hold exact and flipped/contrast-changed duplicates; the near-duplicate guard
(``dedupe``) keeps each such group on one side of the split.
"""

from __future__ import annotations

from pathlib import Path

from medad.benchmark.registry import register_dataset
from medad.datasets import io
from medad.datasets.files import FileDataset, Record


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
    """Br35H (Kaggle ahmedhamada0): 1500 tumour, 1500 normal; ``pred/`` and ``Br35H-Mask-RCNN/`` are not read."""

    paper = "Br35H brain tumour detection 2020 (Kaggle ahmedhamada0); study TABLE 1: 1200/300 normals + 1500 tumour"
    expected_layout = "  yes/  y0.jpg ... y1499.jpg\n  no/   no0.jpg ... no1499.jpg\n  pred/ (unlabelled; ignored)"
    download = 'Kaggle dataset "ahmedhamada0/brain-tumor-detection"'
    expected_counts = {"Kaggle": {"yes": 1500, "no": 1500}}
    default_test_normal_fraction = 300 / 1500
