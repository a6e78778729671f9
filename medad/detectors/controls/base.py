"""The shared base of the control detectors: grey levels of normal training images, no labels, no learned structure.

A control answers "is a detector better than a shortcut?": it scores an image from what needs no model of anatomy
(its grey-level statistics, its histogram, its per-pixel deviation from the average normal image), fitted on the
training normals alone. Its rows carry the tag ``role: control`` (:meth:`ControlDetector.extra_tags`); the report
and the console show them as controls and never rank them among the detectors, and the shortcut check
(:mod:`medad.evaluation.shortcut`) compares every detector with them on the same test images.

Every control works on the grey image ``g = mean over channels of x`` (x in [0, 1]), in float64 on the host, one
batch of ``batch_size`` images at a time (so a large training set is never held in float64 at once). Its scores are
distances, so an image brighter or darker than the normals scores high either way (no direction is assumed). It
trains nothing: ``fit`` reads the training normals once or twice and keeps a few statistics (its checkpoint holds
them as tensors). A training set whose images are all constant (one grey level each) has nothing to fit and is
refused with an error that says so.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import ClassVar

import torch

from medad.datasets.base import ImageSet
from medad.detectors.base import Detector, NoPixelMap, TrainLog
from medad.evaluation.shortcut import CONTROL_ROLE, ROLE_TAG

# float64 grey images read per step while fitting: 256 images of 256 x 256 pixels are 128 MB
FIT_BATCH = 256


class ConstantImagesError(ValueError):
    """Every training image has one grey level: there is no variation for a control to fit."""


def grey(images: torch.Tensor) -> torch.Tensor:
    """Float images ``(N, C, H, W)`` in [0, 1], on any device, as float64 grey images ``(N, H, W)`` on the host."""
    if images.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    return images.detach().to("cpu", torch.float64).mean(dim=1)


def grey_batches(images: ImageSet, batch_size: int = FIT_BATCH) -> Iterator[torch.Tensor]:
    """The grey images of ``images`` (:func:`grey`), ``batch_size`` at a time, in order."""
    for batch in images.batches(batch_size):
        yield grey(batch)


def check_not_constant(images: ImageSet, name: str) -> None:
    """Raise :class:`ConstantImagesError` when every image of ``images`` (the training normals) has one grey level."""
    if len(images) == 0:
        raise ValueError(f"control {name!r}: the training set is empty; it fits the training normals' grey levels")
    levels = set()
    for batch in grey_batches(images):
        flat = batch.flatten(1)
        if bool((flat.amax(dim=1) > flat.amin(dim=1)).any()):
            return
        levels.update(round(float(v) * 255) for v in flat[:, 0].tolist())
    shown = ", ".join(str(level) for level in sorted(levels)[:5])
    raise ConstantImagesError(
        f"control {name!r}: all {len(images)} training images are constant (each has a single grey level; levels "
        f"found, of 255: {shown}{', ...' if len(levels) > 5 else ''}), so their pixels have no variance to fit. "
        "Expected images with varying grey levels: check that the dataset's files decode to the images (not blank "
        "frames or a placeholder)")


class ControlDetector(Detector):
    """Base of the structure-blind control detectors (see the module docstring): subclasses implement
    :meth:`fit_grey` (the statistics of the training normals) and :meth:`score_grey` (a distance per image)."""

    control: ClassVar[bool] = True
    # whether the control makes pixel maps; one that does not raises NoPixelMap when asked (a clear error)
    has_pixel_map: ClassVar[bool] = False
    paper: ClassVar[str] = ""
    smoke_params: ClassVar[dict] = {}

    def __init__(self, *, image_size: int, channels: int, device: str | torch.device = "cpu", seed: int = 0) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.fitted = False

    def extra_tags(self) -> dict[str, str]:
        return {ROLE_TAG: CONTROL_ROLE}

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        """Refuse constant images, fit the statistics, and log what :meth:`fit_grey` returns (history.csv)."""
        log = log or TrainLog()
        check_not_constant(train, self.name)
        summary = self.fit_grey(train)
        self.fitted = True
        log.log(0, 0, **summary)

    @abc.abstractmethod
    def fit_grey(self, train: ImageSet) -> dict[str, float]:
        """Fit on the training normals (read with :func:`grey_batches`); return values to log (a fit summary)."""

    @abc.abstractmethod
    def score_grey(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` (float64) of grey images ``(N, H, W)``."""

    def score(self, images: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return self.score_grey(grey(images)).float()

    def score_map(self, images: torch.Tensor) -> torch.Tensor | None:
        raise NoPixelMap(f"control {self.name!r} scores whole-image grey-level statistics, which say nothing about "
                         "where in the image a pixel is: it has no pixel map (the 'mean-image' control has one)")

    def check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"control {self.name!r} scores with the statistics of its fit: call fit (or load a "
                               "checkpoint) first")

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = [key for key in self.extra_state_keys() if key not in state]
        if missing:
            raise KeyError(f"checkpoint of control {self.name!r} lacks {missing}")
        for key in self.extra_state_keys():
            setattr(self, key, state[key].to("cpu", torch.float64))
        self.fitted = True

    def extra_state(self) -> dict[str, torch.Tensor]:
        self.check_fitted()
        return {key: getattr(self, key) for key in self.extra_state_keys()}

    @classmethod
    @abc.abstractmethod
    def extra_state_keys(cls) -> tuple[str, ...]:
        """The attributes (float64 tensors) that hold the fitted statistics: the checkpoint."""
