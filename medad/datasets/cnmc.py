"""``c-nmc``: C-NMC 2019 leukemia cells (TCIA "C-NMC 2019"; Kaggle "andrewmvd/leukemia-classification").

Training folds ``fold_0..2/{all,hem}/UID_<subject>_<image>_<cell>_{all,hem}.bmp`` (normal ``hem``
subjects carry an ``H`` prefix) and the labelled preliminary test set
``C-NMC_test_prelim_phase_data/1.bmp..1867.bmp`` with ``C-NMC_test_prelim_phase_data_labels.csv``
(``Patient_ID,new_names,labels``; 1 = ALL, 0 = HEM). Study (Esmaeili et al., TABLE 1): train = all
3389 HEM cells of the three folds, test = the preliminary set (648 HEM + 1219 ALL). The folds are
subject-disjoint from the test set; the validation normals are carved by subject. Training ALL
cells are anomaly-pool candidates (``n_anomaly_pool``, default 0). Stain colour is signal: set
``channels: 3`` to keep it.
"""

from __future__ import annotations

import csv
import os
import re
from io import StringIO
from pathlib import Path

from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.datasets.files import FileDataset, Record
from medad.registry import register_dataset

_FOLD = re.compile(r"^fold_\d+$", re.IGNORECASE)
_PRELIM = "c-nmc_test_prelim_phase_data"


def _shallowest(root: Path, match, max_depth: int = 3) -> Path | None:
    level = [root]
    for _ in range(max_depth + 1):
        for folder in level:
            if match(folder):
                return folder
        level = [c for f in level for c in sorted(f.iterdir()) if c.is_dir() and not io.is_junk(c)]
    return None


def _training_dir(root: Path) -> Path | None:
    return _shallowest(root, lambda f: any(_FOLD.match(c.name) and io.child_dir(c, "hem") for c in f.iterdir() if c.is_dir()))


def _prelim_csv(root: Path) -> Path | None:
    found = _shallowest(root, lambda f: any(p.name.lower() == _PRELIM + "_labels.csv" for p in f.iterdir()))
    return None if found is None else next(p for p in found.iterdir() if p.name.lower() == _PRELIM + "_labels.csv")


def _subject(uid: str) -> str:
    tokens = Path(uid).stem.split("_")
    return tokens[1] if len(tokens) > 2 else ""


@register_dataset("c-nmc")
class CNMC(FileDataset):
    """C-NMC 2019: normal B cells (HEM) vs leukemic blasts (ALL)."""

    paper = "C-NMC 2019 leukemia (TCIA / Kaggle andrewmvd); study TABLE 1: 3389 HEM train, 648 HEM + 1219 ALL test"
    subsets = ("default",)
    expected_layout = ("  training_data/fold_0/{all,hem}/UID_11_1_1_all.bmp ... (fold_0..fold_2)\n"
                       "  validation_data/C-NMC_test_prelim_phase_data/1.bmp ... 1867.bmp\n"
                       "  validation_data/C-NMC_test_prelim_phase_data_labels.csv")
    download = 'TCIA collection "C-NMC 2019" or Kaggle dataset "andrewmvd/leukemia-classification"'
    expected_counts = {"C-NMC 2019": {"train/all": 7272, "train/hem": 3389, "test/all": 1219, "test/hem": 648}}

    def is_root(self, folder: Path) -> bool:
        return _training_dir(folder) is not None and _prelim_csv(folder) is not None

    def scan(self, root: Path) -> list[Record]:
        records = []
        training = _training_dir(root)
        for fold in sorted(c for c in training.iterdir() if c.is_dir() and _FOLD.match(c.name)):
            for name, label in (("hem", 0), ("all", 1)):
                folder = io.child_dir(fold, name)
                if folder is None:
                    raise DatasetError(f"c-nmc: {fold.relative_to(root)} has no {name}/ folder")
                for path in sorted(folder.iterdir()):
                    if path.is_file() and not io.is_junk(path) and path.suffix.lower() in io.IMAGE_SUFFIXES:
                        records.append(Record(path=path.relative_to(root).as_posix(), label=label, category=f"train/{name}",
                                              group=f"{name}:{_subject(path.name)}", part="train"))
        label_file = _prelim_csv(root)
        image_dir = next((c for c in label_file.parent.iterdir() if c.is_dir() and c.name.lower() == _PRELIM), None)
        if image_dir is None:
            raise DatasetError(f"c-nmc: {label_file.relative_to(root)} has no {_PRELIM}/ image folder beside it")
        with StringIO(io.read_label_text(label_file), newline="") as handle:
            reader = csv.DictReader(handle)
            columns = {c.strip().lower(): c for c in reader.fieldnames or []}
            if not {"patient_id", "new_names", "labels"} <= set(columns):
                raise DatasetError(f"{label_file}: expected columns Patient_ID,new_names,labels, got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                name, label = row[columns["new_names"]].strip(), row[columns["labels"]].strip()
                if label not in ("0", "1"):
                    raise DatasetError(f"{label_file} line {line}: labels must be 0 or 1, got {label!r}")
                path = io.listed_file(root, name, folder=image_dir, source=label_file, line=line)
                relpath = path.relative_to(os.path.realpath(root)).as_posix()
                if not path.is_file():
                    raise DatasetError(f"{label_file} line {line} lists {name} but {relpath} is missing")
                kind = "all" if label == "1" else "hem"
                records.append(Record(path=relpath, label=int(label), category=f"test/{kind}",
                                      group=f"{kind}:{_subject(row[columns['patient_id']])}", part="test"))
        return records

    def select(self, subset: str, records: list[Record]) -> list[Record]:
        if self.plan.n_anomaly_pool > 0:
            return records
        return [r for r in records if r.category != "train/all"]

    def ignored(self, relpath: str) -> bool:
        return super().ignored(relpath) or "final_phase" in relpath.lower()
