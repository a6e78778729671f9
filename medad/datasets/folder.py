"""``folder``: your own images, in folders or listed in a CSV manifest (bring your own data).

Two layouts under the dataset's root (``--data-root DIR`` -> ``DIR/folder/``, or ``root:`` in the config):

1. **Folders**::

       normal/      normal images (any depth; any image format medad reads)
       abnormal/    anomalous images
       masks/       optional: an anomaly mask per abnormal image, same relative path and stem
                    (``abnormal/a/x.png`` -> ``masks/a/x.png`` or ``masks/a/x.*``), non-zero = anomalous
       test/normal/, test/abnormal/   optional: a fixed test set; then normal/ trains (and validates) and
                    abnormal/ holds anomalies for a labelled pool only (``n_anomaly_pool``)

2. **A CSV manifest** ``manifest.csv`` with the columns ``path,label`` and optionally ``split``
   (train / val / test), ``patient_id`` and ``mask_path``. Paths are relative to the root and must stay
   inside it (``..``, absolute paths and links out of the root are refused, naming the line); ``label`` is
   0 / 1 or normal / abnormal. When some rows give a ``split``, a row without one is a training image
   (a training normal, or an anomaly for the labelled pool).

Everything else is what every adapter does: the decode cache, the seeded split with patient and
near-duplicate groups (``test_normal_fraction``, ``val_fraction``, ``n_anomaly_pool``; a given ``split``
column or test folders are kept as a publisher's split), ``medad datasets check`` and the run folder's
``splits.csv``. Pixel metrics use the images whose mask is known: normals, and abnormal images with a
mask file (when any mask is given).
"""

from __future__ import annotations

import csv
import os
from io import StringIO
from pathlib import Path

from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.datasets.files import FileDataset, Record
from medad.registry import register_dataset

MANIFEST = "manifest.csv"
LABELS = {"0": 0, "1": 1, "normal": 0, "abnormal": 1, "anomalous": 1, "anomaly": 1}
SPLITS = ("train", "val", "test", "")


def _images(folder: Path) -> list[Path]:
    return [p for p in io.walk_files(folder) if p.suffix.lower() in io.IMAGE_SUFFIXES]


@register_dataset("folder")
class FolderDataset(FileDataset):
    """Your own normal and abnormal images: folders (normal/, abnormal/, masks/, test/) or manifest.csv."""

    paper = "your own data: normal/ + abnormal/ folders (masks/, test/ optional) or manifest.csv"
    subsets = ("default",)
    expected_layout = ("  normal/  abnormal/        (images; optional masks/ with the same names, test/normal/ test/abnormal/)\n"
                       "  or manifest.csv           (path,label[,split,patient_id,mask_path]; paths relative to the root)")
    download = "your own images"

    def is_root(self, folder: Path) -> bool:
        return (folder / MANIFEST).is_file() or (io.child_dir(folder, "normal") is not None
                                                 and io.child_dir(folder, "abnormal") is not None)

    def masks_shipped(self) -> bool:
        return any(r.mask_paths for r in self.records())

    def scan(self, root: Path) -> list[Record]:
        return self._from_manifest(root) if (root / MANIFEST).is_file() else self._from_folders(root)

    def _from_folders(self, root: Path) -> list[Record]:
        masks_dir = io.child_dir(root, "masks")
        masks = {p.relative_to(masks_dir).with_suffix("").as_posix().lower(): p for p in _images(masks_dir)} if masks_dir else {}
        test_dir = io.child_dir(root, "test")
        parts = [("", root)] + ([("test", test_dir)] if test_dir is not None else [])
        records = []
        for part, base in parts:
            for name, label in (("normal", 0), ("abnormal", 1)):
                folder = io.child_dir(base, name)
                if folder is None:
                    if part == "test":
                        raise DatasetError(f"folder: {base} needs both normal/ and abnormal/ (a fixed test set)")
                    continue
                for path in _images(folder):
                    stem = path.relative_to(folder).with_suffix("").as_posix().lower()
                    mask = masks.get(stem) if label == 1 else None
                    relpath = path.relative_to(root).as_posix()
                    records.append(Record(path=relpath, label=label, category=f"{part or 'train'}/{name}",
                                          part=part if part else ("train" if test_dir is not None else ""),
                                          mask_paths=(mask.relative_to(root).as_posix(),) if mask is not None else (),
                                          mask_known=label == 0 or mask is not None or not masks))
        return records

    def _from_manifest(self, root: Path) -> list[Record]:
        manifest = root / MANIFEST
        with StringIO(io.read_label_text(manifest), newline="") as handle:
            reader = csv.DictReader(handle)
            columns = {c.strip().lower(): c for c in reader.fieldnames or []}
            rows = list(reader)
        if not {"path", "label"} <= set(columns):
            raise DatasetError(f"{manifest}: expected columns path,label[,split,patient_id,mask_path]; got "
                               f"{reader.fieldnames}")
        real_root = Path(os.path.realpath(root))
        records, any_mask = [], "mask_path" in columns
        given = "split" in columns and any(row.get(columns["split"], "").strip() for row in rows)
        for line, row in enumerate(rows, start=2):
            label_text = row[columns["label"]].strip().lower()
            if label_text not in LABELS:
                raise DatasetError(f"{manifest} line {line}: label must be 0/1 or normal/abnormal, got {label_text!r}")
            path = io.listed_file(root, row[columns["path"]], source=manifest, line=line)
            if not path.is_file():
                raise DatasetError(f"{manifest} line {line}: {row[columns['path']].strip()!r} does not exist under {root}")
            split = row.get(columns.get("split", ""), "").strip().lower() if "split" in columns else ""
            if split not in SPLITS:
                raise DatasetError(f"{manifest} line {line}: split must be train, val, test or empty, got {split!r}")
            mask_text = row.get(columns["mask_path"], "").strip() if any_mask else ""
            mask = io.listed_file(root, mask_text, source=manifest, line=line) if mask_text else None
            if mask is not None and not mask.is_file():
                raise DatasetError(f"{manifest} line {line}: mask {mask_text!r} does not exist under {root}")
            label = LABELS[label_text]
            patient = row.get(columns["patient_id"], "").strip() if "patient_id" in columns else ""
            records.append(Record(path=path.relative_to(real_root).as_posix(), label=label,
                                  category="abnormal" if label else "normal", part=split or ("train" if given else ""),
                                  group=f"patient:{patient}" if patient else "",
                                  mask_paths=(mask.relative_to(real_root).as_posix(),) if mask is not None else (),
                                  mask_known=label == 0 or mask is not None or not any_mask))
        return records

    def ignored(self, relpath: str) -> bool:
        return super().ignored(relpath) or relpath.lower().startswith("masks/")
