"""``histogram``: a control that scores an image by how far its grey-level histogram lies from the nearest normals'.

Per image: the normalised histogram of its grey levels g in [0, 1] (all pixels, ``bins`` equal bins; it sums to 1).
Score: the mean distance to the ``k`` nearest training histograms (k-nearest-neighbour distance; the image itself
is never among them, since the test set shares no image with the training set). A histogram forgets where every
pixel is, so the control cannot see anatomy or a lesion's shape: only how much of the image has which grey level.

Distance (``distance``):

- ``hellinger`` (default): H(p, q) = sqrt(1 - sum_b sqrt(p_b q_b)) = ||sqrt(p) - sqrt(q)||_2 / sqrt(2), in [0, 1].
  The square root weighs a bin's change relative to its size, so grey levels that normal images hardly have
  (bright blood, a dark infarct, a metal artefact) count even when they cover few pixels; those barely move the
  mean and percentiles the ``intensity`` control reads, which is why this one is its complement rather than a copy.
- ``wasserstein``: the earth mover's distance on the grey-level axis, W1(p, q) = (1 / bins) sum_b |P_b - Q_b| with
  P, Q the cumulative histograms: how far mass must move in grey level. It grows with a global brightness shift,
  where the Hellinger distance saturates once two histograms no longer overlap; it is close to a distance between
  the percentiles (W1 is the mean absolute difference of the two quantile functions).

Both are symmetric distances: an image brighter or darker than the normals scores high either way.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from medad.datasets.base import ImageSet
from medad.detectors.controls.base import ControlDetector, grey_batches
from medad.params import PositiveInt
from medad.registry import register_detector

DISTANCES = ("hellinger", "wasserstein")
ROWS_PER_STEP = 1024  # training histograms compared at once when the fit scores the training set itself


def histograms(images: torch.Tensor, bins: int) -> torch.Tensor:
    """Normalised grey-level histograms ``(N, bins)`` (float64, rows sum to 1) of grey images ``(N, H, W)`` in [0, 1]."""
    flat = images.flatten(1)
    index = (flat * bins).long().clamp_(0, bins - 1)
    counts = torch.zeros(flat.shape[0], bins, dtype=torch.float64).scatter_add_(1, index, torch.ones_like(flat))
    return counts / flat.shape[1]


def histogram_distances(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """``(len(a), len(b))`` distances between histograms ``a`` and ``b`` (rows summing to 1) by ``distance``."""
    bins = a.shape[1]
    if distance == "hellinger":
        return torch.cdist(a.sqrt(), b.sqrt(), p=2, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(2.0)
    return torch.cdist(a.cumsum(dim=1), b.cumsum(dim=1), p=1) / bins


@register_detector("histogram")
class HistogramControl(ControlDetector):
    """CONTROL: mean distance of an image's grey-level histogram to its k nearest training histograms."""

    paper = "CONTROL (structure-blind): grey-level histogram, mean distance to the k nearest training histograms"

    def __init__(self, *, image_size: int, channels: int, device: str | torch.device = "cpu", seed: int = 0,
                 bins: PositiveInt = 64, k: PositiveInt = 5, distance: Literal[DISTANCES] = "hellinger") -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        self.bins, self.k, self.distance = int(bins), int(k), distance

    @classmethod
    def extra_state_keys(cls) -> tuple[str, ...]:
        return ("reference",)

    def fit_grey(self, train: ImageSet) -> dict[str, float]:
        self.reference = torch.cat([histograms(batch, self.bins) for batch in grey_batches(train)])
        # the training images' own k-NN distance, each left out of its neighbours: the fit's summary in history.csv
        k = min(self.k, len(self.reference) - 1)
        if k < 1:
            return {"train_images": float(len(self.reference))}
        own = []
        for start in range(0, len(self.reference), ROWS_PER_STEP):
            distances = histogram_distances(self.reference[start:start + ROWS_PER_STEP], self.reference, self.distance)
            rows = torch.arange(distances.shape[0])
            distances[rows, rows + start] = math.inf
            own.append(distances.topk(k, dim=1, largest=False).values.mean(dim=1))
        return {"train_knn_distance": float(torch.cat(own).mean())}

    def score_grey(self, images: torch.Tensor) -> torch.Tensor:
        distances = histogram_distances(histograms(images, self.bins), self.reference, self.distance)
        return distances.topk(min(self.k, len(self.reference)), dim=1, largest=False).values.mean(dim=1)
