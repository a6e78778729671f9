"""AUPRO and Dice: hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from medad.evaluation.metrics import roc_auc
from medad.evaluation.pixel_metrics import aupro, best_dice, dice, pixel_threshold_val


def _two_regions() -> np.ndarray:
    masks = np.zeros((2, 32, 32), dtype=bool)
    masks[0, 2:22, 2:22] = True   # a large region (400 px)
    masks[1, 5:7, 5:7] = True     # a small one (4 px)
    return masks


def test_a_perfect_map_scores_one():
    masks = _two_regions()
    maps = masks.astype(float)
    assert aupro(masks, maps) == pytest.approx(1.0)
    assert dice(masks, maps, 0.5) == pytest.approx(1.0)
    assert best_dice(masks, maps)[0] == pytest.approx(1.0)


def test_aupro_weighs_regions_equally_where_pixel_auc_does_not():
    masks = _two_regions()
    maps = np.random.default_rng(0).uniform(0.01, 0.02, masks.shape)  # normal pixels: low noise
    maps[masks] = 0.0
    maps[0][masks[0]] = 1.0  # finds the large region; the small one scores below every normal pixel
    assert roc_auc(masks.ravel(), maps.ravel()) > 0.98
    # Overlap 1 for the large region at every FPR, 0 for the small one: PRO = 0.5 throughout.
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_a_random_map_scores_about_half_the_fpr_limit():
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 64, 64), dtype=bool)
    masks[:, 10:30, 10:30] = True
    assert aupro(masks, rng.random(masks.shape)) == pytest.approx(0.15, abs=0.02)
    assert aupro(masks, rng.random(masks.shape), max_fpr=0.1) == pytest.approx(0.05, abs=0.01)


def test_dice_by_hand_and_the_honest_threshold():
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, :2] = True                                   # 2 true pixels
    maps = np.zeros((1, 4, 4))
    maps[0, 0, :3] = 1.0                                     # 3 predicted, 2 of them right
    assert dice(masks, maps, 0.5) == pytest.approx(2 * 2 / (3 + 2))
    val = np.arange(100, dtype=float).reshape(1, 10, 10)
    assert pixel_threshold_val(val, 0.99) == pytest.approx(98.01)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="differ in shape"):
        aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    assert np.isnan(aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4))))  # no region: undefined


# --- exactness against brute force from the definitions ----------------------------------------------------
EIGHT = np.ones((3, 3), dtype=bool)
FOUR = None  # scipy.ndimage.label's default: 4-connectivity


def brute_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3, structure=EIGHT) -> float:
    """AUPRO straight from Bergmann et al. 2021: FPR and PRO recomputed with boolean masks at every distinct score."""
    from scipy import ndimage

    regions = []  # (image index, region mask)
    for i, mask in enumerate(masks):
        labels, count = ndimage.label(mask, structure=structure)
        regions += [(i, labels == k) for k in range(1, count + 1)]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        points.append((predicted[~masks].mean(), np.mean([predicted[i][region].mean() for i, region in regions])))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # the segment crossing max_fpr: cut it there
            y1, x1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0), max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def brute_best_dice(masks: np.ndarray, maps: np.ndarray) -> float:
    """The best Dice of ``maps >= t`` over every distinct value t, and of predicting nothing."""
    nothing = 0.0 if masks.any() else 1.0
    return max([nothing] + [dice(masks, maps, t) for t in np.unique(maps)])


def grid_best_dice(masks: np.ndarray, maps: np.ndarray, steps: int = 200) -> float:
    """The former method: the best Dice over ``steps`` quantiles in [0.5, 1] of the maps."""
    return max(dice(masks, maps, t) for t in np.unique(np.quantile(maps, np.linspace(0.5, 1.0, steps))))


def _lesion_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 20, 20), dtype=bool)
    masks[0, 3:9, 4:12] = True
    masks[1, 12:15, 12:15] = True
    masks[1, 2:4, 2:4] = True
    maps = rng.normal(size=masks.shape) + 1.5 * masks
    return masks, maps


def _saturated(maps: np.ndarray, masks: np.ndarray, share: float, seed: int = 0) -> np.ndarray:
    normal = np.flatnonzero(~masks.ravel())
    chosen = np.random.default_rng(seed).choice(normal, int(share * normal.size), replace=False)
    saturated = maps.copy().ravel()
    saturated[chosen] = maps.max()
    return saturated.reshape(maps.shape)


def test_a_constant_map_scores_the_diagonal_exactly():
    masks, maps = _lesion_set()
    constant = np.full(maps.shape, 0.7)
    assert aupro(masks, constant) == pytest.approx(0.15, abs=1e-9)
    assert aupro(masks, constant) == pytest.approx(brute_aupro(masks, constant), abs=1e-6)


@pytest.mark.parametrize("case", ["ties_at_top", "clipped_q90", "saturated_20pct", "coarse_8_levels", "random"])
def test_aupro_equals_brute_force(case):
    masks, maps = _lesion_set(seed=3)
    if case == "ties_at_top":
        maps[maps > np.quantile(maps, 0.97)] = maps.max()
    elif case == "clipped_q90":
        maps = np.minimum(maps, np.quantile(maps, 0.9))
    elif case == "saturated_20pct":
        maps = _saturated(maps, masks, 0.2)
    elif case == "coarse_8_levels":
        maps = np.round((maps - maps.min()) / np.ptp(maps) * 7) / 7
    else:
        maps = np.random.default_rng(4).random(maps.shape)
    assert aupro(masks, maps) == pytest.approx(brute_aupro(masks, maps), abs=1e-6)
    assert aupro(masks, maps, max_fpr=0.05) == pytest.approx(brute_aupro(masks, maps, 0.05), abs=1e-6)


def test_diagonally_touching_squares_are_one_region():
    masks = np.zeros((1, 16, 16), dtype=bool)
    masks[0, 2:6, 2:6] = True      # 16 px, found
    masks[0, 6:8, 6:8] = True      # 4 px, touching the first at one corner only, missed
    maps = np.random.default_rng(5).uniform(0.4, 0.6, masks.shape)
    maps[0, 2:6, 2:6] = 1.0
    maps[0, 6:8, 6:8] = 0.0
    eight, four = brute_aupro(masks, maps), brute_aupro(masks, maps, structure=FOUR)
    assert eight == pytest.approx(0.8) and four == pytest.approx(0.5)  # one region 16/20 found vs mean(1, 0)
    assert aupro(masks, maps) == pytest.approx(eight, abs=1e-6)


def test_best_dice_equals_brute_force_and_returns_its_threshold():
    for seed in range(3):
        masks, maps = _lesion_set(seed)
        value, threshold = best_dice(masks, maps)
        assert value == pytest.approx(brute_best_dice(masks, maps), abs=1e-12)
        assert dice(masks, maps, threshold) == pytest.approx(value, abs=1e-12)


def test_best_dice_is_exact_when_lesions_cover_most_of_the_image():
    rng = np.random.default_rng(6)
    masks = np.zeros((2, 20, 20), dtype=bool)
    masks[:, 1:19, 1:19] = True   # 81% of the pixels
    maps = rng.random(masks.shape) + 0.5 * masks
    value = best_dice(masks, maps)[0]
    assert value == pytest.approx(brute_best_dice(masks, maps), abs=1e-12)
    assert value > grid_best_dice(masks, maps) + 0.05


def test_best_dice_with_ties_and_constant_maps():
    masks, maps = _lesion_set(1)
    coarse = np.round(maps)
    assert best_dice(masks, coarse)[0] == pytest.approx(brute_best_dice(masks, coarse), abs=1e-12)
    constant = np.full(maps.shape, 2.0)
    assert best_dice(masks, constant) == (pytest.approx(2 * masks.sum() / (masks.size + masks.sum())), 2.0)
    empty = np.zeros_like(masks)
    value, threshold = best_dice(empty, constant)  # nothing to find: predicting nothing is perfect
    assert value == 1.0 and threshold > 2.0 and dice(empty, constant, threshold) == 1.0
