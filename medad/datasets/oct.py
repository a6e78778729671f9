"""``oct``: Retinal OCT (Kermany et al., "OCT2017"; Kaggle "paultimothymooney/kermany2018" or Mendeley v2).

``OCT2017 /{train,test}/{CNV,DME,DRUSEN,NORMAL}/<CLASS>-<patient>-<n>.jpeg`` (the folder name may
end with a space or an underscore; some versions hold a second copy, of which the shallowest is
read). Study (Esmaeili et al., TABLE 1): train = all of ``train/NORMAL`` (26315), test = the 242
test normals plus the 242 test images of one disease, three tasks (subsets ``cnv``, ``dme``,
``drusen``). Subset ``all`` is BMAD's OCT2017 protocol (Bao et al., 2023) and ProxyAno's: the same
test normals against the test images of all three diseases pooled (242 + 726 with the Kaggle release;
250 + 750 with Mendeley v2). The publisher's patient-level train/test split is kept; the validation
normals are carved from ``train/NORMAL`` by patient. The four subsets share one split and train on
the same normals, so one fit serves all four. ``val/`` (8 per class) and the diseased training images
are not used.
"""

from __future__ import annotations

from pathlib import Path

from medad.datasets import io
from medad.datasets.files import FileDataset, Record
from medad.registry import register_dataset

CLASSES = ("NORMAL", "CNV", "DME", "DRUSEN")


def _class_dirs(split: Path | None) -> dict[str, Path] | None:
    if split is None:
        return None
    dirs = {name: io.child_dir(split, name) for name in CLASSES}
    return None if any(d is None for d in dirs.values()) else dirs


@register_dataset("oct")
class RetinalOCT(FileDataset):
    """Kermany OCT2017: NORMAL vs CNV / DME / DRUSEN, one subset per disease, and ``all`` pooling the three."""

    paper = ("Retinal OCT (Kermany et al. 2018, OCT2017); study TABLE 1: 26315 normals train, 242+242 test per disease; "
             "all: BMAD's 242 normals + 726 diseased")
    subsets = ("cnv", "dme", "drusen", "all")
    expected_layout = ("  OCT2017 /train/{CNV,DME,DRUSEN,NORMAL}/CNV-1016042-1.jpeg ...\n"
                       "  OCT2017 /test/{CNV,DME,DRUSEN,NORMAL}/...")
    download = 'Kaggle dataset "paultimothymooney/kermany2018" (or Mendeley Data "Labeled OCT and Chest X-Ray Images", OCT2017.tar.gz)'
    expected_counts = {
        "Kaggle": {"train/NORMAL": 26315, "test/NORMAL": 242, "test/CNV": 242, "test/DME": 242, "test/DRUSEN": 242},
        "Mendeley v2": {"train/NORMAL": 26315, "test/NORMAL": 250, "test/CNV": 250, "test/DME": 250, "test/DRUSEN": 250},
    }

    def is_root(self, folder: Path) -> bool:
        return _class_dirs(io.child_dir(folder, "train")) is not None and _class_dirs(io.child_dir(folder, "test")) is not None

    def scan(self, root: Path) -> list[Record]:
        records = []
        wanted = [("train", "NORMAL")] + [("test", name) for name in CLASSES]
        for split, name in wanted:
            folder = _class_dirs(io.child_dir(root, split))[name]
            for path in sorted(folder.iterdir(), key=lambda p: io.natural_key(p.name)):
                if not path.is_file() or io.is_junk(path) or path.suffix.lower() not in io.IMAGE_SUFFIXES:
                    continue
                tokens = path.stem.split("-")
                patient = tokens[1] if len(tokens) >= 3 else ""
                records.append(Record(path=path.relative_to(root).as_posix(), label=int(name != "NORMAL"),
                                      category=f"{split}/{name}", group=patient, part=split))
        return records

    def select(self, subset: str, records: list[Record]) -> list[Record]:
        if subset == "all":
            return records
        disease = subset.upper()
        return [r for r in records if r.category.endswith("/NORMAL") or r.category == f"test/{disease}"]

    def decode_view(self, subset: str) -> str:
        return "all"  # the normals are shared by the four subsets: decode them once

    def split_scope(self, subset: str, records: list[Record]) -> list[Record]:
        return records  # one split for the three tasks: the same training, validation and test normals

    @classmethod
    def training_view(cls, subset: str) -> str:
        return "normals"  # the four subsets train on the same normals (split_scope): one fit serves all four

    def ignored(self, relpath: str) -> bool:
        parts = relpath.split("/")
        return super().ignored(relpath) or parts[0].lower().rstrip(" _") in ("val",) or (
            parts[0].lower() == "train" and len(parts) > 1 and parts[1].upper() != "NORMAL")
