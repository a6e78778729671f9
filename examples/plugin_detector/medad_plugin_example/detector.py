"""``mean-deviation``: how far each pixel lies from the training mean, in training standard deviations.

A per-pixel Gaussian model of normal images: score map ``|x - mu| / (sigma + eps)`` with ``mu`` and
``sigma`` the per-pixel mean and standard deviation of the training images; image score = mean of
the top ``top_fraction`` of the map. Written against medad's public API only (``import medad``).
"""

from __future__ import annotations

import math

import torch

import medad


@medad.register_detector("mean-deviation")
class MeanDeviation(medad.Detector):
    """Per-pixel z-score against the training normals."""

    paper = "Example plugin: per-pixel Gaussian z-score"
    smoke_params = {}

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 top_fraction: float = 0.02, eps: float = 0.02) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.top_fraction, self.eps = top_fraction, eps
        self.mean = torch.zeros(channels, image_size, image_size)
        self.std = torch.ones(channels, image_size, image_size)

    def fit(self, train: medad.ImageSet, val: medad.ImageSet | None = None, log: medad.TrainLog | None = None) -> None:
        images = train.float_images()
        self.mean, self.std = images.mean(dim=0), images.std(dim=0)
        (log or medad.TrainLog()).log(0, 0, mean_std=self.std.mean())

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        return ((images - self.mean).abs() / (self.std + self.eps)).mean(dim=1)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        flat = self.score_map(images).flatten(1)
        worst = flat.topk(max(1, math.ceil(self.top_fraction * flat.shape[1])), dim=1).values
        return worst.mean(dim=1)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.mean, self.std = state["mean"], state["std"]
