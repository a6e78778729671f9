"""``intensity``: a control that scores an image by how far its grey-level statistics lie from the normals'.

Per image (grey levels g in [0, 1], all pixels): the mean, the standard deviation, the 5th, 25th, 50th, 75th and
95th percentiles, and the fraction of pixels above the background level. Why these: the mean is the shortcut itself
(on the Head-CT download, mean intensity alone ranks haemorrhages above normals); the standard deviation is the
image's global contrast; the percentiles describe the shape of the grey-level distribution robustly (a bright
haemorrhage lifts the upper ones, a dark infarct lowers the lower ones, a larger or smaller field of view moves them
all); the fraction above the background is how much of the frame the body part fills (scan size and zoom, which
differ between acquisitions). Each statistic ignores where a pixel is: shuffle the pixels and none changes, so the
control cannot see anatomy or a lesion's shape, only what the grey levels give away.

Background level: Otsu's threshold (the level that maximises the between-class variance of the pooled grey-level
histogram, Otsu 1979) of the training normals' pixels, or ``background_level`` when given.

Score: the regularised Mahalanobis distance of the image's statistics from the training normals'. Each statistic is
standardised by the training mean and standard deviation (the latter floored at one grey level, 1/255, so that a
statistic constant over the training images cannot divide by zero); with R the correlation matrix of the
standardised training statistics and z an image's standardised statistics,

    score = sqrt(z^T ((1 - shrinkage) R + shrinkage I)^-1 z)

(``shrinkage`` pulls R towards the identity, which keeps the inverse stable when statistics are nearly collinear,
as the percentiles are). It is a quadratic form: brighter and darker than normal both score high.
"""

from __future__ import annotations

import numpy as np
import torch

from medad.datasets.base import ImageSet
from medad.detectors.controls.base import ControlDetector, grey_batches
from medad.params import Probability, UnitFraction
from medad.registry import register_detector

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
STATISTICS = ("mean", "std", *(f"q{round(100 * q):02d}" for q in QUANTILES), "foreground_fraction")
GREY_LEVEL = 1.0 / 255.0  # the floor of a statistic's training standard deviation
OTSU_BINS = 256


def otsu_level(histogram: np.ndarray) -> float:
    """Otsu's threshold of a grey-level ``histogram`` over [0, 1] (equal bins): the upper edge of the last bin of
    the lower class, for the split that maximises the between-class variance (Otsu, IEEE SMC 9:62, 1979)."""
    counts = np.asarray(histogram, dtype=np.float64)
    centres = (np.arange(len(counts)) + 0.5) / len(counts)
    weight_low = np.cumsum(counts)[:-1]
    weight_high = counts.sum() - weight_low
    mass_low = np.cumsum(counts * centres)[:-1]
    mass_high = (counts * centres).sum() - mass_low
    with np.errstate(divide="ignore", invalid="ignore"):
        between = weight_low * weight_high * (mass_low / weight_low - mass_high / weight_high) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    return float((int(np.argmax(between)) + 1) / len(counts))


def image_statistics(images: torch.Tensor, background_level: float) -> torch.Tensor:
    """The statistics of :data:`STATISTICS` of grey images ``(N, H, W)``: ``(N, 8)`` float64."""
    flat = images.flatten(1)
    quantiles = torch.from_numpy(np.quantile(flat.numpy(), QUANTILES, axis=1).T.copy())
    foreground = (flat > background_level).double().mean(dim=1, keepdim=True)
    return torch.cat([flat.mean(dim=1, keepdim=True), flat.std(dim=1, correction=0, keepdim=True), quantiles,
                      foreground], dim=1)


@register_detector("intensity")
class IntensityControl(ControlDetector):
    """CONTROL: distance of an image's grey-level statistics (mean, std, percentiles, foreground) from the normals'."""

    paper = ("CONTROL (structure-blind): grey-level statistics of the image, regularised Mahalanobis distance "
             "from the training normals'")

    def __init__(self, *, image_size: int, channels: int, device: str | torch.device = "cpu", seed: int = 0,
                 shrinkage: UnitFraction = 0.1, background_level: Probability | None = None) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.shrinkage, self.background_level = float(shrinkage), background_level

    @classmethod
    def extra_state_keys(cls) -> tuple[str, ...]:
        return ("centre", "scale", "precision", "level")

    def fit_grey(self, train: ImageSet) -> dict[str, float]:
        if len(train) < 2:
            raise ValueError(f"control {self.name!r} needs at least 2 training images (a covariance), got {len(train)}")
        if self.background_level is None:
            pooled = sum(np.histogram(batch.numpy(), bins=OTSU_BINS, range=(0.0, 1.0))[0] for batch in grey_batches(train))
            level = otsu_level(pooled)
        else:
            level = float(self.background_level)
        statistics = torch.cat([image_statistics(batch, level) for batch in grey_batches(train)])
        self.level = torch.tensor(level, dtype=torch.float64)
        self.centre = statistics.mean(dim=0)
        self.scale = (statistics.var(dim=0, correction=1) + GREY_LEVEL ** 2).sqrt()
        standardised = (statistics - self.centre) / self.scale
        correlation = torch.cov(standardised.T, correction=1)
        regularised = (1.0 - self.shrinkage) * correlation + self.shrinkage * torch.eye(len(STATISTICS), dtype=torch.float64)
        self.precision = torch.linalg.inv(regularised)
        return {"train_distance": float(self._distance(statistics).mean()), "background_level": level}

    def _distance(self, statistics: torch.Tensor) -> torch.Tensor:
        z = (statistics - self.centre) / self.scale
        return torch.einsum("ni,ij,nj->n", z, self.precision, z).clamp_min(0.0).sqrt()

    def score_grey(self, images: torch.Tensor) -> torch.Tensor:
        return self._distance(image_statistics(images, float(self.level)))
