"""``proxyano``: Proxy-bridged Image Reconstruction Network (Zhou et al., IEEE TMI; arXiv 2110.01761).

Two modules trained in two stages (Sec. III, IV-A):

1. the Proxy Extraction Module (PEM) learns to predict the SLIC superpixel image ``P`` of a normal image
   through a nearest-item memory (``k = 128`` items, ``d = 64``, EMA decay ``gamma = 0.99``), Eq. 7;
2. with the PEM frozen, the Image Reconstruction Module (IRM) learns to map the predicted proxy
   ``P_hat`` back to the image and to *repair* a pseudo-abnormal proxy ``P'`` (a pasted patch of another
   normal image) into the clean image, with a shared discriminator (Eqs. 8-11; ``lambda_g = 0.01``,
   ``lambda_global = 0.25``, ``lambda_local = 0.5``).

Adam with lr 1e-3 (both stages, paper); SLIC with ~800 superpixels at 256 px (paper). Test time runs no
SLIC: ``P_hat = F_p(I)``, ``I_hat = F_g(P_hat)``. Image score (Sec. III-D): ``||Enc_p(I) - Enc_p(I_hat)||_F``
(``score_space="latent"``, the paper's final model, taken before the memory [R]); ``"image"`` =
``||I - I_hat||_F`` (Table V). Pixel map: ``|I - I_hat|`` (channel mean if RGB), optionally smoothed by a
Gaussian of ``map_sigma`` pixels (0 = raw, the paper). ``score_space="map"`` (ours, not the paper's, as in
the ``ae`` baseline) pools the map: the mean of its largest ``top_fraction`` of pixels; on CPU-sized
budgets, where the PEM encoder is far from converged, it ranks images better than the latent score.

Spec recommendations [R] followed, each a hyper-parameter: the encoder/decoder design (``base_width``,
``depth``; :mod:`medad.detectors.proxyano.networks`); SLIC ``slic_compactness = 0.1``, ``slic_sigma = 0``
and computing SLIC after resizing, with ``n_segments`` given at ``segments_reference_size = 256`` and
scaled to keep the paper's superpixel area at other sizes; data-dependent memory initialisation; the
PAPC's rectangle sizes ``patch_min_fraction``/``patch_max_fraction``; a PatchGAN discriminator of width
``disc_width`` with BCE, ``lr_d = 1e-4`` and Adam betas (0.5, 0.999) in stage 2 (``beta1_stage2``);
batch size 16; mean-reduced MSE.
"""

from __future__ import annotations

from typing import Literal

import torch

from medad.datasets.base import ImageSet
from medad.detectors.base import Detector, TrainLog
from medad.detectors.blocks.conv import PatchDiscriminator
from medad.detectors.proxyano.losses import stage2_discriminator_loss, stage2_generator_loss
from medad.detectors.proxyano.networks import ImageReconstructionModule, ProxyExtractionModule
from medad.detectors.proxyano.pseudo_anomaly import paste_random_patches
from medad.detectors.proxyano.superpixels import scaled_segments, superpixel_images
from medad.detectors.scoring import gaussian_blur, top_fraction_mean
from medad.params import Beta, Decay, NonNegativeFloat, PositiveFloat, PositiveInt, UnitFraction
from medad.registry import register_detector


@register_detector("proxyano")
class ProxyAnoDetector(Detector):
    """ProxyAno: image -> superpixel proxy (with memory) -> image, with pseudo-anomaly repairing."""

    paper = ("Zhou et al., Proxy-bridged Image Reconstruction Network for Anomaly Detection in Medical Images, "
             "IEEE TMI (arXiv 2110.01761)")
    paper_settings = ("stage1_epochs", "stage2_epochs", "batch_size", "lr", "lr_d", "base_width", "depth", "code_dim",
                      "mem_items", "n_segments", "disc_width")
    smoke_params = {"stage1_epochs": 12, "stage2_epochs": 12, "batch_size": 8, "base_width": 8, "depth": 3,
                    "disc_width": 8, "score_space": "map", "map_sigma": 2.0, "top_fraction": 0.02}

    @classmethod
    def check_input(cls, image_size: int, channels: int, params: dict) -> None:
        depth = params.get("depth", 4)
        if image_size % 2 ** depth:
            raise ValueError(f"proxyano with depth {depth} needs image_size divisible by {2 ** depth}, got {image_size}")

    def paper_deviations(self) -> list[str]:
        """The map score is medad's: the paper scores an image by Eq. 13's latent distance."""
        if self.score_space == "latent":
            return []
        return [f"score: {self.score_space} space (paper: Eq. 13, ||Enc_p(I) - Enc_p(I_hat)||)"]

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 stage1_epochs: PositiveInt = 100, stage2_epochs: PositiveInt = 100, batch_size: PositiveInt = 16,
                 lr: PositiveFloat = 1e-3, lr_d: PositiveFloat = 1e-4, beta1_stage2: Beta = 0.5,
                 base_width: PositiveInt = 32, depth: PositiveInt = 4, code_dim: PositiveInt = 64,
                 mem_items: PositiveInt = 128, mem_decay: Decay = 0.99, n_segments: PositiveInt = 800,
                 segments_reference_size: PositiveInt = 256, slic_compactness: PositiveFloat = 0.1,
                 slic_sigma: NonNegativeFloat = 0.0, lambda_g: NonNegativeFloat = 0.01,
                 lambda_global: NonNegativeFloat = 0.25, lambda_local: NonNegativeFloat = 0.5,
                 patch_min_fraction: UnitFraction = 0.0625, patch_max_fraction: UnitFraction = 0.3125,
                 disc_width: PositiveInt = 64, score_space: Literal["latent", "image", "map"] = "latent",
                 map_sigma: NonNegativeFloat = 0.0, top_fraction: UnitFraction = 1.0) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        if score_space not in ("latent", "image", "map"):
            raise ValueError(f"score_space must be 'latent', 'image' or 'map', got {score_space!r}")
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        if image_size % 2 ** depth:
            raise ValueError(f"image_size {image_size} must be divisible by 2**depth = {2 ** depth}")
        if not 0.0 < patch_min_fraction <= patch_max_fraction <= 1.0:
            raise ValueError("need 0 < patch_min_fraction <= patch_max_fraction <= 1, "
                             f"got {patch_min_fraction}, {patch_max_fraction}")
        self.stage1_epochs, self.stage2_epochs, self.batch_size = stage1_epochs, stage2_epochs, batch_size
        self.lr, self.lr_d, self.beta1_stage2 = lr, lr_d, beta1_stage2
        self.n_segments = scaled_segments(n_segments, image_size, segments_reference_size)
        self.slic_compactness, self.slic_sigma = slic_compactness, slic_sigma
        self.lambda_g, self.lambda_global, self.lambda_local = lambda_g, lambda_global, lambda_local
        self.patch_fractions = (patch_min_fraction, patch_max_fraction)
        self.score_space, self.map_sigma, self.top_fraction = score_space, map_sigma, top_fraction
        torch.manual_seed(self.seed)
        self.pem = ProxyExtractionModule(channels, base_width, depth, code_dim, mem_items, mem_decay).to(self.device)
        self.irm = ImageReconstructionModule(channels, base_width, depth, code_dim).to(self.device)
        self.discriminator = PatchDiscriminator(channels, disc_width).to(self.device)

    # --- training -------------------------------------------------------------------------------
    def _index_batches(self, n: int):
        order = torch.randperm(n, generator=self.generator)
        for start in range(0, n, self.batch_size):
            yield order[start:start + self.batch_size]

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        log = log or TrainLog()
        # SLIC runs on the host; its uint8 proxies then live beside the images, on the device
        proxies = superpixel_images(train.images.cpu(), self.n_segments, self.slic_compactness, self.slic_sigma)
        proxies = proxies.to(train.images.device)
        step = self._fit_stage1(train, proxies, log)
        self._fit_stage2(train, log, step)
        self.eval_mode()

    def _fit_stage1(self, train: ImageSet, proxies: torch.Tensor, log: TrainLog) -> int:
        """Eq. 7: PEM regresses the SLIC proxy; the memory follows its EMA (Eqs. 4-6)."""
        optimizer = torch.optim.Adam(self.pem.parameters(), lr=self.lr)
        self.pem.train()
        step = 0
        initialise = not bool(self.pem.memory.initialised)  # read once: the first batch initialises the items
        for epoch in range(self.stage1_epochs):
            used = torch.zeros(self.pem.memory.num_items, dtype=torch.bool, device=self.device)
            for index in self._index_batches(len(train)):
                images = self.to_device(train.float_images(index))
                target = self.to_device(proxies[index.to(proxies.device, non_blocking=True)].float().div_(255.0))
                if initialise:
                    with torch.no_grad():
                        self.pem.memory.initialise_from(self.pem.encoder(images), self.generator)
                    initialise = False
                predicted, _, items = self.pem(images)
                loss = (predicted - target).pow(2).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                used[items.flatten()] = True
                log.log(epoch, step, stage1_proxy_mse=loss)
                step += 1
            log.log(epoch, step, memory_items_used=used.sum())
        return step

    def _fit_stage2(self, train: ImageSet, log: TrainLog, step: int) -> None:
        """Eqs. 8-11: IRM with the repairing loss against a shared discriminator; the PEM is frozen."""
        self.pem.eval()
        self.pem.requires_grad_(False)
        self.irm.train()
        self.discriminator.train()
        betas = (self.beta1_stage2, 0.999)
        optimizer_g = torch.optim.Adam(self.irm.parameters(), lr=self.lr, betas=betas)
        optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr_d, betas=betas)
        for offset in range(self.stage2_epochs):
            epoch = self.stage1_epochs + offset
            for index in self._index_batches(len(train)):
                images = self.to_device(train.float_images(index))
                with torch.no_grad():
                    proxy = self.pem(images)[0]
                pseudo, mask = paste_random_patches(proxy, images.roll(1, dims=0), self.generator, *self.patch_fractions)
                recon, repaired = self.irm(torch.cat([proxy, pseudo])).split(len(images))

                loss_d = stage2_discriminator_loss(self.discriminator, images, recon, repaired, mask,
                                                   self.lambda_global, self.lambda_local)
                optimizer_d.zero_grad(set_to_none=True)
                loss_d.backward()
                optimizer_d.step()

                self.discriminator.requires_grad_(False)
                losses = stage2_generator_loss(self.discriminator, images, recon, repaired, mask,
                                               self.lambda_g, self.lambda_global, self.lambda_local)
                optimizer_g.zero_grad(set_to_none=True)
                losses["loss"].backward()
                optimizer_g.step()
                self.discriminator.requires_grad_(True)
                log.log(epoch, step, stage2_loss=losses["loss"], stage2_rec=losses["rec"],
                        stage2_global=losses["global"], stage2_local=losses["local"], stage2_d=loss_d)
                step += 1
        self.pem.requires_grad_(True)

    # --- scoring --------------------------------------------------------------------------------
    @torch.no_grad()
    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(I, P_hat, I_hat)`` in eval mode."""
        self.eval_mode()
        images = self.to_device(images)
        proxy = self.pem(images)[0]
        return images, proxy, self.irm(proxy)

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        images, _, recon = self._forward(images)
        if self.score_space == "image":
            return (images - recon).flatten(1).norm(dim=1).cpu()
        if self.score_space == "map":
            return top_fraction_mean(self._anomaly_map(images, recon), self.top_fraction).cpu()
        return (self.pem.encoder(images) - self.pem.encoder(recon)).flatten(1).norm(dim=1).cpu()

    def _anomaly_map(self, images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        return gaussian_blur((images - recon).abs().mean(dim=1), self.map_sigma)

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        images, _, recon = self._forward(images)
        return self._anomaly_map(images, recon).cpu()

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self._forward(images)[2].cpu()

    def proxy(self, images: torch.Tensor) -> torch.Tensor:
        """The predicted superpixel proxy ``P_hat = F_p(I)`` (for figures)."""
        return self._forward(images)[1].cpu()
