"""``sure-roi``: ROI-GANomaly with a Monte-Carlo SURE loss (Wang, MSc dissertation, Birmingham 2022).

A GANomaly encoder-decoder-encoder with a discriminator (Akcay et al., ACCV 2018), trained on normal
images only, whose decoder must output the *region of interest only* (the lung field in the paper:
``Y = X * M`` with the organ mask ``M``) from the *full* image ``X``; the second encoder sees that
generated ROI image, so the latent loss pushes the first encoder to ignore non-ROI content
(§4.2, eq. 4.1). GANomaly's L1 reconstruction loss is replaced by Stein's unbiased risk estimate with
a Monte-Carlo divergence (Ramani, Blu & Unser 2008) whose probe noise is limited to the mask (eq. 4.4).
ROI masks are needed for the training targets only; scoring takes plain images.

Losses (generator = E1, De, E2 under one Adam; eq. 4.1-4.4, weights 1 / 50 / 1 from Fig. B.2):

- ``l_adv``: feature matching, mean squared difference of the discriminator features of Y and Ŷ;
- ``l_enc``: mean squared difference of ``z = E1(X)`` and ``ẑ = E2(Ŷ)``;
- ``l_sure`` (spec recommendation A3/A11, per-pixel normalised, n = C·H·W)::

      mse + 2σ² · (1/τ)·mean((b⊙M) ⊙ (De(E1(X + τ·b⊙M)) − Ŷ)) − σ²

  With ``sure_literal=True`` the formula as printed: no 1/τ and the inner product with the unmasked b.
  ``loss="l2"`` is the dissertation's "Mywork_Oracle" ablation (plain MSE in l_sure's slot).
- discriminator: ``0.5·BCE(Dc(Ŷ.detach()), 0) + 0.5·BCE(Dc(Y), 1)`` (eq. 4.3), Dc ending in a sigmoid;
  computed from Dc's logits with ``binary_cross_entropy_with_logits``, as for GANomaly: the same function
  of the logit without BCE's clamp of log p at -100, and safe under bf16 autocast (which refuses BCE on
  probabilities on CUDA); re-initialised when its loss falls below 1e-5 (GANomaly's rule for the
  dissertation's "weights small", A5).

Score (eq. 4.5): the latent distance ``mean((E1(X) − E2(De(E1(X))))²)`` (GANomaly's form; the same
ranking as the L2 norm). The dissertation's min-max scaling over the evaluated set (eq. 4.6) is not
applied: it uses test-set statistics. Images are mapped from [0, 1] to [-1, 1] (tanh output); the
ROI target is formed in [0, 1] space so the background is -1 (A10).

Choices where the dissertation is silent: σ (``sigma=None``) is estimated from the training images
with the wavelet median-absolute-deviation estimator (Donoho 1995) on the finest Haar diagonal band
(A4); τ = 1e-2 (deepinv/REI default); one probe per image per step; two separate train-mode forward
passes for the SURE term (A12); Adam betas (0.5, 0.999) for both nets (A7).

At CPU size (64 px, width 16, latent 64, batch 16, the dissertation's lr 2e-4; about 2.1 s of one CPU
thread per epoch of 300 images) the latent score on synthetic ``obvious`` climbs to ROC AUC 0.8-0.89
after 12-24 epochs and then moves by about ±0.04 from epoch to epoch (the adversarial term): last-epoch
AUC after 24 epochs 0.820 / 0.868 / 0.881 on split seeds 0 / 1 / 2 (issue 7). Batch 32, latent 32 or 100,
and lr 5e-4 were no better in that budget.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from torch import nn

from medad.datasets.base import DatasetError, ImageSet
from medad.detectors.base import Detector, TrainLog
from medad.detectors.ganomaly.losses import discriminator_loss
from medad.detectors.nets import DCGANDecoder, DCGANDiscriminator, DCGANEncoder, check_dcgan_size, dcgan_init
from medad.evaluation.metrics import roc_auc
from medad.params import Beta, NonNegativeFloat, PositiveFloat, PositiveInt
from medad.registry import register_detector

LOSSES = ("sure", "l2")
SELECTIONS = ("last", "best_val_auroc")


def roi_target(images: torch.Tensor, roi_masks: torch.Tensor) -> torch.Tensor:
    """The ROI-only training target ``Y = X * M`` in [0, 1] space (zero outside the mask).

    ``images`` ``(N, C, H, W)`` in [0, 1]; ``roi_masks`` ``(N, H, W)`` (any dtype, nonzero = inside).
    """
    return images * (roi_masks[:, None] > 0).to(images.dtype)


def mc_divergence(output: torch.Tensor, perturbed_output: torch.Tensor, probe: torch.Tensor, tau: float) -> torch.Tensor:
    """Monte-Carlo divergence ``(1/τ)·bᵀ(h(x + τb) − h(x))`` per sample, ``(N,)`` (Ramani et al. 2008, eq. 8).

    Unbiased for a linear ``h`` (and for any ``h`` as τ → 0) when ``b`` has zero-mean, unit-variance
    entries; a probe ``b⊙M`` estimates the divergence restricted to the mask ``M``.
    """
    return (probe * (perturbed_output - output)).flatten(1).sum(dim=1) / tau


def sure_loss(output: torch.Tensor, target: torch.Tensor, perturbed_output: torch.Tensor, probe: torch.Tensor,
              *, sigma: float, tau: float, literal: bool = False, inner: torch.Tensor | None = None) -> torch.Tensor:
    """MC-SURE risk per pixel, averaged over the batch (dissertation eq. 4.4).

    Recommended form: ``mean((Ŷ−Y)²) − σ² + 2σ²·div/n`` with ``div`` from :func:`mc_divergence`.
    ``literal=True``: eq. 4.4 as printed, ``bᵀ(h(x+τb⊙M) − h(x))`` without 1/τ, taken with ``inner``
    (the unmasked b) instead of ``probe``.
    """
    pixels = output[0].numel()
    mse = (output - target).pow(2).flatten(1).mean(dim=1)
    if literal:
        vector = probe if inner is None else inner
        divergence = mc_divergence(output, perturbed_output, vector, tau=1.0)
    else:
        divergence = mc_divergence(output, perturbed_output, probe, tau=tau)
    return (mse - sigma ** 2 + 2.0 * sigma ** 2 * divergence / pixels).mean()


def estimate_noise_sigma(images: torch.Tensor) -> float:
    """Noise std of ``images`` ``(N, C, H, W)``: median(|HH|)/0.6745 of the finest Haar diagonal band (Donoho 1995)."""
    side = images.shape[-1] - images.shape[-1] % 2
    x = images[..., :side, :side]
    diagonal = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2.0
    return float(diagonal.abs().median()) / 0.6745


class ROIGenerator(nn.Module):
    """E1 → De → E2 (eq. 4.1): full image in, ROI image out, the generated ROI image re-encoded."""

    def __init__(self, image_size: int, channels: int, latent: int, width: int) -> None:
        super().__init__()
        self.encoder = DCGANEncoder(image_size, channels, latent, width)
        self.decoder = DCGANDecoder(image_size, channels, latent, width, output="tanh", hidden="leaky_relu")
        self.reencoder = DCGANEncoder(image_size, channels, latent, width)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z = E1(X), Ŷ = De(z), ẑ = E2(Ŷ)) for images in [-1, 1]."""
        code = self.encoder(images)
        generated = self.decoder(code)
        return code, generated, self.reencoder(generated)


@register_detector("sure-roi")
class SureROIDetector(Detector):
    """ROI-GANomaly with a Monte-Carlo SURE loss; score = latent distance."""

    paper = "Wang, Anomaly Detection in Chest X-Ray Screening based on Adversarial Screening (MSc diss., Birmingham, 2022)"
    needs = ("roi_masks",)
    paper_settings = ("epochs", "batch_size", "lr", "latent", "width", "w_adv", "w_sure", "w_enc", "loss")
    smoke_params = {"epochs": 30, "batch_size": 16, "width": 16, "latent": 32, "lr": 5e-4}

    @classmethod
    def check_input(cls, image_size: int, channels: int, params: dict) -> None:
        check_dcgan_size(image_size)

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 epochs: PositiveInt = 70, batch_size: PositiveInt = 32, lr: PositiveFloat = 2e-4,
                 beta1: Beta = 0.5, latent: PositiveInt = 100, width: PositiveInt = 64, w_adv: NonNegativeFloat = 1.0,
                 w_sure: NonNegativeFloat = 50.0, w_enc: NonNegativeFloat = 1.0, loss: Literal[LOSSES] = "sure",
                 sigma: NonNegativeFloat | None = None, tau: PositiveFloat = 1e-2, sure_literal: bool = False,
                 reinit_below: NonNegativeFloat = 1e-5, select: Literal[SELECTIONS] = "last") -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if sigma is not None and sigma < 0:
            raise ValueError(f"sigma must be >= 0 (or null: estimated from the training images), got {sigma}")
        self.epochs, self.batch_size, self.lr, self.beta1 = epochs, batch_size, lr, beta1
        self.w_adv, self.w_sure, self.w_enc = w_adv, w_sure, w_enc
        self.loss, self.sigma, self.tau, self.sure_literal = loss, sigma, tau, sure_literal
        self.reinit_below, self.select = reinit_below, select
        if select == "best_val_auroc":  # the epoch is chosen with labelled anomalies: not unsupervised any more
            self.supervision = "semi-supervised"
        self.selected_epoch = -1
        torch.manual_seed(self.seed)
        self.generator_net = ROIGenerator(image_size, channels, latent, width).to(self.device)
        self.discriminator = DCGANDiscriminator(image_size, channels, width).to(self.device)
        dcgan_init(self.generator_net)
        dcgan_init(self.discriminator)
        self.fitted_sigma = torch.tensor(float("nan"))

    @classmethod
    def held_out_label_use(cls, params: dict) -> str | None:
        """``select: best_val_auroc`` picks the epoch on validation normals plus labelled anomalies."""
        return "select: best_val_auroc" if params.get("select") == "best_val_auroc" else None

    def extra_tags(self) -> dict[str, str]:
        tags = {"loss": self.loss, "selection": "best-val-epoch" if self.select == "best_val_auroc" else "final-epoch"}
        if self.loss == "sure":
            tags["sure_form"] = "literal" if self.sure_literal else "recommended"
        return tags

    def paper_deviations(self) -> list[str]:
        """What makes these rows differ from the dissertation's setting (Sec. 5.1, Fig. B.2)."""
        found = []
        if self.select == "last":
            found.append("last epoch (the dissertation's Best AUROC picks the epoch on a labelled validation set)")
        return found

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"fitted_sigma": self.fitted_sigma}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.fitted_sigma = state.get("fitted_sigma", self.fitted_sigma)

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None, *,
            anomaly_pool: ImageSet | None = None) -> None:
        """Train; with ``select="best_val_auroc"`` keep the epoch whose ROC AUC on the validation normals plus the
        labelled anomaly pool (never the test set) is highest, as the dissertation's "Best AUROC" (Sec. 5.1, 5.3)."""
        selecting = self.select == "best_val_auroc"
        if selecting and (val is None or anomaly_pool is None or not len(val) or not len(anomaly_pool)):
            raise DatasetError("sure-roi select=best_val_auroc needs validation normals and a labelled anomaly pool "
                               "(the dataset's n_anomaly_pool > 0 and val_fraction > 0)")
        best = (-1.0, None)
        if train.roi_masks is None:
            raise DatasetError("sure-roi needs ROI masks for its training images (ImageSet.roi_masks is None)")
        log = log or TrainLog()
        sigma = self.sigma if self.sigma is not None else estimate_noise_sigma(train.float_images() * 2.0 - 1.0)
        self.fitted_sigma = torch.tensor(float(sigma))
        optimizer_g = torch.optim.Adam(self.generator_net.parameters(), lr=self.lr, betas=(self.beta1, 0.999))
        optimizer_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.lr, betas=(self.beta1, 0.999))
        n = len(train)
        batch_size = min(self.batch_size, n)
        step = 0
        self.train_mode()
        for epoch in log.epochs(self.epochs):
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n - n % batch_size, batch_size):  # drop_last, as GANomaly (A18)
                index = order[start:start + batch_size]
                images = self.to_device(train.float_images(index))
                masks = self.to_device(train.roi_masks[index]).float()
                losses = self._step(images, masks, sigma, optimizer_g, optimizer_d)
                log.log(epoch, step, **losses)
                step += 1
            if selecting:
                auc = self._validation_auroc(val, anomaly_pool)
                log.log(epoch, step, val_roc_auc=auc)
                if auc > best[0]:
                    best = (auc, copy.deepcopy(self.generator_net.state_dict()))
                    self.selected_epoch = epoch
                self.train_mode()
        if best[1] is not None:
            self.generator_net.load_state_dict(best[1])
        self.eval_mode()

    def _validation_auroc(self, val: ImageSet, anomaly_pool: ImageSet) -> float:
        """ROC AUC of the current model on validation normals (0) and labelled pool anomalies (1)."""
        self.eval_mode()
        labelled = ImageSet.concat([val, anomaly_pool])
        scores = torch.cat([self.score(batch) for batch in labelled.batches(64)]).numpy()
        return float(roc_auc(np.r_[np.zeros(len(val)), np.ones(len(anomaly_pool))], scores))

    def _step(self, images: torch.Tensor, masks: torch.Tensor, sigma: float, optimizer_g: torch.optim.Optimizer,
              optimizer_d: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        """One GANomaly step: update G on l_gen, then Dc on l_Dc, re-initialising a collapsed Dc."""
        inputs = images * 2.0 - 1.0
        target = roi_target(images, masks) * 2.0 - 1.0
        code, generated, recode = self.generator_net(inputs)
        real_features = self.discriminator.features(target)  # kept with its graph for the Dc step
        self.discriminator.requires_grad_(False)  # the G step needs no Dc weight gradients
        l_adv = (self.discriminator.features(generated) - real_features.detach()).pow(2).mean()
        l_enc = (code - recode).pow(2).mean()
        if self.loss == "l2":
            l_rec = (generated - target).pow(2).mean()
        else:
            noise = torch.randn(images.shape, generator=self.generator).to(self.device)
            probe = noise * masks[:, None]
            perturbed = self.generator_net.decoder(self.generator_net.encoder(inputs + self.tau * probe))
            l_rec = sure_loss(generated, target, perturbed, probe, sigma=sigma, tau=self.tau,
                              literal=self.sure_literal, inner=noise)
        l_gen = self.w_adv * l_adv + self.w_sure * l_rec + self.w_enc * l_enc
        optimizer_g.zero_grad(set_to_none=True)
        l_gen.backward()
        optimizer_g.step()
        self.discriminator.requires_grad_(True)

        real = self.discriminator.logit(real_features)
        fake = self.discriminator.logit(self.discriminator.features(generated.detach()))
        l_d = discriminator_loss(real, fake)
        optimizer_d.zero_grad(set_to_none=True)
        l_d.backward()
        optimizer_d.step()
        if float(l_d.detach()) < self.reinit_below:
            dcgan_init(self.discriminator)
        return {"l_adv": l_adv, "l_" + self.loss: l_rec, "l_enc": l_enc, "l_gen": l_gen, "l_d": l_d}

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Latent distance ``mean((E1(X) − E2(De(E1(X))))²)`` per image (eq. 4.5), eval mode."""
        self.eval_mode()
        code, _, recode = self.generator_net(self.to_device(images) * 2.0 - 1.0)
        return (code - recode).pow(2).flatten(1).mean(dim=1).cpu()

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The generated ROI image in [0, 1] (what the decoder thinks the organ region looks like)."""
        self.eval_mode()
        _, generated, _ = self.generator_net(self.to_device(images) * 2.0 - 1.0)
        return ((generated + 1.0) / 2.0).cpu()
