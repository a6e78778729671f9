"""``patchcore``: PatchCore (Roth, Pemula, Zepeda, Schölkopf, Brox, Gehler: "Towards Total Recall in Industrial
Anomaly Detection", CVPR 2022).

A frozen ImageNet network gives every training image's locally aware patch features (Sec. 3.1, Eqs. 1-2,
:mod:`.features`): WideResNet-50-2 (``backbone``) at ``layer2`` and ``layer3`` (``layers``), each map averaged over
the 3 x 3 neighbourhood of every position (``patch_size``), ``layer3`` upsampled bilinearly to ``layer2``'s
resolution, the two concatenated and reduced to 1024 dimensions by adaptive average pooling (``target_dim``).
The memory bank is a greedy k-center coreset of all training patch features (Sec. 3.2, Algorithm 1,
:mod:`.coreset`): ``coreset_fraction`` of them (10 %; the paper's 1 % variant is 0.01), chosen by farthest-first
traversal on a random Johnson-Lindenstrauss projection to ``projection_dim`` = 128 dimensions. Testing (Sec. 3.3):
each test patch's distance to its nearest bank feature (:mod:`.search`, exact, in blocks on the job's device); the
image score is Eq. 7 (:mod:`.reweighting`): the largest patch distance ``s*`` re-weighted by how isolated its
nearest bank feature ``m*`` is among its ``b`` = ``num_neighbours`` = 9 nearest bank features; the anomaly map is the
patch distances on the feature grid, upsampled bilinearly to the image and smoothed by a Gaussian of
``map_sigma`` = 4 pixels.

Inputs: grey-level images go in as three equal channels, standardised with ImageNet's mean and standard deviation
(the weights' training statistics; :class:`~medad.detectors.blocks.backbone.Backbone`). Weights (``weights``):
``imagenet`` (torchvision's ``Wide_ResNet50_2_Weights.IMAGENET1K_V1``, the file the authors' code and anomalib load,
through torch's hub cache; offline and not cached, an error names the file and where to put it), a local state dict
path, or ``random`` (rows marked ``weights=random``: not the method); ``width_divisor`` > 1 narrows a randomly
initialised network for tests. The paper resizes to 256 and centre-crops 224 px; medad feeds the config's
``image_size`` without a crop (a crop could cut lesions at the border).

Memory (what the paper's single selection over all patches cannot bound: at OCT's 26,315 training images the
patch features alone are 27 GB at 128 px): the fit streams. Images go through the network ``batch_size`` at a
time, their patch features fill a chunk, and each full chunk is reduced to its coreset before the next one fills
(:class:`.coreset.StreamingCoreset`). ``memory_cap_mb`` bounds what the fit holds on the job's device: the memory
bank (allocated once at its final size), one chunk's features with their projection and distance vectors, and one
batch in flight (its patch features and an allowance of three times the network's largest activation per image);
the chunk is the whole training set when that fits (then the selection is the paper's exactly), else the largest
whole number of images' patches that does; a cap too small even for one image is an error saying what to change.
Rows whose coreset was selected in more than one chunk say so in their ``deviations`` tag. Scoring holds the bank
and ``search_block_mb`` of distances at a time.

The fit trains nothing: its history rows are each chunk's covering radius (``coreset_radius``, the largest
distance, in the projected space, of a patch feature to its nearest selected one).
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
from medad.detectors.patchcore.coreset import (
    FLOAT_BYTES,
    MemoryPlan,
    StreamingCoreset,
    chunk_work,
    plan_memory,
    random_projection,
    time_greedy,
)
from medad.detectors.patchcore.features import patch_embedding
from medad.detectors.patchcore.reweighting import reweighted_scores
from medad.detectors.patchcore.search import nearest, time_search
from medad.detectors.scoring import gaussian_blur
from medad.params import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, UnitFraction
from medad.registry import register_detector

BACKBONES = ("wide_resnet50_2", "resnet18")


def _check_layers(backbone: str, layers: tuple[str, ...] | list[str], patch_size: int) -> tuple[str, ...]:
    names = ARCHITECTURES[backbone].layers if backbone in ARCHITECTURES else ()
    if not layers or len(set(layers)) != len(layers) or any(layer not in names for layer in layers):
        raise ValueError(f"patchcore layers must be distinct names among {', '.join(names)}; got {list(layers)}")
    if patch_size % 2 == 0:
        raise ValueError(f"patchcore patch_size must be odd (a neighbourhood centred on its position), got {patch_size}")
    return tuple(sorted(layers, key=names.index))


@register_detector("patchcore")
class PatchCoreDetector(Detector):
    """PatchCore: nearest-neighbour distance to a coreset memory bank of pretrained patch features; Eq. 7's image score."""

    paper = "Roth et al., Towards Total Recall in Industrial Anomaly Detection (PatchCore), CVPR 2022"
    paper_settings = ("backbone", "layers", "patch_size", "target_dim", "coreset_fraction", "projection_dim",
                      "num_neighbours", "map_sigma")
    # a quarter-width random ResNet-18: random WideResNet-50-2 features at layer3 are noise-like (without trained
    # BatchNorm statistics its residual stream grows about 5x per stage): 0.42-0.53 ROC AUC on the smoke set at 32
    # and 64 px, where ResNet-18's reach 0.84 (0.77 with the channels pooled, which mixes random channels)
    smoke_params = {"backbone": "resnet18", "weights": "random", "width_divisor": 4, "target_dim": 0, "batch_size": 16}

    @classmethod
    def pretrained_files(cls, params: dict) -> list[tuple[Path, str]]:
        return pretrained_files(params.get("backbone", BACKBONES[0]), params.get("weights", "imagenet"))

    @classmethod
    def check_settings(cls, params: dict) -> None:
        _check_layers(params.get("backbone", BACKBONES[0]), params.get("layers", ("layer2", "layer3")),
                      params.get("patch_size", 3))

    @classmethod
    def _grid(cls, params: dict[str, Any], image_size: int) -> tuple[int, int, int]:
        """(patches per image, feature dimension, dimension the coreset selects in) without building anything:
        the shallowest layer's grid is ``ceil(image_size / stride)`` a side (each stride-2 step rounds up)."""
        spec = ARCHITECTURES[params["backbone"]]
        layers = _check_layers(params["backbone"], params["layers"], params["patch_size"])
        side = math.ceil(image_size / spec.strides[spec.layers.index(layers[0])])
        channels = sum(spec.channels[spec.layers.index(layer)] for layer in layers) // params["width_divisor"]
        dim = params["target_dim"] or channels
        projection = params["projection_dim"]
        return side * side, dim, projection if 0 < projection < dim else dim

    @classmethod
    def cost_terms(cls, params: dict[str, Any], n_train: int, image_size: int) -> dict[str, tuple[float, float]]:
        """The coreset's selection steps and distance evaluations (quadratic in a chunk's patches) per fit, and the
        nearest-neighbour search's (query, bank row) pairs per scored image (the bank grows with the training set).
        The plan is made without the batch's allowance (a chunk at most slightly larger than the fit's)."""
        patches, dim, selected_in = cls._grid(params, image_size)
        total = n_train * patches
        try:
            plan = plan_memory(total, patches, dim, params["projection_dim"], params["coreset_fraction"], 0,
                               int(params["memory_cap_mb"] * 2**20))
        except ValueError:  # the fit will refuse the cap and say why: nothing to estimate
            return {}
        steps, distances = chunk_work(total, plan.chunk, params["coreset_fraction"])
        return {"coreset_steps": (steps, 0.0), "coreset_distances": (distances * selected_in, 0.0),
                "search": (0.0, patches * plan.bank_rows * dim)}

    @classmethod
    def time_cost_term(cls, name: str, params: dict[str, Any], device: torch.device) -> float:
        """Seconds per unit: a selection step, a float of a coreset distance, a float of a search distance."""
        _, dim, selected_in = cls._grid(params, 224)
        if name == "search":
            return time_search(dim, device) / dim
        per_step, per_distance = time_greedy(selected_in, device)
        return per_step if name == "coreset_steps" else per_distance / selected_in

    def __init__(self, *, image_size: int, channels: int, device: str = "cpu", seed: int = 0,
                 backbone: Literal[BACKBONES] = "wide_resnet50_2", layers: tuple[str, ...] = ("layer2", "layer3"),
                 weights: str = "imagenet", width_divisor: PositiveInt = 1, patch_size: PositiveInt = 3,
                 target_dim: NonNegativeInt = 1024, coreset_fraction: UnitFraction = 0.1,
                 projection_dim: NonNegativeInt = 128, num_neighbours: PositiveInt = 9,
                 map_sigma: NonNegativeFloat = 4.0, batch_size: PositiveInt = 32,
                 memory_cap_mb: PositiveFloat = 4096.0, search_block_mb: PositiveFloat = 64.0) -> None:
        super().__init__(image_size=image_size, channels=channels, device=device, seed=seed)
        self.layers = _check_layers(backbone, layers, patch_size)
        self.patch_size, self.target_dim, self.coreset_fraction = patch_size, target_dim, coreset_fraction
        self.projection_dim, self.num_neighbours, self.map_sigma = projection_dim, num_neighbours, map_sigma
        self.batch_size, self.memory_cap_mb, self.search_block_mb = batch_size, memory_cap_mb, search_block_mb
        torch.manual_seed(self.seed)
        self.backbone = Backbone(backbone, self.layers, weights=weights, width_divisor=width_divisor,
                                 what=f"patchcore backbone ({backbone})", hint=weights_hint("patchcore", "weights"))
        self.backbone.to(self.device)
        self.bank: torch.Tensor | None = None
        self.bank_squares: torch.Tensor | None = None
        self.radii = torch.zeros(0)
        self.plan: MemoryPlan | None = None

    @property
    def weights(self) -> str:
        return self.backbone.weights_tag

    def paper_deviations(self) -> list[str]:
        if self.plan is None or self.plan.chunks == 1:
            return []
        return [f"coreset selected in {self.plan.chunks} chunks of {self.plan.chunk} patches under memory_cap_mb "
                f"{self.memory_cap_mb:g} (paper: one selection over all {self.plan.total} patches)"]

    # --- features ------------------------------------------------------------------------------------------
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features ``(N, D, h, w)`` (float32) of [0, 1] images."""
        with torch.inference_mode():
            return patch_embedding(self.backbone(self.to_device(images)), self.patch_size, self.target_dim)

    def _batch_bytes(self, image: torch.Tensor) -> tuple[int, int, int]:
        """(patches per image, feature dimension, bytes one batch of ``batch_size`` images holds in flight): one
        image through the network, its largest activation counted three times (a residual block's input, its
        intermediate and its output), plus its layer maps, their concatenation and its patch features."""
        largest = [0]

        def record(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
            largest[0] = max(largest[0], output.numel())

        hooks = [m.register_forward_hook(record) for m in self.backbone.modules() if not list(m.children())]
        try:
            with torch.inference_mode():
                maps = self.backbone(self.to_device(image))
        finally:
            for hook in hooks:
                hook.remove()
        embedding = patch_embedding(maps, self.patch_size, self.target_dim)
        height, width = embedding.shape[-2:]
        concatenated = sum(m.shape[1] for m in maps.values()) * height * width
        per_image = 3 * largest[0] + sum(m.numel() for m in maps.values()) + concatenated + embedding[0].numel()
        return height * width, embedding.shape[1], self.batch_size * per_image * FLOAT_BYTES

    # --- training ------------------------------------------------------------------------------------------
    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        log = log or TrainLog()
        patches, dim, batch_bytes = self._batch_bytes(train.float_images(slice(0, 1)))
        total = len(train) * patches
        self.plan = plan_memory(total, patches, dim, self.projection_dim, self.coreset_fraction, batch_bytes,
                                int(self.memory_cap_mb * 2**20))
        projection = random_projection(dim, self.projection_dim, self.generator)
        coreset = StreamingCoreset(total, dim, self.coreset_fraction, self.plan, projection, self.generator, self.device)
        for epoch in log.epochs(1):
            for batch in train.batches(self.batch_size):
                chunks_before = len(coreset.radii)
                coreset.add(self._embed(batch).permute(0, 2, 3, 1).reshape(-1, dim))
                for chunk in range(chunks_before, len(coreset.radii)):
                    log.log(epoch, chunk, coreset_radius=coreset.radii[chunk])
        self.bank, self.radii = coreset.finish()
        self.bank_squares = self.bank.pow(2).sum(dim=1)

    # --- scoring -------------------------------------------------------------------------------------------
    def _patch_distances(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(distances (B, h, w), nearest bank rows (B, h, w), patch features (B, h*w, D))``."""
        if self.bank is None:
            raise RuntimeError("patchcore: fit (or load a checkpoint) before scoring")
        embedding = self._embed(images)
        batch, dim, height, width = embedding.shape
        patches = embedding.permute(0, 2, 3, 1).reshape(batch, height * width, dim)
        distance, row = nearest(patches.reshape(-1, dim), self.bank, self.bank_squares,
                                int(self.search_block_mb * 2**20))
        return distance.view(batch, height, width), row.view(batch, height, width), patches

    def score(self, images: torch.Tensor) -> torch.Tensor:
        distance, row, patches = self._patch_distances(images)
        with torch.inference_mode():
            return reweighted_scores(distance.flatten(1), row.flatten(1), patches, self.bank, self.num_neighbours).cpu()

    def score_map(self, images: torch.Tensor) -> torch.Tensor:
        distance, _, _ = self._patch_distances(images)
        with torch.inference_mode():
            maps = F.interpolate(distance[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)
            return gaussian_blur(maps[:, 0], self.map_sigma).cpu()

    # --- checkpoints ---------------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, torch.Tensor]:
        if self.bank is None:
            return {}
        plan = self.plan or MemoryPlan(0, 0, 0, 0, 0)
        return {"bank": self.bank, "radii": self.radii,
                "plan": torch.tensor([plan.total, plan.chunk, plan.chunks, plan.bank_rows, plan.bytes], dtype=torch.long)}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        if "bank" not in state:
            return
        self.bank = state["bank"].to(self.device, torch.float32)
        self.bank_squares = self.bank.pow(2).sum(dim=1)
        self.radii = state["radii"].cpu()
        self.plan = MemoryPlan(*(int(v) for v in state["plan"].tolist()))
