"""Example test images with their reconstructions and anomaly maps, kept per job for the report's figures.

The report reads only the run folder, so a job that has something to show (a detector with
``reconstruct`` or ``score_map``) leaves ``examples.npz`` beside its CSVs: the first ``per_class``
normal and the first ``per_class`` anomalous test images (test order, so no selection by score),
their scores, and the prediction at the honest ``val_q95`` threshold (the study's Figs. 10-12 mark
predictions right or wrong).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from medad.datasets.base import ImageSet
from medad.detectors.base import Detector, score_map_or_none

EXAMPLES_FILE = "examples.npz"
EXAMPLE_KEYS = ("ids", "labels", "scores", "threshold", "threshold_policy", "images")


def example_index(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Positions of the first ``per_class`` normals, then the first ``per_class`` anomalies."""
    labels = np.asarray(labels)
    return np.concatenate([np.flatnonzero(labels == 0)[:per_class], np.flatnonzero(labels == 1)[:per_class]])


def examples_npz(detector: Detector, test: ImageSet, scores: np.ndarray, threshold: float,
                 per_class: int = 4) -> bytes | None:
    """The bytes of ``examples.npz``; None when the detector shows nothing (no reconstruction, no map)."""
    index = example_index(test.labels, per_class)
    if len(index) == 0:
        return None
    images = test.float_images(torch.as_tensor(index))
    with torch.no_grad():
        reconstructions = detector.reconstruct(images)
        maps = score_map_or_none(detector, images)
    if reconstructions is None and maps is None:
        return None
    arrays: dict[str, np.ndarray] = {
        "ids": np.array([test.ids[i] for i in index], dtype=str),
        "labels": test.labels[index].astype(np.int8),
        "scores": np.asarray(scores, dtype=np.float64)[index],
        "threshold": np.array(threshold, dtype=np.float64),
        "threshold_policy": np.array("val_q95"),
        "images": test.images[torch.as_tensor(index)].cpu().numpy(),
    }
    if reconstructions is not None:
        arrays["reconstructions"] = (reconstructions.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if maps is not None:
        maps = maps.detach().float().cpu()
        if maps.shape[-2:] != images.shape[-2:]:
            maps = torch.nn.functional.interpolate(maps[:, None], size=images.shape[-2:], mode="bilinear",
                                                   align_corners=False)[:, 0]
        arrays["maps"] = maps.numpy().astype(np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def read_examples(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an ``examples.npz`` (no pickles), checked for the keys the report needs."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    missing = [key for key in EXAMPLE_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}; expected {list(EXAMPLE_KEYS)} (+ reconstructions/maps)")
    return arrays
