"""``ae``: a plain convolutional autoencoder scored by its reconstruction error.

The baseline every report shows (e.g. the AE rows of MedIAnomaly, Cai et al., MedIA 2025): a DCGAN
encoder/decoder pair (:mod:`medad.detectors.nets`) trained with the mean squared error
``L = ||x - D(E(x))||^2`` on normal images. Pixel map: the squared error averaged over channels,
smoothed by a Gaussian of ``map_sigma`` pixels (0: raw). Image score: the mean of the largest
``top_fraction`` of the map's pixels (``top_fraction=1, map_sigma=0`` is the plain MSE). A lesion covers a
small, compact part of the image: smoothing and pooling over the worst pixels keep its error from being
diluted by the background or outweighed by thin edge errors. Both are choices of ours, not of a paper.
"""

from __future__ import annotations

import torch
from torch import nn

from medad.datasets.base import ImageSet
from medad.detectors.base import Detector, TrainLog
from medad.detectors.nets import DCGANDecoder, DCGANEncoder, check_dcgan_size, dcgan_init
from medad.detectors.scoring import gaussian_blur, top_fraction_mean
from medad.params import NonNegativeFloat, PositiveFloat, PositiveInt, UnitFraction
from medad.registry import register_detector


class AutoEncoder(nn.Module):
    """DCGAN encoder -> ``latent``-d code -> DCGAN decoder with a sigmoid output in [0, 1]."""

    def __init__(self, image_size: int, channels: int, latent: int, width: int) -> None:
        super().__init__()
        self.encoder = DCGANEncoder(image_size, channels, latent, width)
        self.decoder = DCGANDecoder(image_size, channels, latent, width, output="sigmoid")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))


@register_detector("ae")
class AEDetector(Detector):
    """Convolutional autoencoder baseline (reconstruction error)."""

    paper = "Convolutional autoencoder baseline (reconstruction error), as in MedIAnomaly (Cai et al., 2025)"
    smoke_params = {"epochs": 25, "batch_size": 16, "width": 16, "latent": 32}

    @classmethod
    def check_input(cls, image_size: int, channels: int, params: dict) -> None:
        check_dcgan_size(image_size)

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 epochs: PositiveInt = 30, batch_size: PositiveInt = 32, lr: PositiveFloat = 1e-3,
                 weight_decay: NonNegativeFloat = 0.0, latent: PositiveInt = 128, width: PositiveInt = 32,
                 top_fraction: UnitFraction = 0.02, map_sigma: NonNegativeFloat = 2.0) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.top_fraction, self.map_sigma = top_fraction, map_sigma
        torch.manual_seed(self.seed)
        self.model = AutoEncoder(image_size, channels, latent, width).to(self.device)
        dcgan_init(self.model)

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        log = log or TrainLog()
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        step = 0
        self.model.train()
        for epoch in log.epochs(self.epochs):
            for batch in train.batches(self.batch_size, shuffle=True, generator=self.generator):
                batch = self.to_device(batch)
                loss = (self.model(batch) - batch).pow(2).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                log.log(epoch, step, mse=loss)
                step += 1
        self.model.eval()

    @torch.no_grad()
    def _error_map(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        images = self.to_device(images)
        reconstruction = self.model(images)
        error = gaussian_blur((reconstruction - images).pow(2).mean(dim=1), self.map_sigma)
        return error, reconstruction

    def score(self, images: torch.Tensor) -> torch.Tensor:
        error, _ = self._error_map(images)
        return top_fraction_mean(error, self.top_fraction).cpu()

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        return self._error_map(images)[0].cpu()

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self._error_map(images)[1].cpu()
