"""``mean-image``: a control that scores each pixel by its deviation from the average normal image at that position.

From the training normals' grey images g (in [0, 1]): the per-pixel mean mu and standard deviation sigma. The
anomaly map of an image is its squared per-pixel z-score

    m(p) = (g(p) - mu(p))^2 / (sigma(p)^2 + s0^2)

with s0 the median of sigma over the pixels (floored at one grey level, 1/255): a pixel that never varies in the
training images (a black background) would otherwise turn sensor noise into an infinite score. The image score is
the mean of the map's largest ``top_fraction`` pixels (1: the plain mean), as the ``ae`` baseline pools its error
map, so a compact deviation is not diluted by the rest of the image. Squared: brighter and darker both count.

Why it belongs beside the two whole-image controls: it is the only one with a pixel map, so the pixel metrics
(pixel ROC AUC, AUPRO, Dice) get a reference too, and it is the simplest model that knows *where* a pixel is:
a template with no learned structure. On datasets whose images are aligned (registered brain MRI) it finds
lesions that differ from the average tissue at their place; a detector that does not beat it has learned no more
about anatomy than the average normal image holds. It fits in one pass over the training normals.
"""

from __future__ import annotations

import torch

from medad.datasets.base import ImageSet
from medad.detectors.controls.base import ControlDetector, grey, grey_batches
from medad.detectors.scoring import top_fraction_mean
from medad.params import UnitFraction
from medad.registry import register_detector

GREY_LEVEL = 1.0 / 255.0


@register_detector("mean-image")
class MeanImageControl(ControlDetector):
    """CONTROL: per-pixel squared z-score against the training normals' mean image; top-fraction mean as the score."""

    paper = ("CONTROL (no learned structure): per-pixel z-score against the mean normal image, pooled over the "
             "largest pixels; has a pixel map")
    has_pixel_map = True

    def __init__(self, *, image_size: int, channels: int, device: str | torch.device = "cpu", seed: int = 0,
                 top_fraction: UnitFraction = 0.02) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.top_fraction = float(top_fraction)

    @classmethod
    def extra_state_keys(cls) -> tuple[str, ...]:
        return ("mean", "variance")

    def fit_grey(self, train: ImageSet) -> dict[str, float]:
        total = squares = None
        for batch in grey_batches(train):
            total = batch.sum(dim=0) if total is None else total + batch.sum(dim=0)
            squares = batch.pow(2).sum(dim=0) if squares is None else squares + batch.pow(2).sum(dim=0)
        self.mean = total / len(train)
        spread = (squares / len(train) - self.mean.pow(2)).clamp_min(0.0)
        floor = max(float(spread.sqrt().median()), GREY_LEVEL)
        self.variance = spread + floor ** 2
        return {"train_map_mean": float(sum(self._maps(batch).mean() * len(batch) for batch in grey_batches(train))
                                        / len(train)), "pixel_std_floor": floor}

    def _maps(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != self.mean.shape:
            raise ValueError(f"control {self.name!r} was fitted on {tuple(self.mean.shape)} images and cannot score "
                             f"{tuple(images.shape[-2:])} ones: a per-pixel template needs the same image size")
        return (images - self.mean).pow(2) / self.variance

    def score_grey(self, images: torch.Tensor) -> torch.Tensor:
        return top_fraction_mean(self._maps(images), self.top_fraction)

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return self._maps(grey(images)).float()

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The mean normal image, for every input (what the map compares with)."""
        self.check_fitted()
        return self.mean.float().expand(images.shape[0], images.shape[1], *self.mean.shape).clone()
