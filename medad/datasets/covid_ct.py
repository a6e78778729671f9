"""``covid-ct``: UCSD COVID-CT (Zhao et al. 2020; GitHub "UCSD-AI4H/COVID-CT").

``Images-processed/CT_COVID/`` (349 images) and ``CT_NonCOVID/`` (397), unzipped from the two zips,
and the official patient-level split ``Data-split/{COVID,NonCOVID}/{train,val,test}CT_*.txt``.
Names hold ``%`` and long paper-derived stems and are used verbatim (never URL-decoded).

Framing (MAMA Net; Chen et al.): ``CT_NonCOVID`` is the normal class (it is "non-COVID", not
healthy: say so when reporting). With the split files: train/val = official NonCOVID train/val,
test = official test of both classes, anomaly pool = ``n_anomaly_pool`` official COVID train/val
images. Without them a seeded random split is drawn (``test_normal_fraction``). MAMA Net's own CT
split (463 train non-COVID from other sources) cannot be rebuilt from this repository.
"""

from __future__ import annotations

from pathlib import Path

from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.datasets.files import FileDataset, Record
from medad.registry import register_dataset

FOLDERS = {"CT_COVID": 1, "CT_NonCOVID": 0}


def _folder(root: Path, name: str, max_depth: int = 3) -> Path | None:
    level = [root]
    for _ in range(max_depth + 1):
        for folder in level:
            if folder.name.lower() == name.lower() and any(p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES for p in folder.iterdir()):
                return folder
        level = [c for f in level for c in sorted(f.iterdir()) if c.is_dir() and not io.is_junk(c)]
    return None


def _split_lists(root: Path) -> dict[tuple[str, str], str]:
    """(class folder, file name) -> official part, from ``Data-split/*/{train,val,test}CT_<class>.txt`` ({} if absent)."""
    split_dir = io.child_dir(root, "data-split")
    parts: dict[tuple[str, str], str] = {}
    if split_dir is None:
        return parts
    for path in sorted(split_dir.rglob("*.txt")):
        stem = path.stem
        part = next((p for p in ("train", "val", "test") if stem.lower().startswith(p)), None)
        folder = stem[len(part):] if part else ""
        if part is None or folder.lower() not in {name.lower() for name in FOLDERS}:
            raise DatasetError(f"covid-ct: unexpected split file {path.relative_to(root)}; expected "
                               f"{{train,val,test}}CT_COVID.txt or {{train,val,test}}CT_NonCOVID.txt")
        for line in io.read_label_text(path).splitlines():
            if line.strip():
                parts[(folder.lower(), line.strip())] = part
    return parts


@register_dataset("covid-ct")
class CovidCT(FileDataset):
    """UCSD COVID-CT: non-COVID (normal class) vs COVID CT slices, official patient-level split."""

    paper = "COVID-CT (UCSD-AI4H, Zhao et al. 2020); MAMA Net (Chen et al., IEEE TMI 2021)"
    subsets = ("default",)
    expected_layout = ("  Images-processed/CT_COVID/     (349 images, from CT_COVID.zip)\n"
                       "  Images-processed/CT_NonCOVID/  (397 images, from CT_NonCOVID.zip)\n"
                       "  Data-split/COVID/{train,val,test}CT_COVID.txt, Data-split/NonCOVID/...")
    download = 'GitHub repository "UCSD-AI4H/COVID-CT" (unzip the two archives in Images-processed/)'
    expected_counts = {"UCSD": {"CT_COVID": 349, "CT_NonCOVID": 397}}
    default_anomaly_pool = 20

    def is_root(self, folder: Path) -> bool:
        if io.child_dir(folder, "images-processed") is None and io.child_dir(folder, "ct_covid") is None:
            return False
        if all(_folder(folder, name) is None for name in FOLDERS):
            zips = sorted(p.name for p in folder.rglob("CT_*.zip"))
            if zips:
                raise DatasetError(f"covid-ct: found {', '.join(zips)} under {folder} but no extracted images: unzip them in place")
        return all(_folder(folder, name) is not None for name in FOLDERS)

    def scan(self, root: Path) -> list[Record]:
        official = _split_lists(root)
        records = []
        for name, label in FOLDERS.items():
            folder = _folder(root, name)
            for path in sorted(folder.iterdir(), key=lambda p: io.natural_key(p.name)):
                if path.is_file() and not io.is_junk(path) and path.suffix.lower() in io.IMAGE_SUFFIXES:
                    records.append(Record(path=path.relative_to(root).as_posix(), label=label, category=name,
                                          part=official.get((name.lower(), path.name), "")))
        if official and not any(r.part for r in records):
            raise DatasetError(f"covid-ct: {root}/Data-split lists none of the image names under {root}")
        return records
