"""CoroNet (Khobahi, Agarwal & Soltanalian 2020) in the two modes an anomaly-detection benchmark can run.

The paper's method is a supervised 3-class classifier built on class-specific autoencoders; only its
healthy autoencoder needs no anomaly labels. So each mode is its own registry entry (spec §3), and
every result row carries its ``supervision``:

- ``coronet`` (unsupervised, "CoroNet-AE_H"): one FPAE trained on the normal training images with
  eq. (3)-(4); score = mean |x − F_H(x)| (the residual channel 0 of eq. 5), map = that residual. A
  component of CoroNet, not the paper's method: the paper reports no anomaly-detection numbers for it.
  The FPAE has no bottleneck on its main path (full-resolution additive skips and a global input skip),
  so it copies lesions too and the residual score separates little. Measured on synthetic ``obvious``,
  64 px, one CPU thread (issue 7): within two epochs the mean residual falls to the images' own noise
  level (0.02-0.04; the phantoms carry noise of std 0.01-0.03), lesions included, and it stays there;
  ROC AUC after 1-6 epochs (150-300 normals, lr 1e-3): plain mean 0.51-0.64, top 5 % of the residual
  smoothed with σ = 2-3 px 0.59-0.64, latent distance 0.37-0.73 (unstable), at about 11 s CPU per
  epoch of 300 images. No aggregation of this residual reaches 0.85; the cause is the architecture
  (the authors' FPAE.py), not the schedule or the pooling, so the faithful default stays the plain mean.
  Declared ablations (spec §3): ``top_fraction``/``map_sigma`` pool the residual map (σ = 2, 5 % is the
  best measured, by about +0.03); ``score_kind="latent"`` scores ``mean((E(x) − E(F(x)))²)`` with the
  regulariser's latent.
- ``coronet-semi`` (semi-supervised): AE_H as above; AE_A (the "pneumonia AE" role) trained on a
  labelled anomaly pool of ``pool_size`` images that the dataset keeps apart from the test set
  (warm-started from AE_H and fine-tuned for ``anomaly_ae_steps`` steps when the pool has fewer than
  500 images, spec §3); the CIN (ResNet-18, 2-way head: normal vs anomaly) trained with class-weighted
  cross-entropy (inverse class frequency) on the residual tensors of eq. (5)-(7) of the normal training
  images and the pool, computed on the fly from the frozen AEs with random horizontal and vertical flips
  of the raw image (§III-B, A8; with ``flips=False`` the residuals are computed once and cached). Score: ``logit_anomaly − logit_normal``, which ranks exactly as the
  spec's ``1 − softmax[normal]`` without saturating to ties. Map: the residual, or with
  ``score_map_method="perturbation"`` the meaningful-perturbation attribution of the classifier (§IV-C).

Choices (spec §6): images are grayscale in [0, 1] (multi-channel input is averaged to one channel);
true mini-batches for the AEs (A4); AEs without augmentation (A8); the last epoch is kept (the
reference code keeps the lowest training loss; no test data is ever used); the CIN sees the AEs'
in-sample residuals, as in the paper (A10). Defaults are the paper's: AE Adam lr 1e-4, weight decay
1e-3, 50 epochs, batch 32; CIN 10 epochs, batch 16, Adam lr 1e-3 (the paper, Sec. 3.2; the authors' code
uses 1e-5, A5: ``cin_lr: 1.0e-5``, whose rows say so in ``deviations``), weight decay 1e-3, ImageNet weights
(local file or torch's cache, :mod:`.cin`).

``coronet`` (the healthy autoencoder's residual scored on its own) is medad's adaptation, not a setting of
the paper, which feeds the residual to a supervised classifier and reports accuracy: its rows carry
``adaptation: healthy-residual (no paper setting)``; its weak AUROC on the phantoms is what the skips predict.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from medad.datasets.base import DatasetError, ImageSet
from medad.detectors.base import Detector, TrainLog
from medad.detectors.coronet.attribution import meaningful_perturbation
from medad.detectors.coronet.cin import IMAGENET_URL, WEIGHT_CHOICES, build_cin, cached_imagenet_path
from medad.detectors.coronet.fpae import FPAE, fpae_loss, residual_tensor
from medad.detectors.scoring import gaussian_blur, top_fraction_mean
from medad.params import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitFraction
from medad.registry import register_detector

PAPER = ("Khobahi, Agarwal & Soltanalian, CoroNet: A Deep Network Architecture for Semi-Supervised Task-Based "
         "Identification of COVID-19 from Chest X-ray Images (2020)")
WARM_START_BELOW = 500  # pools smaller than this fine-tune a copy of AE_H instead of training AE_A from scratch
MAP_METHODS = ("residual", "perturbation")
PAPER_CIN_LR = 1e-3   # Sec. 3.2
ADAPTATION = "healthy-residual (no paper setting)"
SCORE_KINDS = ("residual", "latent")


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, 1, H, W)`` by averaging the channels (CoroNet works on grayscale X-rays)."""
    return images if images.shape[1] == 1 else images.mean(dim=1, keepdim=True)


def random_flips(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Independent horizontal and vertical flips, each with probability 0.5 per image (CIN augmentation)."""
    n = len(images)
    horizontal = (torch.rand(n, generator=generator) < 0.5).to(images.device, non_blocking=True)
    vertical = (torch.rand(n, generator=generator) < 0.5).to(images.device, non_blocking=True)
    images = torch.where(horizontal[:, None, None, None], images.flip(-1), images)
    return torch.where(vertical[:, None, None, None], images.flip(-2), images)


@register_detector("coronet")
class CoroNetAE(Detector):
    """CoroNet's healthy feature-pyramid autoencoder alone (unsupervised); score = mean absolute residual."""

    paper = PAPER + " [mode ae-h: healthy autoencoder only]"
    # the faithful residual score barely separates anything (the skips let the FPAE copy lesions); the smoke
    # fit uses the declared latent-distance ablation, which does (spec §3 mode ae-h)
    paper_settings = ("epochs", "batch_size", "lr", "weight_decay", "lambda_latent")
    smoke_params = {"epochs": 20, "batch_size": 16, "lr": 1e-3, "score_kind": "latent"}

    @classmethod
    def check_input(cls, image_size: int, channels: int, params: dict) -> None:
        if image_size % 8:
            raise ValueError(f"CoroNet's FPAE needs image_size divisible by 8, got {image_size}")

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 epochs: PositiveInt = 50, batch_size: PositiveInt = 32, lr: PositiveFloat = 1e-4,
                 weight_decay: NonNegativeFloat = 1e-3, lambda_latent: NonNegativeFloat = 1.0,
                 top_fraction: UnitFraction = 1.0, map_sigma: NonNegativeFloat = 0.0,
                 score_kind: Literal[SCORE_KINDS] = "residual") -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        if score_kind not in SCORE_KINDS:
            raise ValueError(f"score_kind must be one of {SCORE_KINDS}, got {score_kind!r}")
        if image_size % 8:
            raise ValueError(f"CoroNet's FPAE needs image_size divisible by 8, got {image_size}")
        if not 0.0 < top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.lambda_latent, self.top_fraction, self.map_sigma = lambda_latent, top_fraction, map_sigma
        self.score_kind = score_kind
        torch.manual_seed(self.seed)
        self.healthy_ae = FPAE().to(self.device)

    def extra_tags(self) -> dict[str, str]:
        # the paper feeds the residual to a supervised classifier and reports accuracy: no AUC setting of its own
        return {"mode": "ae-h", "score_kind": self.score_kind, "adaptation": ADAPTATION}



    def _train_ae(self, model: FPAE, images: ImageSet, log: TrainLog, name: str, *, epochs: int | None = None,
                  steps: int | None = None) -> None:
        """Eq. (3)-(4) with Adam; ``epochs`` passes over ``images``, or exactly ``steps`` mini-batch steps."""
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        batch_size = min(self.batch_size, len(images))
        model.train()
        step, epoch = 0, 0
        while (steps is None and epoch < (epochs or 0)) or (steps is not None and step < steps):
            for batch in images.batches(batch_size, shuffle=True, generator=self.generator, drop_last=True):
                loss, rec, lat = fpae_loss(model, grayscale(self.to_device(batch)), self.lambda_latent)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                log.log(epoch, step, **{f"{name}_rec": rec, f"{name}_latent": lat})
                step += 1
                if steps is not None and step >= steps:
                    break
            epoch += 1
        model.eval()

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        self._train_ae(self.healthy_ae, train, log or TrainLog(), "ae_h", epochs=self.epochs)

    @torch.no_grad()
    def _residual(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(|x − F_H(x)| as ``(N, H, W)``, F_H(x))."""
        self.eval_mode()
        x = grayscale(self.to_device(images))
        reconstruction, _ = self.healthy_ae(x)
        return (x - reconstruction).abs()[:, 0], reconstruction

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Mean (or top-fraction mean) of the residual; ``score_kind="latent"``: ``mean((E(x) − E(F(x)))²)``."""
        if self.score_kind == "latent":
            self.eval_mode()
            with torch.no_grad():
                x = grayscale(self.to_device(images))
                reconstruction, latent = self.healthy_ae(x)
                return (latent - self.healthy_ae.encode(reconstruction)).pow(2).flatten(1).mean(dim=1).cpu()
        residual = gaussian_blur(self._residual(images)[0], self.map_sigma)
        return top_fraction_mean(residual, self.top_fraction).cpu()

    def score_map(self, images: torch.Tensor) -> torch.Tensor | None:
        return gaussian_blur(self._residual(images)[0], self.map_sigma).cpu()

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self._residual(images)[1].expand(-1, self.channels, -1, -1).cpu()


@register_detector("coronet-semi")
class CoroNetSemi(CoroNetAE):
    """CoroNet with a labelled anomaly pool: two FPAEs + ResNet-18 on their residuals (semi-supervised)."""

    paper = PAPER + " [mode semi: trained with a labelled anomaly pool]"
    supervision = "semi-supervised"
    needs = ("anomaly_pool",)
    paper_settings = CoroNetAE.paper_settings + ("anomaly_ae_steps", "cin_epochs", "cin_batch_size", "cin_lr")
    smoke_params = {"epochs": 1, "batch_size": 16, "lr": 1e-3, "anomaly_ae_steps": 5, "cin_epochs": 12,
                    "cin_lr": 1e-3, "cin_weights": "none", "flips": False, "mp_iterations": 5}

    @classmethod
    def training_budget(cls, params: dict) -> dict[str, str]:
        """The AE and CIN epochs, and the anomaly AE's fine-tuning steps."""
        steps = {"anomaly_ae_steps": "steps"} if params.get("anomaly_ae_steps", 0) > 0 else {}
        return {**super().training_budget(params), **steps}

    @classmethod
    def pretrained_files(cls, params: dict) -> list[tuple[Path, str]]:
        if params.get("cin_weights", "imagenet") != "imagenet":
            return []
        local = params.get("cin_weights_path")
        return [(Path(local).expanduser(), "")] if local else [(cached_imagenet_path(), IMAGENET_URL)]

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 epochs: PositiveInt = 50, batch_size: PositiveInt = 32, lr: PositiveFloat = 1e-4,
                 weight_decay: NonNegativeFloat = 1e-3, lambda_latent: NonNegativeFloat = 1.0,
                 top_fraction: UnitFraction = 1.0, map_sigma: NonNegativeFloat = 0.0,
                 pool_size: PositiveInt | None = None, anomaly_ae_steps: NonNegativeInt = 200,
                 cin_epochs: PositiveInt = 10, cin_batch_size: PositiveInt = 16, cin_lr: PositiveFloat = PAPER_CIN_LR,
                 cin_weight_decay: NonNegativeFloat = 1e-3, cin_weights: Literal[WEIGHT_CHOICES] = "imagenet",
                 cin_weights_path: str | None = None, flips: bool = True,
                 score_map_method: Literal[MAP_METHODS] = "residual", mp_iterations: PositiveInt = 300) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed, epochs=epochs,
                         batch_size=batch_size, lr=lr, weight_decay=weight_decay, lambda_latent=lambda_latent,
                         top_fraction=top_fraction, map_sigma=map_sigma)
        if pool_size is not None and pool_size < 1:
            raise ValueError(f"pool_size must be >= 1 (or null: the whole pool), got {pool_size}")
        if score_map_method not in MAP_METHODS:
            raise ValueError(f"score_map_method must be one of {MAP_METHODS}, got {score_map_method!r}")
        self.pool_size, self.anomaly_ae_steps = pool_size, anomaly_ae_steps
        self.cin_epochs, self.cin_batch_size, self.cin_lr = cin_epochs, cin_batch_size, cin_lr
        self.cin_weight_decay, self.cin_weights, self.flips = cin_weight_decay, cin_weights, flips
        self.score_map_method, self.mp_iterations = score_map_method, mp_iterations
        self.anomaly_ae = FPAE().to(self.device)
        self.cin = build_cin(2, cin_weights, cin_weights_path).to(self.device)
        self.pool_used = torch.tensor(-1)

    @property
    def weights(self) -> str:
        return self.cin_weights  # "imagenet" (as the paper) or "none" (CIN trained from scratch)

    def extra_tags(self) -> dict[str, str]:
        used = int(self.pool_used)
        size = str(used) if used >= 0 else ("all" if self.pool_size is None else str(self.pool_size))
        return {"mode": "semi", "anomaly_pool_size": size}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"pool_used": self.pool_used}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pool_used = state.get("pool_used", self.pool_used)

    def draw_pool(self, anomaly_pool: ImageSet | None) -> ImageSet:
        """The ``pool_size`` labelled anomalies used for training, drawn with the detector's seed."""
        if anomaly_pool is None or len(anomaly_pool) == 0:
            raise DatasetError("coronet-semi needs a labelled anomaly pool (Subset.anomaly_pool); the dataset gave none")
        if (anomaly_pool.labels != 1).any():
            raise DatasetError("coronet-semi: the anomaly pool must hold anomalous images (label 1) only")
        size = len(anomaly_pool) if self.pool_size is None else self.pool_size
        if size > len(anomaly_pool):
            raise DatasetError(f"coronet-semi: pool_size {size} but the dataset's anomaly pool holds {len(anomaly_pool)} images")
        index = torch.randperm(len(anomaly_pool), generator=self.generator)[:size].sort().values
        return anomaly_pool.subset(index.numpy())

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None,
            anomaly_pool: ImageSet | None = None) -> None:
        log = log or TrainLog()
        pool = self.draw_pool(anomaly_pool)
        self.pool_used = torch.tensor(len(pool))
        self._train_ae(self.healthy_ae, train, log, "ae_h", epochs=self.epochs)
        if len(pool) < WARM_START_BELOW:
            self.anomaly_ae.load_state_dict(copy.deepcopy(self.healthy_ae.state_dict()))
            self._train_ae(self.anomaly_ae, pool, log, "ae_a", steps=self.anomaly_ae_steps)
        else:
            self._train_ae(self.anomaly_ae, pool, log, "ae_a", epochs=self.epochs)
        self._train_cin(ImageSet.concat([train.without_labels(), pool]), len(train), log)

    def _train_cin(self, images: ImageSet, normals: int, log: TrainLog) -> None:
        """Class-weighted cross-entropy on residual tensors of the frozen AEs (§III-B)."""
        labels = torch.cat([torch.zeros(normals, dtype=torch.long), torch.ones(len(images) - normals, dtype=torch.long)])
        counts = torch.bincount(labels, minlength=2).float()
        class_weights = (len(labels) / (2.0 * counts)).to(self.device)
        optimizer = torch.optim.Adam(self.cin.parameters(), lr=self.cin_lr, weight_decay=self.cin_weight_decay)
        self.healthy_ae.eval()
        self.anomaly_ae.eval()
        cached = None if self.flips else self._residuals(images)  # without augmentation the residuals never change
        step = 0
        for epoch in range(self.cin_epochs):
            self.cin.train()
            order = torch.randperm(len(images), generator=self.generator)
            for start in range(0, len(images), self.cin_batch_size):
                index = order[start:start + self.cin_batch_size]
                if cached is not None:
                    residuals = cached[index.to(cached.device, non_blocking=True)]
                else:
                    x = random_flips(grayscale(self.to_device(images.float_images(index))), self.generator)
                    with torch.no_grad():
                        residuals = residual_tensor(x, self.healthy_ae, self.anomaly_ae)
                loss = F.cross_entropy(self.cin(residuals), self.to_device(labels[index]), weight=class_weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                log.log(epoch, step, cin_ce=loss)
                step += 1
        self.cin.eval()

    @torch.no_grad()
    def _residuals(self, images: ImageSet) -> torch.Tensor:
        """Residual tensors of every image, computed once (memory: N x 3 x H x W floats)."""
        return torch.cat([residual_tensor(grayscale(self.to_device(batch)), self.healthy_ae, self.anomaly_ae)
                          for batch in images.batches(max(self.cin_batch_size, 64))])

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.cin(residual_tensor(x, self.healthy_ae, self.anomaly_ae))

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """``logit_anomaly − logit_normal`` (monotone in 1 − p_normal)."""
        self.eval_mode()
        logits = self._logits(grayscale(self.to_device(images)))
        return (logits[:, 1] - logits[:, 0]).cpu()

    def attribution_map(self, images: torch.Tensor) -> torch.Tensor:
        """Meaningful-perturbation map ``(N, H, W)`` for each image's predicted class (CoroNet §IV-C)."""
        self.eval_mode()
        x = grayscale(self.to_device(images))
        for module in self.networks().values():
            module.requires_grad_(False)
        try:
            with torch.no_grad():
                target = self._logits(x).argmax(dim=1)

            def class_probability(perturbed: torch.Tensor) -> torch.Tensor:
                return self._logits(perturbed).softmax(dim=1).gather(1, target[:, None])[:, 0]

            with torch.enable_grad():
                return meaningful_perturbation(class_probability, x, iterations=self.mp_iterations).cpu()
        finally:
            for module in self.networks().values():
                module.requires_grad_(True)

    def score_map(self, images: torch.Tensor) -> torch.Tensor | None:
        if self.score_map_method == "perturbation":
            return self.attribution_map(images)
        return super().score_map(images)
