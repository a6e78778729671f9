"""Image- and pixel-level metrics with named threshold policies (the CSV vocabulary of DESIGN.md).

Positive class = anomalous (label 1); a score above the threshold predicts anomalous.

Threshold policies:
- ``val_q95``: the 95th percentile of the scores of *normal validation* images. Honest: it is fixed
  before the test set is seen.
- ``youden``: the test-set threshold maximising sensitivity + specificity - 1. **Oracle.**
- ``best_f1``: the test-set threshold maximising F1 (the study's TABLE 3 operating point). **Oracle.**
- ``val_px_q99`` (pixel level, ``dice``): the 99th percentile of the anomaly-map values of the normal
  validation images. Honest. ``best_dice``: the pixel threshold maximising Dice on the test masks. **Oracle.**
- ``screen_s98``: the high-sensitivity screening filter (SURE-ROI, Wang 2022): the largest threshold that
  keeps 98% sensitivity on the labelled anomaly pool (never the test set); ``cleared_fraction`` is the
  share of test studies it would report as certainly normal. Honest for unsupervised detectors.

PR AUC is average precision (the step-wise area under the precision-recall curve, scikit-learn's
``average_precision_score``), which is what the reference implementations report.

Non-finite (NaN or infinite) scores or maps: test image scores define no metric, so they are an error
naming the part and the count; anywhere else (validation scores or maps, pool scores, test maps) only the
metrics they feed are NaN, each row's ``note`` saying why. Every NaN row carries a non-empty note.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from medad.evaluation.pixel_metrics import aupro, best_dice, dice, pixel_threshold_val

ORACLE_POLICIES = frozenset({"youden", "best_f1", "best_dice"})
THRESHOLD_METRICS = ("threshold", "precision", "recall", "specificity", "f1", "accuracy")
# Clinical operating points read off the test ROC curve (threshold-free summaries, like the AUC).
OPERATING_POINTS = {"sens_at_spec90": ("sensitivity", 0.90), "sens_at_spec95": ("sensitivity", 0.95),
                    "spec_at_sens95": ("specificity", 0.95)}


@dataclass(frozen=True)
class MetricRow:
    """One tidy metric value; ``note`` says why a value is NaN."""

    metric: str
    value: float
    threshold_policy: str = "none"
    note: str = ""

    @property
    def oracle(self) -> bool:
        return self.threshold_policy in ORACLE_POLICIES


def nonfinite_scores_reason(scores: np.ndarray, part: str) -> str | None:
    """``"<part>: k of n are NaN or infinite"``, or None when every score is finite."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    bad = int((~np.isfinite(scores)).sum())
    return f"{part}: {bad} of {scores.size} are NaN or infinite" if bad else None


def nonfinite_maps_reason(maps: np.ndarray, part: str) -> str | None:
    """``"<part>: k of n maps hold non-finite values (m pixels)"``, or None when every pixel is finite."""
    maps = np.asarray(maps, dtype=np.float64)
    bad = ~np.isfinite(maps.reshape(len(maps), -1))
    pixels = int(bad.sum())
    if not pixels:
        return None
    return (f"{part}: {int(bad.any(axis=1).sum())} of {len(maps)} maps hold non-finite values "
            f"({pixels} pixel{'' if pixels == 1 else 's'})")


def _join(*notes: str) -> str:
    return "; ".join(note for note in notes if note)


def _validate(labels: np.ndarray, scores: np.ndarray, part: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.shape[0]} vs {scores.shape[0]}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (normal) or 1 (anomalous), got values {sorted(set(labels.tolist()))[:5]}")
    reason = nonfinite_scores_reason(scores, part)
    if reason:
        raise ValueError(reason)
    return labels.astype(np.int64), scores


def single_class_reason(labels: np.ndarray) -> str | None:
    """Why threshold-free metrics are undefined for ``labels``, or None when both classes occur."""
    present = set(np.unique(labels).tolist())
    if present == {0, 1}:
        return None
    which = "normal" if present == {0} else "anomalous" if present == {1} else "no"
    return f"test set holds only {which} images: ROC/PR AUC undefined"


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count half); NaN for a single-class set."""
    labels, scores = _validate(labels, scores)
    return float("nan") if single_class_reason(labels) else float(roc_auc_score(labels, scores))


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision with anomalous as the positive class; NaN for a single-class set."""
    labels, scores = _validate(labels, scores)
    return float("nan") if single_class_reason(labels) else float(average_precision_score(labels, scores))


def confusion_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall (sensitivity), specificity, F1 and accuracy of ``score > threshold``.

    A ratio with an empty denominator (no predicted positives, no positives, no negatives) is NaN.
    """
    labels, scores = _validate(labels, scores)
    predicted = scores > threshold
    tp = float(np.sum(predicted & (labels == 1)))
    fp = float(np.sum(predicted & (labels == 0)))
    fn = float(np.sum(~predicted & (labels == 1)))
    tn = float(np.sum(~predicted & (labels == 0)))

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else float("nan")

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "precision": precision,
        "recall": recall,
        "specificity": ratio(tn, tn + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": ratio(tp + tn, len(labels)),
    }


# Why a ratio of :func:`confusion_metrics` (or of the screening rows) is NaN: its denominator is empty.
EMPTY_DENOMINATORS = {"precision": "no test image scores above the threshold",
                      "recall": "no anomalous test image", "specificity": "no normal test image",
                      "f1": "no anomalous test image and none above the threshold", "accuracy": "no test image",
                      "npv": "no test study cleared", "cleared_fraction": "no test study"}


def threshold_rows(values: dict[str, float], policy: str, note: str) -> list[MetricRow]:
    """Rows of one threshold policy's ``values``; a NaN value's note adds why its denominator is empty."""
    return [MetricRow(name, value, policy,
                      _join(note, f"{name} undefined: {EMPTY_DENOMINATORS.get(name, 'an input is undefined')}")
                      if np.isnan(value) else note)
            for name, value in values.items()]


def undefined_rows(names: tuple[str, ...], policy: str, note: str) -> list[MetricRow]:
    """NaN rows for ``names`` under ``policy``, all with ``note`` (which must say why)."""
    return [MetricRow(name, float("nan"), policy, note) for name in names]


def threshold_val_q95(val_scores: np.ndarray, quantile: float = 0.95) -> float:
    """The ``quantile`` of normal validation scores (linear interpolation)."""
    val_scores = np.asarray(val_scores, dtype=np.float64)
    if val_scores.size == 0:
        raise ValueError("val_q95 needs validation scores of normal images; the subset has no validation set")
    return float(np.quantile(val_scores, quantile))


def threshold_youden(labels: np.ndarray, scores: np.ndarray) -> float:
    """ORACLE: the test threshold maximising TPR - FPR (first one on ties)."""
    labels, scores = _validate(labels, scores)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    # roc_curve's thresholds mean "score >= t"; we predict "score > t", so step just below t.
    return float(np.nextafter(thresholds[best], -np.inf)) if np.isfinite(thresholds[best]) else float(scores.max())


def threshold_best_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    """ORACLE: the test threshold maximising F1 (first one on ties)."""
    labels, scores = _validate(labels, scores)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)[:-1]
    best = int(np.argmax(f1))
    return float(np.nextafter(thresholds[best], -np.inf))


def operating_point(labels: np.ndarray, scores: np.ndarray, fixed: str, level: float) -> float:
    """The best sensitivity at specificity >= ``level`` (``fixed="sensitivity"`` reads: sensitivity is the
    output), or the best specificity at sensitivity >= ``level`` (``fixed="specificity"``); NaN for one class.

    The clinical summaries "sensitivity at 90%/95% specificity" and "specificity at 95% sensitivity": the
    highest value reached at any threshold of the test ROC curve that meets the constraint (no interpolation
    between ROC points, so the value is one a real threshold achieves).
    """
    labels, scores = _validate(labels, scores)
    if single_class_reason(labels):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    if fixed == "sensitivity":
        return float(tpr[(1.0 - fpr) >= level - 1e-12].max())
    if fixed == "specificity":
        return float((1.0 - fpr)[tpr >= level - 1e-12].max())
    raise ValueError(f"operating_point: fixed must be 'sensitivity' or 'specificity', got {fixed!r}")


def operating_point_rows(labels: np.ndarray, scores: np.ndarray) -> list[MetricRow]:
    """The rows of :data:`OPERATING_POINTS` (policy ``none``: points of the test ROC curve)."""
    reason = single_class_reason(np.asarray(labels))
    return [MetricRow(name, operating_point(labels, scores, fixed, level),
                      note=reason or "point of the test ROC curve")
            for name, (fixed, level) in OPERATING_POINTS.items()]


def image_metrics(labels: np.ndarray, scores: np.ndarray, val_scores: np.ndarray | None = None,
                  val_note: str = "") -> list[MetricRow]:
    """Every image-level metric for one job: threshold-free ones, then each threshold policy.

    ``val_note`` goes on the ``val_q95`` rows (where the validation normals came from, when not carved apart).
    """
    labels, scores = _validate(labels, scores, "test scores")
    reason = single_class_reason(labels)
    rows = [
        MetricRow("roc_auc", roc_auc(labels, scores), note=reason or ""),
        MetricRow("pr_auc", pr_auc(labels, scores), note=reason or ""),
    ]
    rows += operating_point_rows(labels, scores)
    thresholds: dict[str, tuple[float, str]] = {"val_q95": _honest_threshold(val_scores, val_note)}
    if reason:
        thresholds["youden"] = thresholds["best_f1"] = (float("nan"), reason)
    else:
        thresholds["youden"] = (threshold_youden(labels, scores), "oracle: chosen on test labels")
        thresholds["best_f1"] = (threshold_best_f1(labels, scores), "oracle: chosen on test labels")
    for policy, (threshold, note) in thresholds.items():
        if np.isnan(threshold):
            rows += undefined_rows(THRESHOLD_METRICS, policy, note)
        else:
            rows += threshold_rows(confusion_metrics(labels, scores, threshold), policy, note)
    return rows


def _honest_threshold(val_scores: np.ndarray | None, note: str = "") -> tuple[float, str]:
    """(``val_q95`` threshold, note); NaN with the reason when the validation scores cannot fix it."""
    if val_scores is None or len(val_scores) == 0:
        return float("nan"), "no validation normals: honest threshold undefined"
    reason = nonfinite_scores_reason(val_scores, "validation scores")
    if reason:
        return float("nan"), f"{reason}: honest threshold undefined"
    return threshold_val_q95(val_scores), note


def pixel_metrics(masks: np.ndarray, maps: np.ndarray, n_test: int | None = None,
                  val_maps: np.ndarray | None = None) -> list[MetricRow]:
    """Pixel ROC AUC, PR AUC, AUPRO and Dice over every pixel of every test image with a known mask.

    ``masks`` and ``maps`` are ``(N, H, W)`` for the images whose mask is known; ``n_test`` is the
    size of the whole test set when that is larger (some anomalies not outlined), and the rows' note
    then says how many images the values cover. ``val_maps`` (the normal validation images' maps) fix
    the honest Dice threshold ``val_px_q99``; without them only the oracle ``best_dice`` is given.
    """
    n_masked = len(masks)
    masks = np.asarray(masks).astype(bool)
    maps = np.asarray(maps, dtype=np.float64)
    if masks.size != maps.size:
        raise ValueError(f"masks and score maps differ in size: {masks.size} vs {maps.size} pixels")
    maps = maps.reshape(masks.shape)
    coverage = ("" if n_test is None or n_test == n_masked
                else f"pixel metrics over {n_masked} of {n_test} test images with masks")
    if not (masks.any() and not masks.all()):
        note = _join("masks hold a single class: pixel metrics undefined", coverage)
        return [MetricRow(name, float("nan"), note=note) for name in ("pixel_roc_auc", "pixel_pr_auc", "aupro")]
    with_honest_dice = val_maps is not None and np.size(val_maps) > 0
    maps_reason = nonfinite_maps_reason(maps, "test maps")
    if maps_reason:
        note = _join(f"{maps_reason}: pixel metrics undefined", coverage)
        return [MetricRow(name, float("nan"), policy, note) for name, policy in _pixel_row_keys(with_honest_dice)]
    flat_masks, flat_maps = masks.ravel().astype(np.int64), maps.ravel()
    rows = [MetricRow("pixel_roc_auc", roc_auc(flat_masks, flat_maps), note=coverage),
            MetricRow("pixel_pr_auc", pr_auc(flat_masks, flat_maps), note=coverage),
            MetricRow("aupro", aupro(masks, maps), note=coverage)]
    if with_honest_dice:
        rows.append(_honest_dice_row(masks, maps, val_maps, coverage))
    rows.append(MetricRow("dice", best_dice(masks, maps)[0], "best_dice", coverage))
    return rows


def _pixel_row_keys(with_honest_dice: bool) -> list[tuple[str, str]]:
    """(metric, policy) of the rows :func:`pixel_metrics` gives for masks holding both classes."""
    honest = [("dice", "val_px_q99")] if with_honest_dice else []
    return [("pixel_roc_auc", "none"), ("pixel_pr_auc", "none"), ("aupro", "none"), *honest, ("dice", "best_dice")]


def _honest_dice_row(masks: np.ndarray, maps: np.ndarray, val_maps: np.ndarray, note: str) -> MetricRow:
    """Dice at ``val_px_q99``; NaN with the reason when a validation map holds non-finite values."""
    reason = nonfinite_maps_reason(val_maps, "validation maps")
    if reason:
        return MetricRow("dice", float("nan"), "val_px_q99", _join(f"{reason}: honest pixel threshold undefined", note))
    return MetricRow("dice", dice(masks, maps, pixel_threshold_val(val_maps)), "val_px_q99", note)


# --- screening operating point (SURE-ROI's high-sensitivity filter, Wang 2022 §1.3/§6.1) -------------------
SCREENING_METRICS = THRESHOLD_METRICS + ("npv", "cleared_fraction")


def screening_policy(target_sensitivity: float = 0.98) -> str:
    """The policy name for a target sensitivity: ``screen_s98`` for 0.98."""
    return f"screen_s{round(target_sensitivity * 100):02d}"


def threshold_screen(anomaly_scores: np.ndarray, target_sensitivity: float = 0.98) -> float:
    """The largest threshold keeping ``score > t`` for at least ``target_sensitivity`` of labelled anomalies.

    Honest when ``anomaly_scores`` come from calibration anomalies that are not in the test set (the
    dataset's labelled anomaly pool). With fewer than ``1/(1 - target)`` anomalies no miss is allowed,
    so the threshold sits just below the lowest anomaly score.
    """
    scores = np.sort(np.asarray(anomaly_scores, dtype=np.float64).ravel())
    if scores.size == 0:
        raise ValueError("a screening threshold needs scores of labelled anomalies; none were given")
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target_sensitivity}")
    allowed_misses = int(np.floor((1.0 - target_sensitivity) * scores.size + 1e-9))
    return float(np.nextafter(scores[allowed_misses], -np.inf))


def screening_metrics(labels: np.ndarray, scores: np.ndarray, anomaly_scores: np.ndarray | None,
                      target_sensitivity: float = 0.98, in_sample: bool = False) -> list[MetricRow]:
    """The high-sensitivity filter as a threshold policy (``screen_s98``): studies scoring ``<= t`` are cleared.

    ``t`` comes from :func:`threshold_screen` on the labelled anomaly pool (the harness's validation
    set holds normals only, so it cannot fix a sensitivity). Rows: the usual threshold metrics, the
    negative predictive value ``npv`` and ``cleared_fraction``, the share of all test studies the filter
    would report as certainly normal (the radiologists' workload saved). ``in_sample`` notes that the
    pool was also training data (semi-supervised detectors), so the threshold is optimistic.
    """
    labels, scores = _validate(labels, scores, "test scores")
    policy = screening_policy(target_sensitivity)
    if anomaly_scores is None or len(anomaly_scores) == 0:
        return undefined_rows(SCREENING_METRICS, policy,
                              "no labelled anomaly pool: a sensitivity-controlled threshold is undefined")
    pool_reason = nonfinite_scores_reason(anomaly_scores, "anomaly pool scores")
    if pool_reason:
        return undefined_rows(SCREENING_METRICS, policy, f"{pool_reason}: sensitivity-controlled threshold undefined")
    threshold = threshold_screen(anomaly_scores, target_sensitivity)
    note = f"threshold from {len(anomaly_scores)} labelled pool anomalies, target sensitivity {target_sensitivity:g}"
    if in_sample:
        note += "; the pool was training data of this detector, so test sensitivity is likely lower"
    values = confusion_metrics(labels, scores, threshold)
    cleared = scores <= threshold
    values["npv"] = float(np.mean(labels[cleared] == 0)) if cleared.any() else float("nan")
    values["cleared_fraction"] = float(np.mean(cleared)) if cleared.size else float("nan")
    return threshold_rows({name: values[name] for name in SCREENING_METRICS}, policy, note)
