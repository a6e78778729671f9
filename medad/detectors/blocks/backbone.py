"""One pretrained feature extractor for every detector that reads a frozen ImageNet network: torchvision's
ResNet-18, WideResNet-50-2 or VGG16 trunk, read at named layers.

``Backbone(architecture, layers, weights=..., width_divisor=..., normalize=...)`` is an ``nn.Module`` whose
call maps images ``(N, 1 or 3, H, W)`` in [0, 1] to ``{layer name: features (N, C, h, w)}``:

- **architectures and layer names** (:data:`ARCHITECTURES`): ``resnet18`` and ``wide_resnet50_2`` are read
  at ``layer1`` .. ``layer4`` (the outputs of torchvision's four residual stages, strides 4, 8, 16, 32);
  ``vgg16`` at ``pool1`` .. ``pool5`` (the max-pool closing each of its five stages, strides 2 .. 32). Only
  the trunk up to the deepest layer asked for is built, loaded and run (PatchCore's layer2 + layer3 never
  pays for WideResNet-50-2's layer4, about 40 M of its 69 M weights).
- **weights** (``weights``): ``imagenet``: torchvision's weights API (``ResNet18_Weights.IMAGENET1K_V1``,
  ``Wide_ResNet50_2_Weights.IMAGENET1K_V1``, the file PatchCore's and PaDiM's code load, and
  ``VGG16_Weights.IMAGENET1K_V1``), read from torch's hub cache, downloaded into it where the machine is
  online, hash-checked and loaded weights-only (:mod:`medad.detectors.pretrained`); offline and not cached, a
  :class:`~medad.detectors.pretrained.PretrainedWeightsError` names the file and where to put it.
  ``random``: no pretrained weights (rows are to be marked ``weights=random``: not the method): the ResNets get
  torchvision's own initialisation (Kaiming-normal convolutions, fan-out; BatchNorm weight 1, bias 0 and
  running statistics 0 / 1), VGG16 Xavier-uniform convolution weights and zero biases (what Multi-KD's
  reference code draws for its source without pretraining). A **path** to a ``.pth``/``.pt`` state dict:
  torchvision's keys (``layer1.0.conv1.weight``; ``features.0.weight``, or a bare VGG ``features`` dict
  ``0.weight``); classifier keys and layers past the deepest tap are ignored; a file named like the release
  is hash-checked against it. :func:`weights_tag` gives the ``weights`` column: imagenet, random or
  ``local:<file name>``.
- **width** (``width_divisor``): every channel count divided by it (1: the real network; 2, 4, 8...: small,
  randomly initialised networks of the same shape for tests). WideResNet-50-2 keeps its bottleneck width
  ratio (2 x the planes), so its stages stay 4 x wider inside than ResNet-50's.
- **inputs**: one-channel (grey-level) images become three equal channels, as a PIL image converted to RGB
  would; with ``normalize`` (the default) they are then standardised with ImageNet's per-channel mean
  (0.485, 0.456, 0.406) and standard deviation (0.229, 0.224, 0.225), the statistics the weights were
  trained with. ``normalize=False`` feeds [0, 1] as it is (Multi-KD's reference code).
- **frozen**: parameters need no gradient and the module stays in eval mode whatever ``train()`` asks
  (BatchNorm uses its running statistics, so a feature never depends on the rest of its batch). Gradients
  still flow to the input where the caller asks for them (Multi-KD's saliency maps).

The module's own parameter names are torchvision's (``conv1.weight``, ``layer3.5.bn2.running_var``,
``features.28.bias``), so its ``state_dict`` is a prefix of the torchvision model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medad.detectors.pretrained import PretrainedWeightsError, hub_checkpoint, local_state_dict, torchvision_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM = "random"
IMAGENET = "imagenet"


@dataclass(frozen=True)
class Architecture:
    """A torchvision trunk: its tappable layers in order with their channels (at full width) and strides, and its
    ImageNet release (the weights enum and its file's URL, spelled out so that listing detectors imports no
    ``torchvision.models``; a test keeps the two equal)."""

    family: str                  # "resnet" or "vgg"
    layers: tuple[str, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    weights_enum: str
    imagenet_url: str


ARCHITECTURES: dict[str, Architecture] = {
    "resnet18": Architecture("resnet", ("layer1", "layer2", "layer3", "layer4"), (64, 128, 256, 512),
                             (4, 8, 16, 32), "ResNet18_Weights",
                             "https://download.pytorch.org/models/resnet18-f37072fd.pth"),
    "wide_resnet50_2": Architecture("resnet", ("layer1", "layer2", "layer3", "layer4"), (256, 512, 1024, 2048),
                                    (4, 8, 16, 32), "Wide_ResNet50_2_Weights",
                                    "https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth"),
    "vgg16": Architecture("vgg", ("pool1", "pool2", "pool3", "pool4", "pool5"), (64, 128, 256, 512, 512),
                          (2, 4, 8, 16, 32), "VGG16_Weights", "https://download.pytorch.org/models/vgg16-397923af.pth"),
}
# ResNet-18 / WideResNet-50-2: residual blocks per stage, the block, the bottleneck's width per group
_RESNET_SHAPES = {"resnet18": ((2, 2, 2, 2), "BasicBlock", 64), "wide_resnet50_2": ((3, 4, 6, 3), "Bottleneck", 128)}
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # torchvision's "D"


def architecture(name: str) -> Architecture:
    """The :class:`Architecture` called ``name``, or a ValueError listing the known ones."""
    if name not in ARCHITECTURES:
        raise ValueError(f"backbone must be one of {', '.join(ARCHITECTURES)}; got {name!r}")
    return ARCHITECTURES[name]


def weights_tag(weights: str) -> str:
    """The ``weights`` column for a ``weights`` setting: ``imagenet``, ``random`` or ``local:<file name>``."""
    return weights if weights in (IMAGENET, RANDOM) else f"local:{Path(weights).name}"


def pretrained_files(name: str, weights: str) -> list[tuple[Path, str]]:
    """(file, download URL or "") the backbone ``name`` with ``weights`` will read: for a detector's
    :meth:`~medad.detectors.base.Detector.pretrained_files` (the pre-flight check names what is missing)."""
    if weights == RANDOM:
        return []
    url = architecture(name).imagenet_url
    return [(hub_checkpoint(url), url)] if weights == IMAGENET else [(Path(weights).expanduser(), "")]


def check_width_divisor(width_divisor: int, key: str = "width_divisor") -> int:
    """``width_divisor`` when it divides 64 (every channel count of the three trunks), else a ValueError naming
    ``key`` (the detector's parameter)."""
    if width_divisor < 1 or 64 % width_divisor:
        raise ValueError(f"{key} must divide 64 (1, 2, 4, 8, 16, 32 or 64), got {width_divisor}")
    return width_divisor


class Backbone(nn.Module):
    """A frozen torchvision trunk returning ``{layer: features}`` at the ``layers`` asked for (module docstring).

    ``what`` names the network in errors (``"patchcore backbone (wide_resnet50_2)"``); ``hint`` says what else the
    user may set (the detector's own parameter names). :attr:`channels` and :attr:`strides` give each tapped
    layer's channel count and stride; :attr:`weights_tag` the ``weights`` column.
    """

    def __init__(self, name: str, layers: Sequence[str], *, weights: str = IMAGENET, width_divisor: int = 1,
                 normalize: bool = True, what: str = "", hint: str = "") -> None:
        super().__init__()
        spec = architecture(name)
        divisor = check_width_divisor(width_divisor)
        unknown = [layer for layer in layers if layer not in spec.layers]
        if not layers or unknown:
            raise ValueError(f"{name} layers must be some of {', '.join(spec.layers)}; got {list(layers)}")
        self.name, self.layers, self.normalize = name, tuple(layers), normalize
        self.weights_tag = weights_tag(weights)
        self.what = what or f"backbone ({name})"
        depth = max(spec.layers.index(layer) for layer in layers) + 1
        self.deepest = spec.layers[depth - 1]
        self.channels = {layer: spec.channels[spec.layers.index(layer)] // divisor for layer in self.layers}
        self.strides = {layer: spec.strides[spec.layers.index(layer)] for layer in self.layers}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # (module, the layer name it ends, or None): run in order up to the deepest tap
        self._plan: list[tuple[nn.Module, str | None]] = []
        if spec.family == "resnet":
            self._build_resnet(name, depth, divisor)
        else:
            self._build_vgg(depth, divisor)
        self._load(spec, weights, divisor, hint)
        self.requires_grad_(False)
        super().train(False)

    # --- the trunks (torchvision's module names, so torchvision's state dicts load as they are) ------------------
    def _build_resnet(self, name: str, depth: int, divisor: int) -> None:
        from torchvision.models import resnet

        depths, block_name, width_per_group = _RESNET_SHAPES[name]
        block = getattr(resnet, block_name)
        inplanes = 64 // divisor
        self.conv1 = nn.Conv2d(3, inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._plan += [(self.conv1, None), (self.bn1, None), (self.relu, None), (self.maxpool, None)]
        for stage in range(depth):
            planes, stride = (64 << stage) // divisor, 1 if stage == 0 else 2
            out = planes * block.expansion
            downsample = None
            if stride != 1 or inplanes != out:
                downsample = nn.Sequential(nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                                           nn.BatchNorm2d(out))
            blocks = [block(inplanes, planes, stride, downsample, base_width=width_per_group)]
            blocks += [block(out, planes, base_width=width_per_group) for _ in range(1, depths[stage])]
            inplanes = out
            layer = nn.Sequential(*blocks)
            setattr(self, f"layer{stage + 1}", layer)
            self._plan.append((layer, f"layer{stage + 1}"))

    def _build_vgg(self, depth: int, divisor: int) -> None:
        modules: list[nn.Module] = []
        channels = 3
        for stage in range(depth):
            for width in VGG16_STAGES[stage]:
                conv, relu = nn.Conv2d(channels, width // divisor, kernel_size=3, padding=1), nn.ReLU(inplace=True)
                modules += [conv, relu]
                self._plan += [(conv, None), (relu, None)]
                channels = width // divisor
            pool = nn.MaxPool2d(kernel_size=2, stride=2)
            modules.append(pool)
            self._plan.append((pool, f"pool{stage + 1}"))
        self.features = nn.Sequential(*modules)

    def _initialise_randomly(self, family: str) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and family == "vgg":
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _load(self, spec: Architecture, weights: str, divisor: int, hint: str) -> None:
        if weights == RANDOM:
            self._initialise_randomly(spec.family)
            return
        if weights == IMAGENET:
            import torchvision.models

            enum = getattr(torchvision.models, spec.weights_enum).IMAGENET1K_V1
            state, where = torchvision_state_dict(enum, what=self.what, hint=hint), hub_checkpoint(spec.imagenet_url)
        else:
            state = local_state_dict(weights, what=self.what, releases=(spec.imagenet_url,), hint=hint)
            where = Path(weights).expanduser()
        own = self.state_dict()
        if spec.family == "vgg" and not any(key.startswith("features.") for key in state):
            state = {f"features.{key}": value for key, value in state.items()}  # a bare VGG ``features`` dict
        kept = {key: value for key, value in state.items() if key in own}
        try:
            self.load_state_dict(kept, strict=True)
        except RuntimeError as error:
            raise PretrainedWeightsError(
                f"{self.what}: {where} does not fit a {self.name} trunk at width_divisor {divisor} up to "
                f"{self.deepest} (expected torchvision's {self.name} keys and shapes): {str(error).splitlines()[0]}"
                f"{f' {hint}' if hint else ''}") from None

    # --- use -----------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> Backbone:
        """Stays in eval mode: the trunk is frozen (BatchNorm keeps its running statistics)."""
        return super().train(False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images ``(N, 1 or 3, H, W)`` -> the trunk's input: three equal channels for grey-level images,
        standardised with ImageNet's mean and standard deviation when :attr:`normalize`."""
        if images.shape[1] not in (1, 3):
            raise ValueError(f"{self.what} takes 1- or 3-channel images, got {images.shape[1]} channels")
        if self.normalize:  # broadcasting a grey channel against the three means gives the three channels
            return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{layer: features (N, channels[layer], H / strides[layer], W / strides[layer])}`` of [0, 1] images."""
        x, features = self.prepare(images), {}
        for module, name in self._plan:
            x = module(x)
            if name in self.layers:
                features[name] = x
                if len(features) == len(self.layers):
                    break
        return {name: features[name] for name in self.layers}



def weights_hint(detector: str, key: str) -> str:
    """The sentence a detector's weights errors end with: how to give a local file or run without pretraining."""
    return (f"Or give a local state dict as the {detector} parameter `{key}: /path/to/file.pth`; `{key}: random` "
            f"runs without pretrained weights (rows marked weights=random).")
