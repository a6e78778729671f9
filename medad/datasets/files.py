"""The shared machinery of file-based adapters: scan -> records -> decode (cached) -> group -> split.

An adapter says how to recognise its root (:meth:`FileDataset.is_root`), turns the files into
:class:`Record` s (:meth:`FileDataset.scan`) and picks a subset's records
(:meth:`FileDataset.select`); this class finds the root through extra nesting levels, decodes
every file through the on-disk cache, groups patients and near-duplicate images, splits with a
seed, and builds the :class:`~medad.datasets.base.Subset`. :meth:`FileDataset.check` is what
``medad datasets check`` prints.
"""

from __future__ import annotations

import abc
import hashlib
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import numpy as np
import torch

from medad.datasets import cache, io
from medad.datasets.base import Dataset, DatasetError, ImageSet, Subset
from medad.datasets.splits import (
    MAX_DUPLICATE_GROUP,
    CopyCounts,
    SplitPlan,
    assign_parts,
    copy_counts,
    duplicate_groups,
    group_labels,
    near_duplicate_matches,
)

# Where the validation normals of the honest threshold come from: carved from the training normals (the
# default), or the training normals themselves (train on a paper's exact training size; in-sample threshold).
VAL_SOURCES = ("carved", "train")
# Near duplicates are looked for on thumbnails of this size, whatever size a job asks for.
HASH_THUMBNAIL_SIZE = 64
# The parts a split gives a record (what a run's splits.csv holds).
SPLIT_PARTS = ("train", "val", "test", "anomaly_pool", "unused")
# Record fields added after the first run folders were written; an identity computed as those versions did leaves
# them out while they are empty (:meth:`FileDataset.identities`).
LATER_RECORD_FIELDS = ("ellipses",)
from medad.params import HoldOutFraction, NonNegativeInt, Range


@dataclass(frozen=True)
class Record:
    """One image as the publisher ships it.

    ``path`` is relative to the dataset root (posix). ``category`` is the publisher's class name
    (what ``datasets check`` counts). ``group`` is a patient/subject id ("" = its own group);
    ``part`` the publisher's split (``train``/``val``/``test`` or ""). ``crop`` = (top, left,
    height, width) in source pixels; ``circles`` = anomaly discs (row, col, radius), ``ellipses`` = rotated
    anomaly ellipses (row, col, rx, ry, theta: see :func:`io.ellipse_mask`) and ``polygons`` = anomaly
    outlines (each a tuple of (row, col) vertices), all in source pixels, where pixel (r, c) is the point (r, c);
    ``mask_known`` is False for an anomalous image the publisher did not outline (its mask is
    unknown, not empty); ``roi_paths`` = region-mask files OR-ed into the ROI; ``mask_paths`` = anomaly-mask
    files (non-zero = anomalous) OR-ed into the anomaly mask.
    """

    path: str
    label: int
    category: str
    group: str = ""
    part: str = ""
    sample_id: str = ""
    crop: tuple[int, int, int, int] | None = None
    circles: tuple[tuple[float, float, float], ...] = ()
    ellipses: tuple[tuple[float, float, float, float, float], ...] = ()
    polygons: tuple[tuple[tuple[float, float], ...], ...] = ()
    mask_known: bool = True
    roi_paths: tuple[str, ...] = ()
    mask_paths: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return self.sample_id or self.path


@dataclass
class SplitResult:
    """A subset's split: the decoded view it comes from, the chosen records (and their rows in the view), their
    labels, each record's part, and the grouping summary written to the run's manifest."""

    view: str
    view_records: list[Record]
    chosen: list[Record]
    index: np.ndarray
    labels: np.ndarray
    parts: list[str]
    info: dict


@dataclass
class CheckReport:
    """What ``medad datasets check`` found: printed lines and whether everything is as expected."""

    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def fail(self, line: str) -> None:
        self.lines.append(f"ERROR: {line}")
        self.ok = False


def _digest(data: bytes) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(data).digest(), dtype=np.uint8)


class FileDataset(Dataset):
    """Base of the adapters that read a publisher's files.

    Split parameters (all seeded by ``split_seed``): ``test_normal_fraction`` of the normals go to
    the test set (default: the study's TABLE 1 ratio, or the adapter's); ``val_fraction`` of the
    training normals form the validation set used for the honest threshold; ``n_anomaly_pool``
    labelled anomalies are held out for semi-supervised detectors, never in the test set.
    ``dedupe`` groups exact and near-duplicate images (dHash within ``duplicate_distance`` of 256
    bits, mirror images and half turns included, by complete linkage: see :mod:`medad.datasets.splits`) so a group stays on one
    side of the split. ``resize_mode`` is ``stretch`` (the study: every image to a square) or ``pad``
    (keep the aspect ratio). ``val_source: train`` trains on every training normal (a paper's exact
    training size, e.g. the study's TABLE 1, which had no validation set) and fixes the honest
    threshold on the training normals' own scores instead: still blind to the test set, but in-sample
    (training images score lower than unseen normals, so the threshold errs towards false positives);
    the ``val_q95`` rows say so in their note. The split never depends on ``image_size``, ``channels``
    or ``resize_mode``: near duplicates are found on fixed-size thumbnails.
    """

    expected_layout: ClassVar[str] = ""
    download: ClassVar[str] = ""
    expected_counts: ClassVar[dict[str, dict[str, int]]] = {}   # variant -> category -> count
    has_masks: ClassVar[bool] = False   # every download has anomaly masks (else see masks_shipped)
    default_test_normal_fraction: ClassVar[float] = 0.2
    default_anomaly_pool: ClassVar[int] = 0
    default_strict_groups: ClassVar[bool] = True

    def __init__(self, *, root: Path | None, image_size: int, channels: int = 1, split_seed: int = 0,
                 resize_mode: Literal[io.RESIZE_MODES] = "stretch", val_fraction: HoldOutFraction = 0.1,
                 test_normal_fraction: HoldOutFraction | None = None, n_anomaly_pool: NonNegativeInt | None = None,
                 dedupe: bool = True, duplicate_distance: Annotated[int, Range(0, 256)] = 8,
                 strict_groups: bool | None = None, val_source: Literal[VAL_SOURCES] = "carved") -> None:
        super().__init__(root=root, image_size=image_size, channels=channels, split_seed=split_seed)
        if resize_mode not in io.RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {', '.join(io.RESIZE_MODES)}, got {resize_mode!r}")
        for key, value in (("val_fraction", val_fraction), ("test_normal_fraction", test_normal_fraction)):
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {value}")
        self.resize_mode = resize_mode
        if val_source not in VAL_SOURCES:
            raise ValueError(f"val_source must be one of {', '.join(VAL_SOURCES)}, got {val_source!r}")
        self.val_source = val_source
        self.plan = SplitPlan(
            seed=self.split_seed,
            test_normal_fraction=self.default_test_normal_fraction if test_normal_fraction is None else test_normal_fraction,
            val_fraction=val_fraction if val_source == "carved" else 0.0,
            n_anomaly_pool=self.default_anomaly_pool if n_anomaly_pool is None else int(n_anomaly_pool),
            strict_groups=self.default_strict_groups if strict_groups is None else strict_groups,
        )
        self.dedupe = dedupe
        self.duplicate_distance = int(duplicate_distance)
        self._root: Path | None = None
        self._records: list[Record] | None = None
        self._recorded: dict[str, dict[str, str]] = {}   # subset -> a run's recorded split (use_recorded_split)

    # ---- what an adapter provides -------------------------------------------------------------

    @abc.abstractmethod
    def is_root(self, folder: Path) -> bool:
        """True when ``folder`` holds the download's signature files."""

    @abc.abstractmethod
    def scan(self, root: Path) -> list[Record]:
        """Every usable image under ``root`` as a Record (raise DatasetError naming bad files)."""

    def select(self, subset: str, records: list[Record]) -> list[Record]:
        """The records of ``subset`` (default: all)."""
        return records

    def decode_view(self, subset: str) -> str:
        """The name of the record set decoded and cached together (default: the subset)."""
        return subset

    def split_scope(self, subset: str, records: list[Record]) -> list[Record]:
        """The records (of the decode view) split together, of which ``subset`` takes its own (default: its own,
        :meth:`select`). Subsets
        that share their normals return all their records: each normal then falls in the same part whichever of
        them is loaded (a normal grouped with any subset's test image is left out of every subset's training)."""
        return self.select(subset, records)

    def ignored(self, relpath: str) -> bool:
        """True for files that ship with the download but are not images the adapter reads."""
        return Path(relpath).suffix.lower() in {".txt", ".csv", ".json", ".md", ".pdf", ".xlsx", ".xls", ".h5", ".tar", ".zip", ".gz"}

    def masks_shipped(self) -> bool:
        """True when this download has anomaly masks (default ``has_masks``; some releases add them)."""
        return self.has_masks

    def options(self) -> str:
        """Decode settings that change pixels (part of the cache key)."""
        return self.resize_mode

    def crop_for(self, record: Record, pixels: np.ndarray) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the record's window, shifted to lie inside the image."""
        height, width = pixels.shape[:2]
        if record.crop is None:
            return 0, 0, height, width
        top, left, crop_h, crop_w = record.crop
        if crop_h > height or crop_w > width:
            raise DatasetError(f"{self.name}: a {crop_h}x{crop_w} crop does not fit in {record.path} ({height}x{width})")
        return (min(max(top, 0), height - crop_h), min(max(left, 0), width - crop_w), crop_h, crop_w)

    def read(self, path: Path) -> np.ndarray:
        """Decode one file (float32 in [0, 1]); adapters with decode options override."""
        return io.read_image(path)

    # ---- shared machinery ---------------------------------------------------------------------

    def data_root(self) -> Path:
        """The folder holding the download, found at or below ``root`` (through extra nesting levels)."""
        if self._root is None:
            if self.root is None:
                raise DatasetError(f"dataset {self.name!r} needs its files: pass --data-root DIR (or set MEDAD_DATA) "
                                   f"with the download unpacked in DIR/{self.name}/, or give 'root' in the config")
            self._root = io.find_root(self.root, self.is_root, dataset=self.name, expected=self.expected_layout,
                                      download=self.download)
        return self._root

    def records(self) -> list[Record]:
        """All records of the download (scanned once)."""
        if self._records is None:
            records = self.scan(self.data_root())
            if not records:
                raise DatasetError(f"{self.name}: no images found under {self.data_root()}; expected:\n{self.expected_layout}")
            ids = Counter(r.id for r in records)
            repeated = [i for i, n in ids.items() if n > 1]
            if repeated:
                raise DatasetError(f"{self.name}: sample id {repeated[0]!r} appears {ids[repeated[0]]} times under {self.data_root()}")
            self._check_paths(records)
            self._records = records
        return self._records

    def _check_paths(self, records: list[Record]) -> None:
        """Every file a record names is UTF-8-named and lies inside the root (no link points out of it)."""
        root = self.data_root()
        real_root = os.path.realpath(root)
        for record in records:
            for relpath in (record.path, *record.roi_paths, *record.mask_paths):
                try:
                    relpath.encode("utf-8")
                except UnicodeEncodeError:
                    raise DatasetError(f"{self.name}: the file name {ascii(relpath)} under {root} is not valid UTF-8; "
                                       "rename it (its bytes cannot be written to the run's CSVs)") from None
                if not os.path.realpath(root / relpath).startswith(real_root + os.sep):
                    raise DatasetError(f"{self.name}: {root / relpath} is a link to a file outside the dataset root "
                                       f"{root}; medad reads nothing outside it: copy the file in instead")

    def _resize_region(self, region: np.ndarray, window: tuple[int, int, int, int], size: int) -> np.ndarray:
        """A bool (H, W) region in source pixels, cropped to ``window`` and resized like its image, as uint8."""
        top, left, crop_h, crop_w = window
        planes = region[top:top + crop_h, left:left + crop_w].astype(np.float32)[None]
        return (io.resize(planes, size, self.resize_mode, nearest=True)[0] > 0.5).astype(np.uint8)

    def _decode_record(self, root: Path, record: Record, size: int,
                       with_mask: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        pixels = self.read(root / record.path)
        height, width = pixels.shape[:2]
        window = top, left, crop_h, crop_w = self.crop_for(record, pixels)
        pixels = pixels[top:top + crop_h, left:left + crop_w]
        image = io.to_uint8(io.resize(io.to_channels(pixels, self.channels), size, self.resize_mode))
        mask = None
        if with_mask:
            anomaly = (io.disc_mask((height, width), record.circles) | io.ellipse_mask((height, width), record.ellipses)
                       | io.polygon_mask((height, width), record.polygons))
            anomaly |= self._union_of(root, record, record.mask_paths, (height, width))
            mask = self._resize_region(anomaly, window, size)
        roi = None
        if record.roi_paths:
            roi = self._resize_region(self._union_of(root, record, record.roi_paths, (height, width)), window, size)
        return image, mask, roi

    def _union_of(self, root: Path, record: Record, paths: tuple[str, ...], shape: tuple[int, int]) -> np.ndarray:
        """The OR of the region-mask files ``paths`` (non-zero pixels) as a bool image of ``shape``."""
        union = np.zeros(shape, dtype=bool)
        for mask_path in paths:
            region = self.read(root / mask_path)
            region = region if region.ndim == 2 else region.max(axis=-1)
            if region.shape != union.shape:
                raise DatasetError(f"{self.name}: mask {mask_path} is {region.shape}, its image {record.path} is {union.shape}")
            union |= region > 0
        return union

    def decode(self, records: list[Record], size: int) -> dict[str, np.ndarray]:
        """Decode ``records`` to uint8 arrays: ``images`` (N, C, S, S), ``masks``/``roi`` (N, S, S), ``has_roi`` (N,)."""
        root = self.data_root()
        images = np.zeros((len(records), self.channels, size, size), dtype=np.uint8)
        masks = np.zeros((len(records), size, size), dtype=np.uint8)
        rois = np.zeros((len(records), size, size), dtype=np.uint8)
        has_roi = np.zeros(len(records), dtype=np.uint8)
        with_masks = self.masks_shipped()
        for index, record in enumerate(records):
            image, mask, roi = self._decode_record(root, record, size, with_masks)
            images[index] = image
            if mask is not None:
                masks[index] = mask
            if roi is not None:
                rois[index], has_roi[index] = roi, 1
        arrays = {"images": images, "has_roi": has_roi}
        if with_masks:
            arrays["masks"] = masks
        if has_roi.any():
            arrays["roi"] = rois
        return arrays

    def _fingerprint(self, records: list[Record], earlier: bool = False) -> str:
        """The files' paths, sizes and modification times and the records (``earlier``: without the empty
        :data:`LATER_RECORD_FIELDS`, as medad computed it before they existed)."""
        root = self.data_root()
        files = [root / p for r in records for p in (r.path, *r.roi_paths, *r.mask_paths)]
        listed = [{k: v for k, v in asdict(r).items() if not (earlier and k in LATER_RECORD_FIELDS and not v)}
                  for r in records]
        try:
            return cache.fingerprint(root, files, listed)
        except FileNotFoundError as error:
            raise DatasetError(f"{self.name}: file listed but missing: {error.filename}") from error

    def cached_decode(self, view: str, records: list[Record]) -> dict[str, np.ndarray]:
        """:meth:`decode` through the on-disk cache, keyed by the files' fingerprint and the records."""
        return cache.cached_arrays(dataset=self.name, view=view, image_size=self.image_size, channels=self.channels,
                                   options=self.options(), fingerprint=self._fingerprint(records),
                                   build=lambda: self.decode(records, self.image_size))

    def hash_thumbnails(self, view: str, records: list[Record]) -> np.ndarray:
        """Grey ``HASH_THUMBNAIL_SIZE`` px thumbnails (N, 1, S, S) of ``records``: see :meth:`hash_inputs`."""
        return self.hash_inputs(view, records)["thumbs"]

    def hash_inputs(self, view: str, records: list[Record]) -> dict[str, np.ndarray]:
        """What near duplicates are found on, through the cache: ``thumbs``, grey ``HASH_THUMBNAIL_SIZE`` px thumbnails
        (N, 1, S, S) decoded the publisher's default way (stretched, each record's crop window); ``pixels``, a SHA-256
        per record of its decoded window (equal = the same picture however it was saved); ``files``, a SHA-256 of
        its file's bytes. None depends on ``image_size``, ``channels``, ``resize_mode`` or a read option, so neither
        does the split."""
        root = self.data_root()

        def build() -> dict[str, np.ndarray]:
            thumbs = np.zeros((len(records), 1, HASH_THUMBNAIL_SIZE, HASH_THUMBNAIL_SIZE), dtype=np.uint8)
            pixel_digests = np.zeros((len(records), 32), dtype=np.uint8)
            file_digests = np.zeros((len(records), 32), dtype=np.uint8)
            for index, record in enumerate(records):
                pixels = io.read_image(root / record.path)
                top, left, crop_h, crop_w = self.crop_for(record, pixels)
                window = io.to_uint8(pixels[top:top + crop_h, left:left + crop_w])
                pixel_digests[index] = _digest(str(window.shape).encode() + window.tobytes())
                file_digests[index] = _digest((root / record.path).read_bytes())
                thumbs[index] = io.to_uint8(io.resize(io.to_channels(pixels[top:top + crop_h, left:left + crop_w], 1),
                                                      HASH_THUMBNAIL_SIZE, "stretch"))
            return {"thumbs": thumbs, "pixels": pixel_digests, "files": file_digests}

        return cache.cached_arrays(dataset=self.name, view=view, image_size=HASH_THUMBNAIL_SIZE, channels=1,
                                   options="dhash-thumbnails-digests", fingerprint=self._fingerprint(records), build=build)

    def view_of(self, subset: str, records: list[Record]) -> tuple[str, list[Record], dict[str, int]]:
        """The decode view of ``subset`` (:meth:`decode_view`), its records (decoded, cached and hashed together) and
        each record id's position among them."""
        view = self.decode_view(subset)
        view_records = records if view != subset else self.select(subset, records)
        return view, view_records, {r.id: i for i, r in enumerate(view_records)}

    def identity(self, subset: str) -> str:
        """The fingerprint of the subset's source files (paths, sizes, modification times) and records."""
        self.check_subset(subset)
        return self._fingerprint(self.view_of(subset, self.records())[1])

    def identities(self, subset: str) -> list[str]:
        """:meth:`identity`, then the same computed as medad did before :data:`LATER_RECORD_FIELDS` existed."""
        self.check_subset(subset)
        view_records = self.view_of(subset, self.records())[1]
        return list(dict.fromkeys([self._fingerprint(view_records), self._fingerprint(view_records, earlier=True)]))

    def use_recorded_split(self, subset: str, parts: dict[str, str]) -> None:
        """Give ``subset`` the parts a run recorded (sample id -> part, its ``splits.csv``) instead of this medad's
        rule; :meth:`split` checks that they name exactly the subset's images."""
        self.check_subset(subset)
        wrong = sorted({part for part in parts.values() if part not in SPLIT_PARTS})
        if wrong:
            raise DatasetError(f"{self.name}/{subset}: a recorded split has part {wrong[0]!r}; the parts are "
                               f"{', '.join(SPLIT_PARTS)}")
        self._recorded[subset] = dict(parts)

    @staticmethod
    def images_digest(view_records: list[Record], files: np.ndarray, chosen: list[Record]) -> str:
        """A short SHA-256 of the ``chosen`` records' ids, labels and image files' bytes (``files``: one SHA-256 row
        per view record, :meth:`hash_inputs`' ``files``): equal digests mean the same images with the same labels,
        whatever their files' modification times and whichever medad lists them."""
        position = {r.id: i for i, r in enumerate(view_records)}
        digest = hashlib.sha256()
        for record in sorted(chosen, key=lambda r: r.id):
            digest.update(f"{record.id}\0{record.label}\0{files[position[record.id]].tobytes().hex()}\n".encode(
                "utf-8", "surrogateescape"))
        return digest.hexdigest()[:16]

    def _recorded_parts(self, subset: str, chosen: list[Record]) -> list[str]:
        """The parts of ``chosen`` in the recorded split of ``subset``; a DatasetError when it names other images."""
        recorded = self._recorded[subset]
        ids = [r.id for r in chosen]
        missing, extra = [i for i in ids if i not in recorded], sorted(set(recorded) - set(ids))
        if missing or extra:
            raise DatasetError(f"{self.name}/{subset}: the recorded split names other images than {self.data_root()} "
                               f"holds: {len(missing)} of its images are not in it (e.g. {missing[:1]}), "
                               f"{len(extra)} of its ids are not in the download (e.g. {extra[:1]})")
        return [recorded[i] for i in ids]

    def split(self, subset: str) -> SplitResult:
        """Which record of ``subset`` goes where: a function of the files, the parameters that choose images and
        ``split_seed`` alone (never of ``image_size``, ``channels`` or ``resize_mode``); or, after
        :meth:`use_recorded_split`, the parts a run recorded (its summary then says ``split_source: recorded``).
        The summary's ``images_digest`` (:meth:`images_digest`) says which images the split is of."""
        self.check_subset(subset)
        records = self.records()
        view, view_records, position = self.view_of(subset, records)
        chosen = self.select(subset, records)
        index = np.array([position[r.id] for r in chosen], dtype=np.int64)
        if len(index) == 0:
            raise DatasetError(f"{self.name}: subset {subset!r} has no images under {self.data_root()}")
        labels = np.array([r.label for r in chosen], dtype=np.int64)
        hashed = self.hash_inputs(view, view_records)  # cached: thumbnails and digests, decoded once
        digest = self.images_digest(view_records, hashed["files"], chosen)
        if subset in self._recorded:
            parts = self._recorded_parts(subset, chosen)
            info = {"root": str(self.data_root()), "split_source": "recorded", "images_digest": digest,
                    "unused": parts.count("unused"), "split": asdict(self.plan), "val_source": self.val_source}
            return SplitResult(view, view_records, chosen, index, labels, parts, info)
        scope = self.split_scope(subset, records)
        scope_labels = np.array([r.label for r in scope], dtype=np.int64)
        duplicates, copies = None, CopyCounts()
        if self.dedupe:
            in_scope = np.array([position[r.id] for r in scope], dtype=np.int64)
            matches = near_duplicate_matches(hashed["thumbs"][in_scope], self.duplicate_distance)
            duplicates = duplicate_groups(len(scope), matches)
            copies = copy_counts(duplicates.labels, matches, hashed["pixels"][in_scope], hashed["files"][in_scope])
            if duplicates.refused_by_cap:
                warnings.warn(f"{self.name}/{subset}: {duplicates.refused_by_cap} merges of near duplicates were refused "
                              f"at the cap of {MAX_DUPLICATE_GROUP} images a group: the download holds more than "
                              f"{MAX_DUPLICATE_GROUP} mutual near copies of one image (e.g. "
                              f"{self._largest_group_example(scope, duplicates.labels)}); the copies beyond the cap "
                              "form further groups, which the split may put on both sides", stacklevel=2)
        groups = group_labels(len(scope), [r.group for r in scope],
                              duplicates=None if duplicates is None else duplicates.labels)
        part_of = dict(zip((r.id for r in scope), assign_parts(scope_labels, groups, [r.part for r in scope], self.plan)))
        parts = [part_of[r.id] for r in chosen]
        sizes = duplicates.sizes() if duplicates is not None else []
        examples = {f"example_{kind}": [scope[i].id, scope[j].id] for kind, (i, j) in copies.examples.items()}
        info = {"root": str(self.data_root()), "duplicate_distance": self.duplicate_distance if self.dedupe else None,
                "near_duplicate_pairs": duplicates.pairs if duplicates is not None else 0,
                "duplicate_groups": len(sizes), "images_in_duplicate_groups": sum(sizes),
                "largest_duplicate_group": sizes[0] if sizes else 1,
                "largest_duplicate_group_example": (self._largest_group_example(scope, duplicates.labels)
                                                    if sizes else ""),
                "duplicate_merges_refused_by_cap": duplicates.refused_by_cap if duplicates is not None else 0,
                "exact_copy_pairs": copies.exact, "byte_identical_pairs": copies.byte_identical,
                "flipped_or_rotated_pairs": copies.transformed, "near_copy_pairs": copies.near, **examples,
                "unused": parts.count("unused"), "split": asdict(self.plan), "val_source": self.val_source,
                "images_digest": digest}
        return SplitResult(view, view_records, chosen, index, labels, parts, info)

    @staticmethod
    def _largest_group_example(records: list[Record], labels: np.ndarray) -> str:
        """The first file of the largest near-duplicate group and how many images the group holds."""
        counts = np.bincount(labels)
        members = np.flatnonzero(labels == counts.argmax())
        others = len(members) - 1
        return f"{records[members[0]].id} and {others} near cop{'y' if others == 1 else 'ies'}"

    def load(self, subset: str) -> Subset:
        split = self.split(subset)
        chosen, parts, labels = split.chosen, split.parts, split.labels
        arrays = self.cached_decode(split.view, split.view_records)
        images = arrays["images"][split.index]
        masks = arrays["masks"][split.index] if "masks" in arrays else None
        mask_known = np.array([r.mask_known for r in chosen], dtype=bool)
        roi = arrays["roi"][split.index] if "roi" in arrays and arrays["has_roi"][split.index].all() else None

        def part(name: str) -> ImageSet | None:
            where = np.array([i for i, p in enumerate(parts) if p == name], dtype=np.int64)
            if len(where) == 0:
                return None
            return ImageSet(
                images=torch.from_numpy(images[where]), labels=labels[where], ids=[chosen[i].id for i in where],
                masks=None if masks is None else torch.from_numpy(masks[where]),
                roi_masks=None if roi is None else torch.from_numpy(roi[where]),
                mask_known=None if masks is None else mask_known[where],
            )

        train, test = part("train"), part("test")
        if train is None or test is None or not (test.labels == 1).any():
            counts = Counter(parts)
            raise DatasetError(f"{self.name}/{subset}: the split left no training normals, test images or test "
                               f"anomalies ({dict(counts)}); the download under {self.data_root()} is too small")
        unused = [(chosen[i].id, int(labels[i])) for i, p in enumerate(parts) if p == "unused"]
        in_sample = self.val_source == "train"
        return Subset(name=subset, train=train, test=test, val=train if in_sample else part("val"),
                      anomaly_pool=part("anomaly_pool"), split_info=split.info, unused=unused, val_in_sample=in_sample)

    # ---- medad datasets check -----------------------------------------------------------------

    def check(self, *, strict_counts: bool = True) -> CheckReport:
        """Layout, counts per class vs the known variants, unreadable and unexpected files, duplicate groups."""
        report = CheckReport()
        try:
            root = self.data_root()
            records = self.records()
        except DatasetError as error:
            report.fail(str(error))
            return report
        report.lines.append(f"{self.name}: found the download at {root}")
        by_path = {r.path: r for r in records}.values()
        counts = Counter(r.category for r in by_path)
        report.lines.append("images per class: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        if self.masks_shipped():
            anomalous = [r for r in by_path if r.label == 1]
            known = sum(r.mask_known for r in anomalous)
            report.lines.append(f"anomaly masks: {known} of {len(anomalous)} anomalous images annotated"
                                + ("; pixel metrics use only those and the normals" if known < len(anomalous) else ""))
            report.lines.extend(self.mask_notes(root))
        if self.expected_counts:
            matches = [name for name, expected in self.expected_counts.items() if dict(counts) == expected]
            if matches:
                report.lines.append(f"counts match the known variant: {matches[0]}")
            else:
                known = " | ".join(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(exp.items()))
                                   for name, exp in self.expected_counts.items())
                line = f"counts differ from every known variant (expected one of: {known})"
                report.fail(line) if strict_counts else report.lines.append(f"WARNING: {line}")
        unreadable = []
        paths = sorted({r.path for r in records} | {p for r in records for p in (*r.roi_paths, *r.mask_paths)})
        for relpath in paths:
            try:
                self.read(root / relpath)
            except DatasetError as error:
                unreadable.append(str(error))
        for line in unreadable[:20]:
            report.fail(line)
        if len(unreadable) > 20:
            report.fail(f"... and {len(unreadable) - 20} more unreadable files")
        referenced = set(paths)
        unexpected = [p.relative_to(root).as_posix() for p in io.walk_files(root)
                      if p.relative_to(root).as_posix() not in referenced and not self.ignored(p.relative_to(root).as_posix())]
        if unexpected:
            report.lines.append(f"WARNING: {len(unexpected)} unexpected file(s) not read: " + ", ".join(unexpected[:10])
                                + (" ..." if len(unexpected) > 10 else ""))
        if not unreadable:
            for subset in self.subsets:
                report.lines.append(self._split_line(subset))
        report.lines.append("OK" if report.ok else "NOT OK")
        return report

    def mask_notes(self, root: Path) -> list[str]:
        """Lines for ``datasets check`` on how the anomaly masks were read (an adapter with annotation files says)."""
        return []

    def _split_line(self, subset: str) -> str:
        """What the default split of ``subset`` does: its parts, the near-duplicate groups, the images left out."""
        try:
            info, parts = (result := self.split(subset)).info, Counter(result.parts)
        except DatasetError as error:
            return f"{subset}: no split ({error})"
        sizes = ", ".join(f"{name} {parts[name]}" for name in ("train", "val", "test", "anomaly_pool", "unused")
                          if parts[name])
        grouping = self._grouping_text(info) if self.dedupe else "near duplicates not grouped"
        return f"{subset}: split {sizes}; {grouping}; unused {info['unused']}"

    def _grouping_text(self, info: dict) -> str:
        """The near-duplicate groups of a split summary in words: the rule, how many, the largest, and what the
        pairs in them are (exact copies, flipped or turned copies, other near copies), each with an example."""
        rule = f"dHash <= {self.duplicate_distance} of 256 bits, as is, mirrored or turned half round"
        if not info["duplicate_groups"]:
            return f"no near duplicates ({rule})"

        def example(kind: str, sign: str) -> str:
            pair = info.get(f"example_{kind}")
            return f" (e.g. {pair[0]} {sign} {pair[1]})" if pair else ""

        def pairs(count: int) -> str:
            return f"{count} pair{'' if count == 1 else 's'}"

        exact, identical = info["exact_copy_pairs"], info["byte_identical_pairs"]
        if exact:
            exact = pairs(exact) + (", all byte-identical" if identical == exact else
                                    ", the same pixels in different files" if not identical else
                                    f", {identical} byte-identical, the others the same pixels in different files")
        else:
            exact = "none"
        refused = info["duplicate_merges_refused_by_cap"]
        return (f"near-duplicate groups ({rule}, complete linkage): {info['duplicate_groups']} holding "
                f"{info['images_in_duplicate_groups']} images, the largest {info['largest_duplicate_group']} "
                f"({info['largest_duplicate_group_example']}); exact copies: {exact}{example('exact', '=')}; "
                f"near copies: {pairs(info['flipped_or_rotated_pairs'])} mirrored or turned"
                f"{example('transformed', '~')}, {pairs(info['near_copy_pairs'])} re-encoded, resized, cropped or "
                f"contrast-changed{example('near', '~')}"
                + (f"; {refused} merges refused at the cap of {MAX_DUPLICATE_GROUP}" if refused else ""))
