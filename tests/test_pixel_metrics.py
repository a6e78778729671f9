"""AUPRO and Dice: hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest

from medad.benchmark.pixel_metrics import aupro, best_dice, dice, pixel_threshold_val
from medad.benchmark.metrics import roc_auc


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
