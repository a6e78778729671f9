"""``montgomery-shenzhen``: the NLM tuberculosis chest X-ray sets (Jaeger et al., QIMS 2014).

``MontgomerySet/CXR_png/MCUCXR_####_#.png`` (138: 80 normal, 58 TB) with lung masks
``MontgomerySet/ManualMask/{leftMask,rightMask}/`` and ``ChinaSet_AllFiles/CXR_png/CHNCXR_####_#.png``
(662: 326 normal, 336 TB); the last digit of the stem is the label. Each set may be nested once
more (the Kaggle mirror: ``ChinaSet_AllFiles/ChinaSet_AllFiles/``). The left and right lung masks
are OR-ed into ``roi_masks`` (SURE-ROI trains on the lung region); third-party Shenzhen masks
``CHNCXR_####_#_mask.png`` are used too when found under the root.

Subsets: ``montgomery``, ``shenzhen``, ``both`` (pooled, as the SURE-ROI dissertation's "M&S").
``require_lung_mask`` keeps only images with a lung mask (the dissertation's normals were so
limited). Split (the dissertation gives no test list): ``test_normal_fraction`` (0.2) of normals to
the test set, ``val_fraction`` of the rest to validation, ``n_anomaly_pool`` (default 10) labelled
TB images held out for semi-supervised detectors, the other TB images in the test set. One image
per patient, so each image is its own group.
"""

from __future__ import annotations

import re
from pathlib import Path

from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.datasets.files import FileDataset, Record
from medad.registry import register_dataset

SOURCES = {"montgomery": ("MCUCXR", "MontgomerySet"), "shenzhen": ("CHNCXR", "ChinaSet_AllFiles")}


def _pattern(prefix: str) -> re.Pattern:
    return re.compile(rf"^{prefix}_(\d{{4}})_([01])\.png$", re.IGNORECASE)


def _cxr_dir(root: Path, prefix: str, max_depth: int = 4) -> Path | None:
    """The shallowest ``CXR_png`` folder holding ``<prefix>_####_#.png`` files."""
    pattern = _pattern(prefix)
    level = [root]
    for _ in range(max_depth + 1):
        for folder in level:
            if folder.name.lower() == "cxr_png" and any(pattern.match(p.name) for p in folder.iterdir()):
                return folder
        level = [c for f in level for c in sorted(f.iterdir()) if c.is_dir() and not io.is_junk(c)]
    return None


@register_dataset("montgomery-shenzhen")
class MontgomeryShenzhen(FileDataset):
    """Montgomery County and Shenzhen TB chest X-rays; Montgomery lung masks as ROI."""

    paper = "Montgomery County + Shenzhen TB CXR (NLM; Jaeger et al. 2014); SURE-ROI (Wang 2022)"
    subsets = ("montgomery", "shenzhen", "both")
    expected_layout = ("  MontgomerySet/CXR_png/MCUCXR_0001_0.png ... (138)\n"
                       "  MontgomerySet/ManualMask/{leftMask,rightMask}/MCUCXR_0001_0.png ...\n"
                       "  ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png ... (662)")
    download = 'U.S. National Library of Medicine "Tuberculosis Chest X-ray Image Data Sets" (MontgomerySet.zip, ChinaSet_AllFiles.zip)'
    expected_counts = {
        "both": {"montgomery/normal": 80, "montgomery/tb": 58, "shenzhen/normal": 326, "shenzhen/tb": 336},
        "Montgomery only": {"montgomery/normal": 80, "montgomery/tb": 58},
        "Shenzhen only": {"shenzhen/normal": 326, "shenzhen/tb": 336},
    }
    default_anomaly_pool = 10

    def __init__(self, *, require_lung_mask: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.require_lung_mask = require_lung_mask

    def is_root(self, folder: Path) -> bool:
        return any(_cxr_dir(folder, prefix) is not None for prefix, _ in SOURCES.values())

    def scan(self, root: Path) -> list[Record]:
        records = []
        for source, (prefix, _) in SOURCES.items():
            folder = _cxr_dir(root, prefix)
            if folder is None:
                continue
            masks = self._lung_masks(root, folder, prefix)
            pattern = _pattern(prefix)
            for path in sorted(folder.iterdir()):
                match = pattern.match(path.name)
                if match is None:
                    continue
                label = int(match.group(2))
                records.append(Record(path=path.relative_to(root).as_posix(), label=label,
                                      category=f"{source}/{'tb' if label else 'normal'}", sample_id=f"{source}/{path.stem}",
                                      roi_paths=masks.get(path.stem.upper(), ())))
        return records

    def _lung_masks(self, root: Path, cxr: Path, prefix: str) -> dict[str, tuple[str, ...]]:
        """stem -> mask files: Montgomery's left+right ManualMask, or third-party ``<stem>_mask.png``."""
        found: dict[str, list[str]] = {}
        manual = io.child_dir(cxr.parent, "manualmask")
        if manual is not None:
            for side in ("leftmask", "rightmask"):
                side_dir = io.child_dir(manual, side)
                for path in sorted(side_dir.iterdir()) if side_dir else ():
                    if _pattern(prefix).match(path.name):
                        found.setdefault(path.stem.upper(), []).append(path.relative_to(root).as_posix())
        separate = re.compile(rf"^({prefix}_\d{{4}}_[01])_mask\.png$", re.IGNORECASE)
        for path in io.walk_files(root, max_depth=5):
            match = separate.match(path.name)
            if match:
                found.setdefault(match.group(1).upper(), []).append(path.relative_to(root).as_posix())
        return {stem: tuple(paths) for stem, paths in found.items()}

    def select(self, subset: str, records: list[Record]) -> list[Record]:
        sources = tuple(SOURCES) if subset == "both" else (subset,)
        missing = [s for s in sources if not any(r.category.startswith(f"{s}/") for r in records)]
        if missing:
            prefix, folder = SOURCES[missing[0]]
            raise DatasetError(f"montgomery-shenzhen/{subset}: no {prefix}_####_#.png images found under "
                               f"{self.data_root()}; unpack {folder}.zip there (expected {folder}/CXR_png/)")
        chosen = [r for r in records if r.category.split("/", 1)[0] in sources]
        return [r for r in chosen if r.roi_paths] if self.require_lung_mask else chosen

    def ignored(self, relpath: str) -> bool:
        return super().ignored(relpath) or "clinicalreadings" in relpath.lower()
