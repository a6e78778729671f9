"""The dataset contract: a dataset yields named subsets of train normals, validation normals and a labelled test set."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch


@dataclass
class ImageSet:
    """Images with their labels and ids; masks where the data has them.

    ``images`` is uint8 ``(N, C, H, W)`` (the decode cache stores exactly this); ``batches`` hands a
    detector float32 tensors in [0, 1]. A job moves ``images`` and ``roi_masks`` to its device once (:meth:`to`), so
    a detector must not assume they are on the host (``.cpu()`` before ``.numpy()``). ``labels`` are 0 = normal,
    1 = anomalous. ``masks`` are ``(N, H, W)`` uint8 pixel labels of the anomaly; ``roi_masks`` ``(N, H, W)`` uint8
    regions of interest (the organ), for detectors whose training target is a region. ``mask_known`` ``(N,)`` bool
    says which masks are real annotations: False for an anomalous image the publisher did not outline (its all-zero
    mask means "unknown", not "no anomaly"). It defaults to all True when ``masks`` is given and is None when there
    are no masks.
    """

    images: torch.Tensor
    labels: np.ndarray
    ids: list[str]
    masks: torch.Tensor | None = None
    roi_masks: torch.Tensor | None = None
    mask_known: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"ImageSet.images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        n = len(self.images)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.labels) != n or len(self.ids) != n:
            raise ValueError(f"ImageSet has {n} images, {len(self.labels)} labels and {len(self.ids)} ids")
        for name in ("masks", "roi_masks"):
            masks = getattr(self, name)
            if masks is not None and tuple(masks.shape) != (n, *self.images.shape[2:]):
                raise ValueError(f"ImageSet.{name} must be (N, H, W) = {(n, *self.images.shape[2:])}, got {tuple(masks.shape)}")
        if self.masks is None:
            if self.mask_known is not None:
                raise ValueError("ImageSet.mask_known is given but masks is None")
        else:
            known = np.ones(n, dtype=bool) if self.mask_known is None else np.asarray(self.mask_known, dtype=bool)
            if known.shape != (n,):
                raise ValueError(f"ImageSet.mask_known must be (N,) = ({n},), got {known.shape}")
            self.mask_known = known

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def to(self, device: str | torch.device) -> ImageSet:
        """This set with its uint8 images and ROI masks on ``device`` (labels, ids and pixel masks stay on the host),
        so that each batch is gathered, converted to float and scaled on the device: no host copy per batch."""
        device = torch.device(device)
        if self.images.device == device and (self.roi_masks is None or self.roi_masks.device == device):
            return self
        return replace(self, images=self.images.to(device),
                       roi_masks=None if self.roi_masks is None else self.roi_masks.to(device))

    def float_images(self, index: slice | np.ndarray | torch.Tensor = slice(None)) -> torch.Tensor:
        """Images at ``index`` as float32 in [0, 1], on the images' device (uint8 / 255: exact in both places)."""
        if isinstance(index, torch.Tensor):  # a host index copied without waiting for the device's queue
            index = index.to(self.images.device, non_blocking=True)
        return self.images[index].float().div_(255.0)

    def mean_intensities(self, batch_size: int = 512) -> np.ndarray:
        """Each image's mean grey level over all its pixels and channels, in [0, 1]: ``(N,)`` float64 (what the
        shortcut check correlates scores with)."""
        parts = [self.images[start:start + batch_size].double().mean(dim=(1, 2, 3)).div_(255.0).cpu()
                 for start in range(0, len(self), batch_size)]
        return torch.cat(parts).numpy() if parts else np.zeros(0)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[torch.Tensor]:
        """Float batches in [0, 1] on the images' device; shuffled with ``generator`` (on the host, so the order is
        the same on every device) when asked (seeded training)."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        order = order.to(self.images.device, non_blocking=True)  # one copy per pass, not one per batch
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            yield self.float_images(order[start:start + batch_size])

    def subset(self, index: np.ndarray) -> ImageSet:
        """The images at integer ``index``, with their labels, ids, masks and which masks are known."""
        index_t = torch.as_tensor(index, dtype=torch.long)
        return ImageSet(
            images=self.images[index_t],
            labels=self.labels[index],
            ids=[self.ids[i] for i in index],
            masks=None if self.masks is None else self.masks[index_t],
            roi_masks=None if self.roi_masks is None else self.roi_masks[index_t],
            mask_known=None if self.mask_known is None else self.mask_known[index],
        )

    @classmethod
    def concat(cls, sets: list[ImageSet]) -> ImageSet:
        """One ImageSet from several of the same size and channels (masks kept only where all have them)."""
        def joined(name: str) -> torch.Tensor | None:
            parts = [getattr(s, name) for s in sets]
            return torch.cat(parts) if all(p is not None for p in parts) else None

        masks = joined("masks")
        return cls(
            images=torch.cat([s.images for s in sets]),
            labels=np.concatenate([s.labels for s in sets]),
            ids=[i for s in sets for i in s.ids],
            masks=masks,
            roi_masks=joined("roi_masks"),
            mask_known=None if masks is None else np.concatenate([s.mask_known for s in sets]),
        )

    def without_labels(self) -> ImageSet:
        """A copy whose labels are all -1 (unknown), for code that must not see them."""
        return ImageSet(self.images, np.full(len(self), -1), list(self.ids), None, self.roi_masks)


@dataclass
class Subset:
    """One evaluation unit of a dataset: train normals, validation normals, a labelled test set.

    ``anomaly_pool`` holds labelled anomalies for semi-supervised detectors only; it never overlaps
    the test set. ``split_info`` summarises how the split was made (grouping, sizes, a fingerprint);
    ``unused`` lists the images it left out (a published training image whose near duplicate is in the
    test set). :meth:`split_rows` is the audit trail written into the run folder's ``splits.csv``.
    """

    name: str
    train: ImageSet
    test: ImageSet
    val: ImageSet | None = None
    anomaly_pool: ImageSet | None = None
    split_info: dict[str, object] = field(default_factory=dict)
    unused: list[tuple[str, int]] = field(default_factory=list)   # (id, label) of images the split left out
    val_in_sample: bool = False   # the validation normals are the training normals (no carved validation set)

    def __post_init__(self) -> None:
        if np.any(self.train.labels != 0):
            raise ValueError(f"subset {self.name!r}: the training set must hold normal images only")
        if self.val is not None and np.any(self.val.labels != 0):
            raise ValueError(f"subset {self.name!r}: the validation set must hold normal images only")
        test_ids = set(self.test.ids)
        for part_name, part in (("train", self.train), ("val", self.val), ("anomaly_pool", self.anomaly_pool)):
            if part is not None and test_ids.intersection(part.ids):
                overlap = sorted(test_ids.intersection(part.ids))[:3]
                raise ValueError(f"subset {self.name!r}: {part_name} and test share ids, e.g. {overlap}")

    def to(self, device: str | torch.device) -> Subset:
        """This subset with every part's images (and ROI masks) on ``device``: see :meth:`ImageSet.to`. A part that
        is another part (validation normals that are the training normals) is moved once and stays that part."""
        done: dict[int, ImageSet] = {}

        def moved(part: ImageSet | None) -> ImageSet | None:
            if part is None:
                return None
            if id(part) not in done:
                done[id(part)] = part.to(device)
            return done[id(part)]

        return replace(self, train=moved(self.train), test=moved(self.test), val=moved(self.val),
                       anomaly_pool=moved(self.anomaly_pool))

    def split_rows(self) -> list[tuple[str, str, int]]:
        """(sample_id, part, label) for every image: the audit trail of the split."""
        rows = [(i, "train", 0) for i in self.train.ids]
        if self.val is not None and not self.val_in_sample:
            rows += [(i, "val", 0) for i in self.val.ids]
        if self.anomaly_pool is not None:
            rows += [(i, "anomaly_pool", int(label)) for i, label in zip(self.anomaly_pool.ids, self.anomaly_pool.labels)]
        rows += [(i, "test", int(label)) for i, label in zip(self.test.ids, self.test.labels)]
        rows += [(i, "unused", int(label)) for i, label in self.unused]
        return rows


class DatasetError(RuntimeError):
    """A dataset is missing, malformed, or cannot give what a job asks of it."""


class Dataset(abc.ABC):
    """Base class of dataset adapters.

    Subclasses set ``subsets`` and implement :meth:`load`. Parameters from the config reach
    ``__init__`` as keyword arguments; ``root`` is ``<data-root>/<name>`` unless the config gives one.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    subsets: ClassVar[tuple[str, ...]] = ()
    needs_download: ClassVar[bool] = True

    def __init__(self, *, root: Path | None, image_size: int, channels: int = 1, split_seed: int = 0) -> None:
        self.root = None if root is None else Path(root)
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.split_seed = int(split_seed)

    @abc.abstractmethod
    def load(self, subset: str) -> Subset:
        """Build subset ``subset`` (one of ``self.subsets``)."""

    def identity(self, subset: str) -> str:
        """What ``subset``'s images are, independent of how they are decoded (``image_size``, ``channels``): the
        source files' fingerprint, a generator's parameters. Part of the split's fingerprint, so a run can tell
        whether a dataset changed since (``medad run --extend``, ``medad report A B``)."""
        return ""

    def identities(self, subset: str) -> list[str]:
        """:meth:`identity` as this medad computes it, then as earlier versions did where that differs for the same
        files (a run folder's fingerprints are checked against each)."""
        return [self.identity(subset)]

    def use_recorded_split(self, subset: str, parts: dict[str, str]) -> None:
        """Split ``subset`` as a run recorded it (sample id -> part) instead of by this medad's rule: a run whose
        files are unchanged but whose split rule changed since keeps its test images (``medad run --extend``).
        Datasets whose split is not made from a list of records cannot."""
        raise DatasetError(f"dataset {self.name!r} cannot take a recorded split (its split is not made from files)")

    @classmethod
    def training_view(cls, subset: str) -> str:
        """The name of the images ``subset``'s detectors train on (training and validation normals, anomaly pool):
        subsets with the same training view train on the same images, so jobs that differ only in the subset share
        one fit. Default: the subset's own. An adapter returns one name for several subsets only where its split
        gives them the same training images by construction (the harness checks it before sharing)."""
        return subset

    def check_subset(self, subset: str) -> None:
        """Raise a clear error for an unknown subset name."""
        if subset not in self.subsets:
            raise DatasetError(f"dataset {self.name!r} has no subset {subset!r}; its subsets: {', '.join(self.subsets)}")
