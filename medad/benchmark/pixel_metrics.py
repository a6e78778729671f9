"""Region-level localisation metrics: AUPRO and Dice.

* **AUPRO** (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021, Sec. 5.1): every
  connected component of a ground-truth mask is one region; at a threshold t the per-region overlap
  is the fraction of the region's pixels scored >= t, and PRO(t) is its mean over all regions of the
  test set. PRO is integrated over the false-positive rate of the normal pixels from 0 to ``max_fpr``
  (0.3, as in the paper) and divided by ``max_fpr``, so 1 is perfect and a random map scores about
  ``max_fpr / 2``. Unlike pixel ROC AUC, a large lesion does not outweigh a small one.
* **Dice** = 2|P ∩ G| / (|P| + |G|) over all test pixels pooled, at a given pixel threshold: the
  honest one is fixed from the normal validation images' maps (``pixel_threshold_val``); ``best_dice``
  searches the threshold on the test masks and is an oracle, labelled so in the CSV.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# The number of thresholds at which PRO is evaluated (quantiles of the normal pixels' scores).
AUPRO_STEPS = 400


def _as_pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and anomaly maps {maps.shape} differ in shape")
    if not np.isfinite(maps).all():
        raise ValueError("anomaly maps hold NaN or inf values")
    return masks, maps


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to ``max_fpr``; ``(N, H, W)`` masks and maps.

    NaN when the masks have no region or no normal pixel.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    masks, maps = _as_pixels(masks, maps)
    normal = np.sort(maps[~masks])
    if normal.size == 0:
        return float("nan")
    regions = [maps[i][labels == k] for i in range(len(maps))
               for labels, count in [ndimage.label(masks[i])] for k in range(1, count + 1)]
    if not regions:
        return float("nan")
    # Thresholds whose normal-pixel FPR spans [0, max_fpr]: the matching upper quantiles of the normal scores.
    levels = np.linspace(0.0, max_fpr, AUPRO_STEPS)
    thresholds = np.quantile(normal, 1.0 - levels)
    fpr = 1.0 - np.searchsorted(normal, thresholds, side="left") / normal.size
    pro = np.mean([1.0 - np.searchsorted(np.sort(r), thresholds, side="left") / r.size for r in regions], axis=0)
    # Ties can push the real FPR past max_fpr: interpolate the curve at exactly max_fpr and stop there.
    order = np.argsort(fpr, kind="stable")
    fpr, pro = fpr[order], pro[order]
    end_pro = float(np.interp(max_fpr, fpr, pro))
    keep = fpr < max_fpr
    x = np.concatenate([[0.0], fpr[keep], [max_fpr]])
    y = np.concatenate([[pro[keep][0] if keep.any() else end_pro], pro[keep], [end_pro]])
    return float(np.trapezoid(y, x) / max_fpr)


def dice(masks: np.ndarray, maps: np.ndarray, threshold: float) -> float:
    """Dice of ``maps >= threshold`` against ``masks``, over all pixels pooled (1 when both are empty)."""
    masks, maps = _as_pixels(masks, maps)
    predicted = maps >= threshold
    denominator = predicted.sum() + masks.sum()
    return 1.0 if denominator == 0 else float(2.0 * (predicted & masks).sum() / denominator)


def best_dice(masks: np.ndarray, maps: np.ndarray, steps: int = 200) -> tuple[float, float]:
    """(Dice, threshold) maximising Dice over ``steps`` quantiles of the test maps: an ORACLE threshold."""
    masks, maps = _as_pixels(masks, maps)
    candidates = np.unique(np.quantile(maps, np.linspace(0.5, 1.0, steps)))
    values = [dice(masks, maps, t) for t in candidates]
    best = int(np.argmax(values))
    return values[best], float(candidates[best])


def pixel_threshold_val(val_maps: np.ndarray, quantile: float = 0.99) -> float:
    """The honest pixel threshold: the ``quantile`` of the normal validation images' map values.

    0.99 lets about 1 % of normal pixels through; chosen before the test set is seen.
    """
    val_maps = np.asarray(val_maps, dtype=np.float64)
    if val_maps.size == 0:
        raise ValueError("no validation maps: the honest pixel threshold needs normal validation images")
    return float(np.quantile(val_maps, quantile))
