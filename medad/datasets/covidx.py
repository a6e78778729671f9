"""``covidx``: COVIDx chest X-rays (COVID-Net; Kaggle "andyczhao/covidx-cxr2", label files in "lindawangg/COVID-Net").

``train/`` and ``test/`` image folders with space-separated label files: the Kaggle ``train.txt``
/ ``test.txt`` (``[val.txt]``) or a versioned pair from the COVID-Net repository
(``train_COVIDx9A.txt`` / ``test_COVIDx9A.txt``, ...). Lines are parsed robustly: the label is
the token in the known class set, the file name the token before it, the patient id all earlier
tokens (SIRM ids contain a space), the source the token after it when present.

Anomaly framing (CoroNet; Khobahi et al.): ``normal`` is the normal class; the subsets take as
anomalies ``covid`` (COVID-19 only), ``pneumonia`` (non-COVID pneumonia only) or ``abnormal``
(both). A binary label file's ``negative`` includes pneumonia, so it is refused as a normal class
unless ``negative_as_normal: true``. The publisher's patient-disjoint train/test split is kept;
validation normals are carved by patient from the training normals, and ``n_anomaly_pool``
labelled training anomalies (default 20, patient-disjoint from the test set) serve semi-supervised
detectors such as CoroNet.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from medad.datasets import io
from medad.datasets.base import DatasetError
from medad.datasets.files import FileDataset, Record
from medad.registry import register_dataset

CLASSES = {"normal": "normal", "pneumonia": "pneumonia", "covid-19": "COVID-19", "covid": "COVID-19",
           "negative": "negative", "positive": "positive"}
SUBSET_ANOMALIES = {"covid": {"COVID-19", "positive"}, "pneumonia": {"pneumonia"}, "abnormal": {"COVID-19", "pneumonia", "positive"}}
_VERSIONED = re.compile(r"^(train|test|val)_covidx(.+)\.txt$", re.IGNORECASE)


def label_files(folder: Path, version: str | None = None) -> dict[str, Path]:
    """{'train': ..., 'test': ..., ['val': ...]}: the Kaggle names, or the named/latest COVIDx version."""
    files = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    if version is None and "train.txt" in files and "test.txt" in files:
        return {part: files[f"{part}.txt"] for part in ("train", "test", "val") if f"{part}.txt" in files}
    versions: dict[str, dict[str, Path]] = {}
    for name, path in files.items():
        match = _VERSIONED.match(name)
        if match:
            versions.setdefault(match.group(2).lower(), {})[match.group(1).lower()] = path
    complete = {v: parts for v, parts in versions.items() if {"train", "test"} <= set(parts)}
    if version is not None:
        return complete.get(version.lower(), {})
    if not complete:
        return {}
    # latest three-class ("A") version first: 9A before 9B before 8A
    best = max(complete, key=lambda v: (io.natural_key(v.rstrip("ab")), v.endswith("a")))
    return complete[best]


def parse_line(line: str) -> tuple[str, str, str] | None:
    """(patient id, file name, class) of one label-file line, or None for a blank line."""
    tokens = line.split()
    if not tokens:
        return None
    for index in range(len(tokens) - 1, 0, -1):
        if tokens[index].lower() in CLASSES and index >= 1:
            return " ".join(tokens[: index - 1]), tokens[index - 1], CLASSES[tokens[index].lower()]
    raise ValueError(f"no class label ({', '.join(sorted(set(CLASSES.values())))}) in {line.strip()!r}")


@register_dataset("covidx")
class COVIDx(FileDataset):
    """COVIDx CXR: normal vs COVID-19 / pneumonia, publisher split, labelled anomaly pool."""

    paper = "COVIDx chest X-ray (Wang et al., COVID-Net); CoroNet (Khobahi et al.)"
    subsets = tuple(SUBSET_ANOMALIES)
    expected_layout = ("  train/  test/            (images)\n"
                       "  train.txt  test.txt      (Kaggle) or train_COVIDx9A.txt  test_COVIDx9A.txt (COVID-Net repo)")
    download = 'Kaggle dataset "andyczhao/covidx-cxr2" (3-class label files: GitHub lindawangg/COVID-Net, labels/)'
    expected_counts = {
        "COVIDx9A": {"train/normal": 8085, "train/pneumonia": 5555, "train/COVID-19": 16490,
                     "test/normal": 100, "test/pneumonia": 100, "test/COVID-19": 200},
        "COVIDx8A": {"train/normal": 7966, "train/pneumonia": 5475, "train/COVID-19": 2158,
                     "test/normal": 100, "test/pneumonia": 100, "test/COVID-19": 200},
        "COVIDx CXR-3 (binary)": {"train/negative": 13992, "train/positive": 15994, "test/negative": 200, "test/positive": 200},
    }
    default_anomaly_pool = 20

    def __init__(self, *, label_version: str | None = None, negative_as_normal: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label_version = label_version
        self.negative_as_normal = negative_as_normal

    def is_root(self, folder: Path) -> bool:
        return bool(label_files(folder, self.label_version)) and io.child_dir(folder, "train") is not None

    def scan(self, root: Path) -> list[Record]:
        records = []
        for part, label_file in sorted(label_files(root, self.label_version).items()):
            image_dir = io.child_dir(root, part)
            if image_dir is None:
                raise DatasetError(f"covidx: {label_file.name} needs the image folder {root}/{part}/")
            for line_number, line in enumerate(io.read_label_text(label_file).splitlines(), start=1):
                try:
                    parsed = parse_line(line)
                except ValueError as error:
                    raise DatasetError(f"{label_file} line {line_number}: {error}") from None
                if parsed is None:
                    continue
                patient, name, kind = parsed
                if kind == "negative" and not self.negative_as_normal:
                    raise DatasetError(f"covidx: {label_file.name} is a binary (negative/positive) label file; 'negative' "
                                       "includes non-COVID pneumonia, so it is not a normal class. Put the 3-class files "
                                       "(e.g. train_COVIDx9A.txt, test_COVIDx9A.txt from the COVID-Net repository) beside "
                                       "it and set label_version, or set negative_as_normal: true")
                path = io.listed_file(root, name, folder=image_dir, source=label_file, line=line_number)
                relpath = path.relative_to(os.path.realpath(root)).as_posix()
                if not path.is_file():
                    raise DatasetError(f"{label_file} line {line_number} lists {name} but {relpath} is missing")
                records.append(Record(path=relpath, label=int(kind not in ("normal", "negative")),
                                      category=f"{part}/{kind}", group=f"patient:{patient}" if patient else "",
                                      part=part, sample_id=f"{part}/{name}"))
        return records

    def select(self, subset: str, records: list[Record]) -> list[Record]:
        anomalies = SUBSET_ANOMALIES[subset]
        return [r for r in records if r.label == 0 or r.category.split("/", 1)[1] in anomalies]
