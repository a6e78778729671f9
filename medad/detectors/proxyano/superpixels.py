"""ProxyAno's superpixel-image (SI) proxy (Zhou et al., IEEE TMI, Sec. III-B; SLIC, Achanta et al., TPAMI 2012).

Every pixel of a SLIC superpixel takes the mean intensity of its superpixel. The SI of a training image
is only the regression target of the Proxy Extraction Module: it is computed once per training image
(:func:`superpixel_images`, cached in memory by image content and parameters) and never at test time.

[R] (spec-proxyano.md Sec. 1): ``compactness = 0.1`` for single-channel images in [0, 1] (scikit-image
>= 0.20 rescales the input internally, so the usual RGB value 10 degenerates into a regular grid),
``sigma = 0``, connectivity enforced; RGB images are segmented in Lab space (scikit-image's default).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch
from skimage.segmentation import slic

_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_CACHE_SIZE = 8


def slic_labels(image: np.ndarray, n_segments: int, compactness: float = 0.1, sigma: float = 0.0) -> np.ndarray:
    """SLIC superpixel labels ``(H, W)`` (0-based) of one image ``(C, H, W)`` in [0, 1]."""
    if image.ndim != 3:
        raise ValueError(f"slic_labels expects one (C, H, W) image, got shape {image.shape}")
    channel_axis = -1 if image.shape[0] == 3 else None
    data = np.moveaxis(image, 0, -1) if channel_axis is not None else image.mean(axis=0)
    return slic(data.astype(np.float64), n_segments=n_segments, compactness=compactness, sigma=sigma,
                channel_axis=channel_axis, start_label=0, enforce_connectivity=True)


def region_means(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The SI: each pixel of ``image (C, H, W)`` replaced by the mean of its region in ``labels (H, W)``."""
    flat = labels.ravel()
    counts = np.bincount(flat)
    out = np.empty_like(image, dtype=np.float32)
    for channel in range(image.shape[0]):
        sums = np.bincount(flat, weights=image[channel].ravel().astype(np.float64), minlength=len(counts))
        out[channel] = (sums / np.maximum(counts, 1))[labels]
    return out


def superpixel_image(image: np.ndarray, n_segments: int, compactness: float = 0.1, sigma: float = 0.0) -> np.ndarray:
    """The SI ``(C, H, W)`` float32 of one image ``(C, H, W)`` in [0, 1]."""
    return region_means(image, slic_labels(image, n_segments, compactness, sigma))


def superpixel_images(images: torch.Tensor, n_segments: int, compactness: float = 0.1, sigma: float = 0.0) -> torch.Tensor:
    """SIs of uint8 images ``(N, C, H, W)`` as uint8, cached by image content and parameters.

    A run that trains several detectors or seeds on the same training set computes the SLIC proxies once.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"superpixel_images expects uint8 images (the ImageSet storage), got {images.dtype}")
    digest = hashlib.blake2b(images.contiguous().numpy().tobytes(), digest_size=16).hexdigest()
    key = (digest, tuple(images.shape), n_segments, compactness, sigma)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    floats = images.numpy().astype(np.float32) / 255.0
    proxies = np.stack([superpixel_image(image, n_segments, compactness, sigma) for image in floats])
    result = torch.from_numpy(np.round(proxies * 255.0).astype(np.uint8))
    _CACHE[key] = result
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result


def scaled_segments(n_segments: int, image_size: int, reference_size: int = 256) -> int:
    """Superpixel count keeping the paper's superpixel area (800 at 256 px, about 9 x 9 px) at ``image_size``."""
    return max(1, round(n_segments * (image_size / reference_size) ** 2))
