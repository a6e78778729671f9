"""Region-level localisation metrics: AUPRO and Dice, both exact over every distinct threshold of the maps.

* **AUPRO** (Bergmann et al., "The MVTec Anomaly Detection Dataset", IJCV 2021, Sec. 5.1; the behaviour
  of the MVTec AD evaluation code): every connected component of an image's ground-truth mask, with
  8-connectivity, is one region. A pixel is predicted anomalous at threshold t when its score is >= t.
  FPR(t) is the fraction of the normal pixels (mask 0) of all images predicted anomalous, and
  PRO(t) = (1/K) sum_k |{p in C_k : score(p) >= t}| / |C_k| over the K regions C_k of all images.
  The curve (FPR(t), PRO(t)) over every distinct score t, extended by (0, 0) and (1, 1), is
  integrated with the trapezoidal rule from FPR 0 to ``max_fpr`` (0.3, as in the paper; the curve is
  interpolated linearly at ``max_fpr``) and divided by ``max_fpr``: 1 is perfect and a map that ranks
  pixels at random scores about ``max_fpr / 2``. Unlike pixel ROC AUC, a large lesion does not
  outweigh a small one.
* **Dice** = 2|P ∩ G| / (|P| + |G|) over all test pixels pooled, with P the pixels scored >= a threshold
  and G the mask pixels: the honest threshold is fixed from the normal validation images' maps
  (``pixel_threshold_val``); ``best_dice`` takes the best threshold on the test masks and is an
  oracle, labelled so in the CSV.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Pixels touching at a corner belong to one region, as in the MVTec AD evaluation code.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _as_pixels(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and anomaly maps {maps.shape} differ in shape")
    if not np.isfinite(maps).all():
        raise ValueError(f"anomaly maps hold NaN or inf values ({int((~np.isfinite(maps)).sum())} pixels)")
    return masks, maps


def _cumulative_at_thresholds(scores: np.ndarray, *contributions: np.ndarray) -> tuple[np.ndarray, ...]:
    """For every distinct value t of ``scores`` (descending): t, the number of pixels scored >= t, and for each
    of ``contributions`` (one value per pixel) its sum over those pixels.

    One sort and cumulative sums; a run of tied scores is one threshold, read at the run's last position.
    """
    scores = scores.ravel()
    order = np.argsort(scores, kind="stable")[::-1]
    ordered = scores[order]
    last_of_tie = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), ordered.size - 1]
    sums = [np.cumsum(c.ravel()[order], dtype=np.float64)[last_of_tie] for c in contributions]
    return (ordered[last_of_tie], last_of_tie + 1.0, *sums)


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel weight 1/|C_k| for a pixel of region C_k (0 for a normal pixel), and the number of regions.

    Regions are the 8-connected components of each image's mask; summing the weights of the pixels
    scored >= t gives K * PRO(t).
    """
    weights = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for image, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        weights[image] = np.r_[0.0, 1.0 / sizes[1:]][labels]
        n_regions += count
    return weights, n_regions


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact per-region-overlap curve (FPR, PRO) of ``(N, H, W)`` masks and maps, FPR non-decreasing.

    One point per distinct score (descending), preceded by (0, 0) and followed by (1, 1); empty arrays
    when the masks have no region or no normal pixel.
    """
    masks, maps = _as_pixels(masks, maps)
    weights, n_regions = _region_weights(masks)
    n_normal = int((~masks).sum())
    if n_regions == 0 or n_normal == 0:
        return np.zeros(0), np.zeros(0)
    _, _, false_positives, region_sum = _cumulative_at_thresholds(maps, ~masks, weights)
    fpr = np.clip(np.r_[0.0, false_positives / n_normal, 1.0], 0.0, 1.0)
    pro = np.clip(np.r_[0.0, region_sum / n_regions, 1.0], 0.0, 1.0)
    return fpr, pro


def area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under the polyline through (x, y) from x[0] to ``x_max``; x non-decreasing, x[0] <= x_max.

    The polyline is cut where its segment crossing ``x_max`` meets it (linear interpolation); points of
    equal x (vertical steps) add no area, and the crossing segment, from the last point with x <= x_max
    to the next one, always has x[end] > x[end - 1].
    """
    end = int(np.searchsorted(x, x_max, side="right"))
    xs, ys = x[:end], y[:end]
    if end < x.size:
        x0, x1, y0, y1 = x[end - 1], x[end], y[end - 1], y[end]
        xs, ys = np.r_[xs, x_max], np.r_[ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)]
    return float(np.trapezoid(ys, xs))


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Normalised area under the exact per-region-overlap curve up to ``max_fpr``; ``(N, H, W)`` masks and maps.

    AUPRO = (1 / max_fpr) * integral_0^max_fpr PRO d(FPR) (Bergmann et al., IJCV 2021, Sec. 5.1), over
    :func:`pro_curve`. NaN when the masks have no region or no normal pixel.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    fpr, pro = pro_curve(masks, maps)
    if fpr.size == 0:
        return float("nan")
    return area_up_to(fpr, pro, max_fpr) / max_fpr


def dice(masks: np.ndarray, maps: np.ndarray, threshold: float) -> float:
    """Dice of ``maps >= threshold`` against ``masks``, over all pixels pooled (1 when both are empty)."""
    masks, maps = _as_pixels(masks, maps)
    predicted = maps >= threshold
    denominator = predicted.sum() + masks.sum()
    return 1.0 if denominator == 0 else float(2.0 * (predicted & masks).sum() / denominator)


def best_dice(masks: np.ndarray, maps: np.ndarray) -> tuple[float, float]:
    """ORACLE: (Dice, threshold) maximising Dice of ``maps >= t`` over every distinct value t of the test maps.

    Dice(t) = 2 TP(t) / (P(t) + G), with P(t) the pixels scored >= t, TP(t) those inside the masks and G
    the mask pixels; predicting nothing (t above the maximum) is a candidate too, with Dice 1 when G = 0
    and 0 otherwise. On ties the highest threshold wins.
    """
    masks, maps = _as_pixels(masks, maps)
    nothing_dice = 0.0 if masks.any() else 1.0
    if maps.size == 0:
        return nothing_dice, float("inf")
    thresholds, predicted, true_positives = _cumulative_at_thresholds(maps, masks)
    values = 2.0 * true_positives / (predicted + masks.sum())
    best = int(np.argmax(values))  # the first maximum, i.e. the highest threshold: thresholds are descending
    if nothing_dice >= values[best]:
        return nothing_dice, float(np.nextafter(thresholds[0], np.inf))
    return float(values[best]), float(thresholds[best])


def pixel_threshold_val(val_maps: np.ndarray, quantile: float = 0.99) -> float:
    """The honest pixel threshold: the ``quantile`` of the normal validation images' map values.

    0.99 lets about 1 % of normal pixels through; chosen before the test set is seen.
    """
    val_maps = np.asarray(val_maps, dtype=np.float64)
    if val_maps.size == 0:
        raise ValueError("no validation maps: the honest pixel threshold needs normal validation images")
    if not np.isfinite(val_maps).all():
        raise ValueError("validation maps hold NaN or inf values: the honest pixel threshold is undefined")
    return float(np.quantile(val_maps, quantile))
