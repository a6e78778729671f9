"""``f-anogan``: f-AnoGAN (Schlegl et al., Medical Image Analysis 54, 2019) as the study ran it
(Esmaeili et al., IEEE Access 2023, section IV.B.1, with the unofficial A03ki/f-AnoGAN code).

Two stages, each trained on normal images only:

1. **WGAN-GP**: generator G (z ~ N(0, I), latent 100) and critic D trained with
   ``L_D = −E[D(x)] + E[D(G(z))] + λ_gp·GP`` (λ_gp = 10) and ``L_G = −E[D(G(z))]``, Adam(lr, β = (0.5, 0.999)).
   As the reference: one critic step per batch, a generator step (same z) only when the batch index
   *within the epoch* is divisible by ``n_critic`` = 5, so the number of generator updates depends on
   the number of batches per epoch.
2. **izi_f encoder**: G and D frozen in eval mode, E trained with the study's
   ``L_enc = L_izi + κ·L_adv-fm = mean (x − G(E(x)))² + κ·mean (f(x) − f(G(E(x))))²`` (κ = 1), where f is
   the critic's flattened last-block features.

Score (the study: "the combination of L_adv-fm and L_izi"; the reference's test script): per image
``mean (x − G(E(x)))² + κ·mean (f(x) − f(G(E(x))))²``, all networks in eval mode, no normalisation.
``score_map``: the per-pixel squared residual (x − G(E(x)))² averaged over channels, i.e. the pixel
term of the score before averaging (the reference saves the residual images; it has no pixel metric).

Inputs: grayscale replicated to ``network_channels`` = 3 (the reference loads RGB through ImageFolder),
scaled to [-1, 1] (``input_range: symmetric``, its Normalize(0.5, 0.5)); ``input_range: unit`` feeds
[0, 1], the paper's literal wording. Training images are randomly flipped left-right (``train_flip``,
the reference's training transform).

Protocols (``protocol``): ``clean`` scores in eval mode without augmentation. ``reference``
additionally flips each test image left-right with probability 1/2, as the reference's test loader
does (its transform keeps RandomHorizontalFlip), seeded but dependent on the call order; maps and
reconstructions stay unflipped so that they align with the masks.

Choices where the reference is silent or wasteful (none moves the numbers): G runs without a graph in
critic-only steps; on generator steps G(z) is computed once and reused for the critic step (detached)
and the generator step (the reference runs G twice on the same z with unchanged weights, which also
updates G's BatchNorm running statistics twice); G and D are frozen (requires_grad False) in stage 2.
Histories: stage-2 epochs continue the epoch count of stage 1.
"""

from __future__ import annotations

from typing import Literal

import torch

from medad.datasets.base import ImageSet
from medad.detectors.base import Detector, TrainLog
from medad.detectors.fanogan.losses import gradient_penalty, izif_terms
from medad.detectors.fanogan.networks import Critic, Encoder, Generator
from medad.detectors.protocol import PROTOCOLS, check_protocol
from medad.detectors.study_inputs import (
    INPUT_RANGES,
    check_choice,
    from_network,
    network_channels_for,
    random_horizontal_flip,
    to_network,
)
from medad.params import Beta, NonNegativeFloat, PositiveFloat, PositiveInt
from medad.registry import register_detector


@register_detector("f-anogan")
class FAnoGANDetector(Detector):
    """f-AnoGAN: WGAN-GP, then an izi_f encoder; score = image residual + κ·critic-feature residual."""

    paper = "Schlegl et al., f-AnoGAN, Medical Image Analysis 2019 (as run by Esmaeili et al., IEEE Access 2023)"
    # Tiny sets give few generator steps under the reference's n_critic schedule: the smoke fit uses n_critic=1.
    paper_settings = ("gan_epochs", "encoder_epochs", "batch_size", "lr", "latent", "n_critic", "generator_width", "critic_width", "input_range")
    smoke_params = {"gan_epochs": 25, "encoder_epochs": 15, "batch_size": 16, "generator_width": 16,
                    "critic_width": 8, "latent": 16, "lr": 2e-3, "n_critic": 1}

    @classmethod
    def check_input(cls, image_size: int, channels: int, params: dict) -> None:
        if image_size % 16:
            raise ValueError(f"f-AnoGAN's critic and encoder need image_size divisible by 16, got {image_size}")

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 gan_epochs: PositiveInt = 300, encoder_epochs: PositiveInt = 200, batch_size: PositiveInt = 32,
                 lr: PositiveFloat = 2e-4, beta1: Beta = 0.5, beta2: Beta = 0.999, latent: PositiveInt = 100,
                 n_critic: PositiveInt = 5, lambda_gp: NonNegativeFloat = 10.0, kappa: NonNegativeFloat = 1.0,
                 generator_width: PositiveInt = 128, critic_width: PositiveInt = 16, network_channels: Literal[1, 3] = 3,
                 input_range: Literal[INPUT_RANGES] = "symmetric", train_flip: bool = True,
                 protocol: Literal[PROTOCOLS] = "clean") -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.protocol = check_protocol(protocol)
        self.input_range = check_choice("input_range", input_range, INPUT_RANGES)
        self.network_channels = network_channels_for(channels, network_channels)
        if n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {n_critic}")
        self.gan_epochs, self.encoder_epochs, self.batch_size = gan_epochs, encoder_epochs, batch_size
        self.lr, self.betas, self.latent, self.n_critic = lr, (beta1, beta2), latent, n_critic
        self.lambda_gp, self.kappa, self.train_flip = lambda_gp, kappa, train_flip
        torch.manual_seed(self.seed)
        nc = self.network_channels
        self.generator_net = Generator(image_size, nc, latent, generator_width).to(self.device)
        self.critic = Critic(image_size, nc, critic_width).to(self.device)
        self.encoder = Encoder(image_size, nc, latent, critic_width).to(self.device)
        self.test_flip_generator = torch.Generator().manual_seed(self.seed + 1)

    def extra_tags(self) -> dict[str, str]:
        tags = {"protocol": self.protocol}
        if self.input_range != "symmetric":  # rows not fed the reference's [-1, 1] inputs say so
            tags["input_range"] = self.input_range
        return tags

    def _prepare(self, batch: torch.Tensor, augment: bool) -> torch.Tensor:
        batch = self.to_device(batch)
        if augment:
            batch = random_horizontal_flip(batch, self.generator)
        return to_network(batch, self.network_channels, self.input_range)

    # --- training ------------------------------------------------------------------------------
    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        log = log or TrainLog()
        torch.manual_seed(self.seed)  # dropout masks
        step = self._fit_gan(train, log)
        self._fit_encoder(train, log, step)
        self.eval_mode()

    def _fit_gan(self, train: ImageSet, log: TrainLog) -> int:
        """Stage 1: WGAN-GP with the reference's n_critic schedule; returns the global step count."""
        G, D = self.generator_net, self.critic
        opt_g = torch.optim.Adam(G.parameters(), lr=self.lr, betas=self.betas)
        opt_d = torch.optim.Adam(D.parameters(), lr=self.lr, betas=self.betas)
        G.requires_grad_(True).train(), D.requires_grad_(True).train()
        step = 0
        for epoch in log.epochs(self.gan_epochs):
            for index, batch in enumerate(train.batches(self.batch_size, shuffle=True, generator=self.generator)):
                real = self._prepare(batch, self.train_flip)
                z = torch.randn(len(real), self.latent, generator=self.generator).to(self.device, non_blocking=True)
                generator_step = index % self.n_critic == 0
                with torch.set_grad_enabled(generator_step):
                    fake = G(z)
                penalty = gradient_penalty(D, real, fake.detach(), self.generator)
                critic_loss = -D(real).mean() + D(fake.detach()).mean() + self.lambda_gp * penalty
                opt_d.zero_grad(set_to_none=True)
                critic_loss.backward()
                opt_d.step()
                losses = {"adversarial_critic": critic_loss, "gradient_penalty": penalty}
                if generator_step:
                    generator_loss = -D(fake).mean()
                    opt_g.zero_grad(set_to_none=True)
                    generator_loss.backward(inputs=list(G.parameters()))
                    opt_g.step()
                    losses["adversarial_generator"] = generator_loss
                log.log(epoch, step, **losses)
                step += 1
        return step

    def _fit_encoder(self, train: ImageSet, log: TrainLog, step: int) -> None:
        """Stage 2: izi_f encoder training with G and D frozen in eval mode."""
        G, D, E = self.generator_net, self.critic, self.encoder
        for frozen in (G, D):
            frozen.eval().requires_grad_(False)
        optimizer = torch.optim.Adam(E.parameters(), lr=self.lr, betas=self.betas)
        E.train()
        for epoch in log.epochs(self.encoder_epochs):
            for batch in train.batches(self.batch_size, shuffle=True, generator=self.generator):
                images = self._prepare(batch, self.train_flip)
                reconstruction = G(E(images))
                with torch.no_grad():
                    image_features = D.features(images)
                image_term, feature_term = izif_terms(images, reconstruction, image_features, D.features(reconstruction))
                image_loss, feature_loss = image_term.mean(), feature_term.mean()
                loss = image_loss + self.kappa * feature_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                log.log(self.gan_epochs + epoch, step, encoder_izif=loss, encoder_image=image_loss,
                        encoder_features=feature_loss)
                step += 1

    # --- scoring -------------------------------------------------------------------------------
    @torch.inference_mode()
    def _evaluate(self, images: torch.Tensor, flip: bool = False) -> tuple[torch.Tensor, ...]:
        """(network-range input, reconstruction, image term, feature term) in eval mode."""
        self.eval_mode()
        images = self.to_device(images)
        if flip:
            images = random_horizontal_flip(images, self.test_flip_generator)
        x = to_network(images, self.network_channels, self.input_range)
        reconstruction = self.generator_net(self.encoder(x))
        image_term, feature_term = izif_terms(x, reconstruction, self.critic.features(x),
                                              self.critic.features(reconstruction))
        return x, reconstruction, image_term, feature_term

    def score(self, images: torch.Tensor) -> torch.Tensor:
        _, _, image_term, feature_term = self._evaluate(images, flip=self.protocol == "reference")
        return (image_term + self.kappa * feature_term).cpu()

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        x, reconstruction, _, _ = self._evaluate(images)
        return (reconstruction - x).pow(2).mean(dim=1).cpu()

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        _, reconstruction, _, _ = self._evaluate(images)
        return from_network(reconstruction, self.channels, self.input_range).cpu()
