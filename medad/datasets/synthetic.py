"""``synthetic``: head-CT-like phantoms with inserted lesions; the embedded default (no download).

Normal images are the modified Shepp-Logan head phantom (Shepp & Logan, 1974; Toft's modified
intensities, the table scikit-image's ``shepp_logan_phantom`` renders) drawn analytically with a
random pose (rotation, scale, anisotropy, shift), per-structure shape and intensity jitter, smooth
tissue texture, a brain-window intensity mapping with random gain, blur and Gaussian noise.

Anomalies are the same kind of image with one or more soft-edged, lumpy blobs inside the brain,
hyper-dense (haemorrhage-like) or hypo-dense (infarct/tumour-like) with equal probability, so
that overall brightness does not give them away; the pixel mask is the blob's half-maximum region.
Every image is drawn from its own seeded generator: the same (seed, subset, part, index) always
gives the same image, whatever the set sizes.

Subsets: ``obvious`` (large, high-contrast lesions, one or two) and ``subtle`` (one smaller, fainter
lesion). Every lesion parameter can be overridden in the config. ``subtle`` is calibrated to be clearly
harder than ``obvious`` but not hopeless: the ``ae`` baseline at the default run's budget (64 px, 300
training normals, 30 epochs) scores ROC AUC 0.742 / 0.767 / 0.760 over seeds 0-2 (mean 0.756; ``obvious``:
about 0.92). Measured candidates (radius, contrast; AE mean over the same seeds): (0.04-0.07, 0.05-0.08), the
earlier preset, 0.537 (chance for every detector); (0.07-0.10, 0.08-0.12) 0.679; (0.06-0.09, 0.10-0.14) 0.709;
(0.05-0.08, 0.12-0.16) 0.721; (0.05-0.08, 0.14-0.18) 0.758; (0.06-0.09, 0.12-0.16) 0.756, the preset. Contrast
moves the baseline more than size; mean intensity stays uninformative (ROC AUC below 0.65) on both subsets. Each image also carries its ROI mask (the head),
and a small labelled anomaly pool (separate from the test set) serves semi-supervised detectors.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from medad.datasets.base import Dataset, ImageSet, Subset
from medad.datasets.cache import cached_arrays
from medad.params import NonNegativeInt, PositiveFloat, PositiveInt, Range
from medad.registry import register_dataset

# (intensity, semi-axis a, semi-axis b, centre x, centre y, angle in degrees): modified Shepp-Logan.
SHEPP_LOGAN_ELLIPSES = np.array([
    [1.00, 0.6900, 0.9200, 0.00, 0.0000, 0.0],
    [-0.80, 0.6624, 0.8740, 0.00, -0.0184, 0.0],
    [-0.20, 0.1100, 0.3100, 0.22, 0.0000, -18.0],
    [-0.20, 0.1600, 0.4100, -0.22, 0.0000, 18.0],
    [0.10, 0.2100, 0.2500, 0.00, 0.3500, 0.0],
    [0.10, 0.0460, 0.0460, 0.00, 0.1000, 0.0],
    [0.10, 0.0460, 0.0460, 0.00, -0.1000, 0.0],
    [0.10, 0.0460, 0.0230, -0.08, -0.6050, 0.0],
    [0.10, 0.0230, 0.0230, 0.00, -0.6060, 0.0],
    [0.10, 0.0230, 0.0460, 0.06, -0.6050, 0.0],
])
_WINDOW = 0.35  # phantom value mapped to white: a "brain window" (brain 0.2 -> 0.57, skull saturates)
# The drawing's version: phantoms are kept in the decode cache under it, so a change to PhantomRenderer (or to
# the per-image seeding) must bump it, and older cached phantoms are then replaced.
RENDERER_VERSION = 1


@dataclass(frozen=True)
class LesionSpec:
    """Lesion parameters: radius as a fraction of the image side, contrast in phantom units (brain = 0.2)."""

    radius: tuple[float, float]
    contrast: tuple[float, float]
    count: tuple[int, int]


SUBSET_LESIONS = {
    "obvious": LesionSpec(radius=(0.09, 0.14), contrast=(0.15, 0.22), count=(1, 2)),
    "subtle": LesionSpec(radius=(0.06, 0.09), contrast=(0.12, 0.16), count=(1, 1)),
}


def _ellipse_inside(x: np.ndarray, y: np.ndarray, a: float, b: float, cx: float, cy: float, angle_deg: float) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    dx, dy = x - cx, y - cy
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2


def _grid(size: int, supersample: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * supersample
    coords = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    x, y = np.meshgrid(coords, -coords)
    return x, y


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    n = image.shape[0] // factor
    return image.reshape(n, factor, n, factor).mean(axis=(1, 3))


class PhantomRenderer:
    """Draws one phantom, optionally with lesions, from a seeded generator."""

    def __init__(self, image_size: int, supersample: int = 2) -> None:
        self.size = image_size
        self.supersample = supersample
        self.x, self.y = _grid(image_size, supersample)

    def render(self, rng: np.random.Generator, lesions: LesionSpec | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image in [0, 1], lesion mask, head ROI mask), each ``(S, S)``."""
        ellipses = SHEPP_LOGAN_ELLIPSES.copy()
        # shape jitter per structure, then a global pose
        ellipses[2:, 0] *= rng.uniform(0.8, 1.2, len(ellipses) - 2)
        ellipses[:, 1:3] *= rng.uniform(0.92, 1.08, (len(ellipses), 2))
        ellipses[2:, 3:5] += rng.normal(0.0, 0.015, (len(ellipses) - 2, 2))
        ellipses[2:, 5] += rng.normal(0.0, 4.0, len(ellipses) - 2)
        ellipses[1, 1:3] = np.minimum(ellipses[1, 1:3], ellipses[0, 1:3] - 0.025)  # keep the skull closed
        scale = rng.uniform(0.82, 1.0) * np.array([rng.uniform(0.92, 1.08), 1.0])
        rotation = rng.uniform(-20.0, 20.0)
        shift = rng.uniform(-0.06, 0.06, 2)
        x, y = self._pose(scale, rotation, shift)

        phantom = np.zeros_like(x)
        for value, a, b, cx, cy, angle in ellipses:
            phantom += value * (_ellipse_inside(x, y, a, b, cx, cy, angle) <= 1.0)
        head = _ellipse_inside(x, y, *ellipses[0, 1:]) <= 1.0
        brain = _ellipse_inside(x, y, *ellipses[1, 1:]) <= 1.0
        phantom += brain * 0.025 * self._smooth_noise(rng, x.shape, sigma=0.08)

        lesion_mask = np.zeros_like(x, dtype=bool)
        if lesions is not None:
            for _ in range(rng.integers(lesions.count[0], lesions.count[1] + 1)):
                blob = self._lesion_blob(rng, x, y, ellipses[1], lesions)
                sign = rng.choice([-1.0, 1.0])
                phantom += sign * rng.uniform(*lesions.contrast) * blob * brain
                lesion_mask |= (blob >= 0.5) & brain

        gain = rng.uniform(0.85, 1.15)
        image = np.clip(phantom / _WINDOW, 0.0, 1.0) * gain
        image = _downsample(image, self.supersample)
        image = gaussian_filter(image, sigma=rng.uniform(0.3, 0.7))
        image = image + rng.normal(0.0, rng.uniform(0.01, 0.03), image.shape)
        image = np.clip(image, 0.0, 1.0)
        mask = _downsample(lesion_mask.astype(np.float64), self.supersample) >= 0.5
        roi = _downsample(head.astype(np.float64), self.supersample) >= 0.5
        return image, mask, roi

    def _pose(self, scale: np.ndarray, rotation_deg: float, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        angle = np.deg2rad(rotation_deg)
        dx, dy = self.x - shift[0], self.y - shift[1]
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / scale[0]
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / scale[1]
        return u, v

    def _smooth_noise(self, rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
        field = gaussian_filter(rng.normal(size=shape), sigma=sigma * shape[0] / 2.0)
        return field / (field.std() + 1e-12)

    def _lesion_blob(self, rng: np.random.Generator, x: np.ndarray, y: np.ndarray, brain: np.ndarray,
                     spec: LesionSpec) -> np.ndarray:
        """A soft, lumpy ellipse (1 inside, 0 outside) centred well inside the brain ellipse."""
        radius = rng.uniform(*spec.radius) * 2.0  # fraction of the side -> phantom units (side = 2)
        _, a, b, cx, cy, angle = brain
        for _ in range(100):
            px, py = rng.uniform(-1.0, 1.0, 2) * np.array([a, b]) * 0.7
            if (px / a) ** 2 + (py / b) ** 2 <= 0.5:
                break
        ra, rb = radius * rng.uniform(0.75, 1.25, 2)
        distance = np.sqrt(_ellipse_inside(x, y, ra, rb, cx + px, cy + py, rng.uniform(0, 180)))
        distance = distance + 0.25 * self._smooth_noise(rng, x.shape, sigma=radius / 2.0)
        edge = 0.12
        return 1.0 / (1.0 + np.exp((distance - 1.0) / edge))


def _seed_for(*parts: object) -> int:
    return zlib.crc32(":".join(str(p) for p in parts).encode())


@register_dataset("synthetic")
class SyntheticHeadCT(Dataset):
    """Shepp-Logan head phantoms with inserted lesions (no download)."""

    paper = "Synthetic head-CT phantoms (Shepp-Logan) with inserted lesions: the embedded default"
    subsets = tuple(SUBSET_LESIONS)
    needs_download = False

    def __init__(self, *, root: Path | None = None, image_size: int, channels: int = 1, split_seed: int = 0,
                 n_train: PositiveInt = 300, n_val: NonNegativeInt = 50, n_test: Annotated[int, Range(2)] = 200,
                 anomaly_fraction: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.5,
                 n_anomaly_pool: NonNegativeInt = 20, lesion_radius: list[PositiveFloat] | None = None,
                 lesion_contrast: list[PositiveFloat] | None = None, lesion_count: list[PositiveInt] | None = None) -> None:
        super().__init__(root=root, image_size=image_size, channels=channels, split_seed=split_seed)
        if not 0.0 < anomaly_fraction < 1.0:
            raise ValueError(f"anomaly_fraction must be in (0, 1), got {anomaly_fraction}")
        self.n_train, self.n_val, self.n_test = n_train, n_val, n_test
        self.anomaly_fraction = anomaly_fraction
        self.n_anomaly_pool = n_anomaly_pool
        self.overrides = {key: tuple(value) for key, value in
                          (("radius", lesion_radius), ("contrast", lesion_contrast), ("count", lesion_count))
                          if value is not None}
        for key, value in self.overrides.items():
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"lesion_{key} must be [min, max], got {list(value)}")

    def lesion_spec(self, subset: str) -> LesionSpec:
        """The subset's lesion preset with the config's overrides applied."""
        return replace(SUBSET_LESIONS[subset], **self.overrides)

    def _draw(self, subset: str, part: str, count: int, lesions: LesionSpec | None) -> ImageSet:
        """``count`` phantoms of ``part``, drawn once per machine: kept in the decode cache (a pure function of the
        split seed, subset, part, index, size and lesion parameters), so parallel jobs and later runs reuse them."""
        spec = None if lesions is None else [list(lesions.radius), list(lesions.contrast), list(lesions.count)]
        options = f"n{count}-seed{self.split_seed}-" + f"{zlib.crc32(json.dumps(spec).encode()):08x}"
        arrays = cached_arrays(dataset="synthetic", view=f"{subset}-{part}", image_size=self.image_size, channels=1,
                               options=options, fingerprint=f"renderer{RENDERER_VERSION}",
                               build=lambda: self._render(subset, part, count, lesions))
        pixels = torch.from_numpy(arrays["images"])[:, None].expand(-1, self.channels, -1, -1).contiguous()
        label = 0 if lesions is None else 1
        return ImageSet(
            images=pixels,
            labels=np.full(count, label),
            ids=[f"{subset}-{part}-{index:05d}" for index in range(count)],
            masks=torch.from_numpy(arrays["masks"]),
            roi_masks=torch.from_numpy(arrays["roi_masks"]),
        )

    def _render(self, subset: str, part: str, count: int, lesions: LesionSpec | None) -> dict[str, np.ndarray]:
        renderer = PhantomRenderer(self.image_size)
        images, masks, rois = [], [], []
        for index in range(count):
            rng = np.random.default_rng(_seed_for(self.split_seed, subset, part, index))
            image, mask, roi = renderer.render(rng, lesions)
            images.append(image)
            masks.append(mask)
            rois.append(roi)
        shape = (count, self.image_size, self.image_size)  # also when count is 0
        return {"images": np.round(np.reshape(images, shape) * 255.0).astype(np.uint8),
                "masks": np.reshape(masks, shape).astype(np.uint8), "roi_masks": np.reshape(rois, shape).astype(np.uint8)}

    def identity(self, subset: str) -> str:
        """The generator's parameters (the images are a function of them and the seed, at any size)."""
        return json.dumps({"subset": subset, "split_seed": self.split_seed, "n": [self.n_train, self.n_val, self.n_test],
                           "anomaly_fraction": self.anomaly_fraction, "pool": self.n_anomaly_pool,
                           "lesions": self.overrides}, sort_keys=True, default=list)

    def load(self, subset: str) -> Subset:
        self.check_subset(subset)
        lesions = self.lesion_spec(subset)
        n_anomalous = int(round(self.n_test * self.anomaly_fraction))
        test_normal = self._draw(subset, "test-normal", self.n_test - n_anomalous, None)
        test_anomalous = self._draw(subset, "test-anomalous", n_anomalous, lesions)
        test = ImageSet.concat([test_normal, test_anomalous])
        train = self._draw(subset, "train", self.n_train, None)
        val = self._draw(subset, "val", self.n_val, None) if self.n_val > 0 else None
        pool = self._draw(subset, "pool", self.n_anomaly_pool, lesions) if self.n_anomaly_pool > 0 else None
        return Subset(name=subset, train=train, val=val, test=test, anomaly_pool=pool)

