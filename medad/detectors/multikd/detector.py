"""``multi-kd``: Multiresolution Knowledge Distillation (Salehi et al., CVPR 2021) as the study ran it
(Esmaeili et al., IEEE Access 2023, section IV.B.3, with the official Niousha12/Knowledge_Distillation_AD code).

A frozen source S (VGG16, ImageNet weights: see :mod:`.source`) and a small cloner C (config "B",
:mod:`.networks`). C is trained on normal images to mimic S at the four critical points
pool2..pool5 with ``Σ_k [1 − cos(vec a_c^k, vec a_s^k)] + λ·Σ_k mean (a_c^k − a_s^k)²`` (λ = ``lamda`` =
0.01, :mod:`.losses`), Adam(lr = 1e-3 in the study), C in train mode, no augmentation.
Score (C in eval mode): the same sum over pool3, pool4 and pool5 only, per image.

``score_map`` (the reference's localisation, not used by the study's tables): the gradient of that
score with respect to the input, by guided backpropagation through C's ReLUs (``localization: gbp``,
the reference default) or plain gradients (``gradients``); per image Σ_c |∂score/∂x|, scaled by its
minimum and 99th percentile and clipped to [0, 1], then Gaussian-smoothed (σ = ``map_sigma`` pixels,
4 in the reference at 128 px). ``localization: none`` skips it.

Inputs: [0, 1] without ImageNet mean/std, as the reference; one-channel images are repeated to three
channels (the reference's ``X.repeat(1, 3, 1, 1)``; VGG16 needs three).

Epochs: the reference's ``num_epochs: 201`` loop runs epochs 0..201 and its evaluated checkpoint is
written at epoch 200, i.e. after 201 passes: ``epochs`` = 201. ``protocol``: the reference evaluates C in
eval mode with S frozen, so ``reference`` equals ``clean`` (the tag is still written); its test-set AUC
printout every 10 epochs selects nothing.

Speed without changing the numbers: S is frozen, deterministic and the images are not augmented, so
its CP activations for the training set are computed once and kept (when they fit in
``source_cache_mb``; 0 turns the cache off); each training step then runs only C.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from medad.datasets.base import ImageSet
from medad.detectors.base import Detector, TrainLog
from medad.detectors.multikd.losses import distillation_terms
from medad.detectors.multikd.networks import SCORE_POINTS, build_cloner, build_source
from medad.detectors.multikd.source import HINT, WHAT, source_files, weights_tag
from medad.detectors.protocol import PROTOCOLS, check_protocol
from medad.detectors.scoring import gaussian_blur
from medad.detectors.study_inputs import check_choice, to_network
from medad.params import NonNegativeFloat, PositiveFloat, PositiveInt
from medad.registry import register_detector

LOCALIZATIONS = ("gbp", "gradients", "none")


@register_detector("multi-kd")
class MultiKDDetector(Detector):
    """Multi-KD: a small cloner distils a frozen VGG16 at pool2..pool5; score = its value + direction loss."""

    paper = "Salehi et al., Multiresolution Knowledge Distillation, CVPR 2021 (as run by Esmaeili et al., IEEE Access 2023)"
    paper_settings = ("epochs", "batch_size", "lr", "lamda", "source_width_divisor", "cloner_width", "equal_network_size")
    smoke_params = {"epochs": 20, "batch_size": 16, "source": "random", "source_width_divisor": 4,
                    "cloner_width": 8, "map_sigma": 1.0}

    @classmethod
    def pretrained_files(cls, params: dict) -> list[tuple[Path, str]]:
        return source_files(params.get("source", "imagenet"))

    @classmethod
    def check_input(cls, image_size: int, channels: int, params: dict) -> None:
        if image_size % 32:
            raise ValueError(f"multi-kd needs image_size divisible by 32 (five max-pools), got {image_size}")

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 epochs: PositiveInt = 201, batch_size: PositiveInt = 32, lr: PositiveFloat = 1e-3,
                 lamda: NonNegativeFloat = 0.01, source: str = "imagenet", source_width_divisor: PositiveInt = 1,
                 cloner_width: PositiveInt = 16, equal_network_size: bool = False,
                 localization: Literal[LOCALIZATIONS] = "gbp", map_sigma: NonNegativeFloat = 4.0,
                 source_cache_mb: NonNegativeFloat = 1024.0, protocol: Literal[PROTOCOLS] = "clean") -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.protocol = check_protocol(protocol)
        self.localization = check_choice("localization", localization, LOCALIZATIONS)
        if image_size % 32:
            raise ValueError(f"multi-kd needs image_size divisible by 32 (five max-pools), got {image_size}")
        self.epochs, self.batch_size, self.lr, self.lamda = epochs, batch_size, lr, lamda
        self.source_name, self.map_sigma, self.source_cache_mb = source, map_sigma, source_cache_mb
        torch.manual_seed(self.seed)
        self.source = build_source(source_width_divisor, source, WHAT, HINT).to(self.device)
        self.cloner = build_cloner(self.source, cloner_width, equal_network_size).to(self.device)

    @property
    def weights(self) -> str:
        return weights_tag(self.source_name)

    def extra_tags(self) -> dict[str, str]:
        return {"protocol": self.protocol}

    def _inputs(self, images: torch.Tensor) -> torch.Tensor:
        return to_network(self.to_device(images), 3, "unit")

    # --- training ------------------------------------------------------------------------------
    def _source_cache(self, train: ImageSet) -> list[torch.Tensor] | None:
        """S's CP activations for every training image, when they fit in ``source_cache_mb``."""
        per_image = sum(4 * c * (self.image_size // 2 ** (stage + 2)) ** 2
                        for stage, c in enumerate(self.source.cp_channels, start=0))
        if len(train) * per_image > self.source_cache_mb * 2 ** 20:
            return None
        parts: list[list[torch.Tensor]] = []
        with torch.inference_mode():
            for batch in train.batches(max(self.batch_size, 64)):
                parts.append(self.source(self._inputs(batch)))
        return [torch.cat(points) for points in zip(*parts)]

    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        log = log or TrainLog()
        torch.manual_seed(self.seed)
        optimizer = torch.optim.Adam(self.cloner.parameters(), lr=self.lr)
        cache = self._source_cache(train)
        self.cloner.train()
        step = 0
        for epoch in log.epochs(self.epochs):
            order = torch.randperm(len(train), generator=self.generator)
            for start in range(0, len(train), self.batch_size):
                index = order[start:start + self.batch_size]
                images = self._inputs(train.float_images(index))
                if cache is None:
                    with torch.no_grad():
                        targets = self.source(images)
                else:
                    targets = [points[index.to(points.device, non_blocking=True)] for points in cache]
                value, direction = distillation_terms(self.cloner(images), targets)
                value, direction = value.mean(), direction.mean()
                loss = direction + self.lamda * value
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                log.log(epoch, step, total=loss, value=value, direction=direction)
                step += 1
        self.cloner.eval()

    # --- scoring -------------------------------------------------------------------------------
    def _score_terms(self, x: torch.Tensor) -> torch.Tensor:
        cloned, target = self.cloner(x), self.source(x)
        value, direction = distillation_terms([cloned[i] for i in SCORE_POINTS], [target[i] for i in SCORE_POINTS])
        return direction + self.lamda * value

    def score(self, images: torch.Tensor) -> torch.Tensor:
        self.cloner.eval()
        with torch.inference_mode():
            return self._score_terms(self._inputs(images)).cpu()

    def score_map(self, images: torch.Tensor) -> torch.Tensor | None:
        if self.localization == "none":
            return None
        self.cloner.eval()
        x = self._inputs(images).detach().requires_grad_(True)
        self.cloner.set_guided(self.localization == "gbp")
        try:
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(self._score_terms(x).sum(), x)
        finally:
            self.cloner.set_guided(False)
        saliency = grad.abs().sum(dim=1).flatten(1)
        low = saliency.min(dim=1, keepdim=True).values
        high = torch.quantile(saliency, 0.99, dim=1, keepdim=True)
        saliency = ((saliency - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)
        return gaussian_blur(saliency.view(-1, *x.shape[-2:]), self.map_sigma).cpu()
