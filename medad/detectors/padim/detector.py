"""``padim``: PaDiM (Defard, Setkov, Loesch, Audigier: "PaDiM: a Patch Distribution Modeling Framework for Anomaly
Detection and Localization", ICPR 2021).

Embedding (Sec. 3.1): a frozen ImageNet network's first three stages (``layers``: ``layer1``, ``layer2``,
``layer3``) give every image patch (a position of ``layer1``'s grid, stride 4) one vector: the deeper maps are
upsampled to ``layer1``'s resolution by repeating each cell (nearest neighbour, what the authors' unfold/fold
concatenation does), the three are concatenated (ResNet-18: 64 + 128 + 256 = 448 channels; WideResNet-50-2:
256 + 512 + 1024 = 1792) and ``n_features`` of these channels, drawn at random once from the detector's seed, are
kept (the paper's "random dimensionality reduction": 100 for ResNet-18 (PaDiM-R18-Rd100), 550 for
WideResNet-50-2 (PaDiM-WR50-Rd550); ``n_features`` 0 = the paper's count for the ``backbone``).
Normal model (Sec. 3.2, :mod:`.gaussian`): one Gaussian per position, ``mu_ij`` and
``Sigma_ij = 1/(N - 1) sum (x - mu)(x - mu)^T + eps I`` with ``eps`` = ``epsilon`` = 0.01, accumulated batch by
batch (the fit's memory does not grow with the training set). Inference (Sec. 3.3): the Mahalanobis distance
``M(x_ij) = sqrt((x_ij - mu_ij)^T Sigma_ij^-1 (x_ij - mu_ij))`` at every position is the anomaly map, upsampled
bilinearly to the image and smoothed by a Gaussian of ``map_sigma`` = 4 pixels (the authors' code); the image score
is the map's maximum.

Where medad differs from the authors' code on purpose: their script min-max normalises all maps by the test set's
minimum and maximum before thresholds are chosen; medad never uses test-set statistics (a monotone global
rescaling changes no ROC AUC, but would give thresholds that need the test set). The paper resizes to 256 and
centre-crops 224 px; medad feeds the config's ``image_size`` without a crop.

Inputs: grey-level images go in as three equal channels, standardised with ImageNet's mean and standard deviation
(:class:`~medad.detectors.blocks.backbone.Backbone`). Weights (``weights``): ``imagenet`` (torchvision's
``ResNet18_Weights`` / ``Wide_ResNet50_2_Weights.IMAGENET1K_V1`` through torch's hub cache; offline and not
cached, an error names the file and where to put it), a local state dict path, or ``random`` (rows marked
``weights=random``: not the method); ``width_divisor`` > 1 narrows a randomly initialised network for tests.

Memory: one ``n_features`` x ``n_features`` matrix per position (WideResNet-50-2 at 128 px: 1024 positions x
550 x 550 floats, 1.2 GB; at 224 px 3.8 GB), held on the job's device; scoring batches of ``batch_size``.
The fit trains nothing: its history row is the covariances' mean log-determinant (``mean_log_det``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from medad.datasets.base import ImageSet
from medad.detectors.base import Detector, TrainLog
from medad.detectors.blocks.backbone import ARCHITECTURES, Backbone, pretrained_files, weights_hint
from medad.detectors.padim.gaussian import RunningGaussians, mahalanobis, time_whitening
from medad.detectors.scoring import gaussian_blur
from medad.params import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from medad.registry import register_detector

BACKBONES = ("wide_resnet50_2", "resnet18")
PAPER_FEATURES = {"resnet18": 100, "wide_resnet50_2": 550}  # Rd100, Rd550
PAPER_LAYERS = ("layer1", "layer2", "layer3")


def _check(backbone: str, layers: tuple[str, ...] | list[str], n_features: int, width_divisor: int) -> int:
    """The layers' concatenated channel count (after ``width_divisor``), or a ValueError naming the bad setting."""
    spec = ARCHITECTURES[backbone]
    if not layers or len(set(layers)) != len(layers) or any(layer not in spec.layers for layer in layers):
        raise ValueError(f"padim layers must be distinct names among {', '.join(spec.layers)}; got {list(layers)}")
    total = sum(spec.channels[spec.layers.index(layer)] for layer in layers) // max(1, width_divisor)
    if n_features > total:
        raise ValueError(f"padim n_features {n_features} exceeds the {total} channels of {backbone} {', '.join(layers)}")
    return total


@register_detector("padim")
class PaDiMDetector(Detector):
    """PaDiM: a Gaussian per patch position over randomly chosen pretrained features; Mahalanobis distance map."""

    paper = ("Defard et al., PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and Localization, "
             "ICPR 2021")
    paper_settings = ("layers", "epsilon", "map_sigma")  # backbone x n_features: see paper_deviations
    smoke_params = {"backbone": "resnet18", "weights": "random", "width_divisor": 8, "n_features": 16,
                    "batch_size": 16}

    @classmethod
    def pretrained_files(cls, params: dict) -> list[tuple[Path, str]]:
        return pretrained_files(params.get("backbone", BACKBONES[0]), params.get("weights", "imagenet"))

    @classmethod
    def check_settings(cls, params: dict) -> None:
        _check(params.get("backbone", BACKBONES[0]), params.get("layers", PAPER_LAYERS), params.get("n_features", 0),
               params.get("width_divisor", 1))

    @classmethod
    def _features(cls, params: dict[str, Any]) -> int:
        total = _check(params["backbone"], params["layers"], params["n_features"], params["width_divisor"])
        return params["n_features"] or min(PAPER_FEATURES[params["backbone"]], total)

    @classmethod
    def cost_terms(cls, params: dict[str, Any], n_train: int, image_size: int) -> dict[str, tuple[float, float]]:
        """The covariances' inversion: once per fit, ``positions x n_features^3`` (the rest is per image)."""
        spec = ARCHITECTURES[params["backbone"]]
        shallowest = min(params["layers"], key=spec.layers.index)
        positions = math.ceil(image_size / spec.strides[spec.layers.index(shallowest)]) ** 2
        return {"inversion": (positions * cls._features(params) ** 3, 0.0)}

    @classmethod
    def time_cost_term(cls, name: str, params: dict[str, Any], device: torch.device) -> float:
        return time_whitening(cls._features(params), device)

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 backbone: Literal[BACKBONES] = "wide_resnet50_2", layers: tuple[str, ...] = PAPER_LAYERS,
                 weights: str = "imagenet", width_divisor: PositiveInt = 1, n_features: NonNegativeInt = 0,
                 epsilon: PositiveFloat = 0.01, map_sigma: NonNegativeFloat = 4.0,
                 batch_size: PositiveInt = 32) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        total = _check(backbone, layers, n_features, width_divisor)
        spec = ARCHITECTURES[backbone]
        self.backbone_name, self.layers = backbone, tuple(sorted(layers, key=spec.layers.index))
        self.n_features = n_features or min(PAPER_FEATURES[backbone], total)
        self.epsilon, self.map_sigma, self.batch_size = epsilon, map_sigma, batch_size
        torch.manual_seed(self.seed)
        self.backbone = Backbone(backbone, self.layers, weights=weights, width_divisor=width_divisor,
                                 what=f"padim backbone ({backbone})", hint=weights_hint("padim", "weights"))
        self.backbone.to(self.device)
        # the paper's random dimensionality reduction: drawn once, from the seed
        self.dims = torch.randperm(total, generator=self.generator)[:self.n_features].sort().values
        self.mean: torch.Tensor | None = None
        self.whitening: torch.Tensor | None = None

    @property
    def weights(self) -> str:
        return self.backbone.weights_tag

    def paper_deviations(self) -> list[str]:
        if PAPER_FEATURES.get(self.backbone_name) == self.n_features:
            return []
        return [f"n_features {self.n_features} with {self.backbone_name} (paper: 100 with resnet18, 550 with "
                "wide_resnet50_2)"]

    # --- embedding ---------------------------------------------------------------------------------------------
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embedding vectors ``(N, n_features, h, w)`` (float32) on ``layer1``'s grid."""
        with torch.inference_mode():
            maps, kept, offset = self.backbone(self.to_device(images)), [], 0
            size = next(iter(maps.values())).shape[-2:]
            for layer in maps.values():  # each layer's share of the chosen channels, before upsampling (less memory)
                mine = self.dims[(self.dims >= offset) & (self.dims < offset + layer.shape[1])] - offset
                offset += layer.shape[1]
                part = layer[:, mine.to(layer.device)].float()
                kept.append(part if part.shape[-2:] == size else F.interpolate(part, size=size, mode="nearest"))
            return torch.cat(kept, dim=1)

    # --- training ------------------------------------------------------------------------------------------
    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        log = log or TrainLog()
        gaussians = None
        for epoch in log.epochs(1):
            for batch in train.batches(self.batch_size):
                embedding = self._embed(batch)
                if gaussians is None:
                    gaussians = RunningGaussians(embedding[0, 0].numel(), self.n_features, embedding.device)
                gaussians.add(embedding.flatten(2))
            self.mean, self.whitening, log_det = gaussians.whitening(self.epsilon)
            log.log(epoch, 0, mean_log_det=log_det)

    # --- scoring -----------------------------------------------------------------------------------------------
    def _distance_grid(self, images: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            raise RuntimeError("padim: fit (or load a checkpoint) before scoring")
        embedding = self._embed(images)
        return mahalanobis(embedding.flatten(2), self.mean, self.whitening).view(len(images), *embedding.shape[-2:])

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            grid = self._distance_grid(images)
            maps = F.interpolate(grid[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            return gaussian_blur(maps, self.map_sigma).cpu()

    def score(self, images: torch.Tensor) -> torch.Tensor:
        return self.score_map(images).flatten(1).max(dim=1).values

    # --- checkpoints -----------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, torch.Tensor]:
        if self.mean is None:
            return {"dims": self.dims}
        return {"dims": self.dims, "mean": self.mean, "whitening": self.whitening}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.dims = state["dims"].cpu()
        if "mean" in state:
            self.mean, self.whitening = state["mean"].to(self.device), state["whitening"].to(self.device)
