"""The shortcut check (medad.evaluation.shortcut) on constructed scores, against an independent computation: DeLong from
its O(m n) definition, Holm by hand, Spearman as the Pearson correlation of ranks, the AUC by counting pairs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medad.evaluation.shortcut import (
    BETTER,
    BRIGHTER,
    DARKER,
    NOT_DISTINGUISHABLE,
    NOT_TESTED,
    SHORTCUT_COLUMNS,
    WORSE,
    intensity_oracle,
    seeds_verdict,
    shortcut_frame,
    shortcut_verdict,
    within_class_spearman,
)


def kernel(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def delong_by_definition(labels, a, b) -> tuple[float, float, float]:
    """(AUC a, AUC b, two-sided p) of DeLong, DeLong & Clarke-Pearson (1988) from the pairwise kernel."""
    pos, neg = labels == 1, labels == 0
    components = []
    for scores in (a, b):
        x, y = scores[pos], scores[neg]
        grid = np.array([[kernel(xi, yj) for yj in y] for xi in x])
        components.append((grid.mean(), grid.mean(axis=1), grid.mean(axis=0)))
    (auc_a, v10_a, v01_a), (auc_b, v10_b, v01_b) = components
    m, n = int(pos.sum()), int(neg.sum())
    s10, s01 = np.cov(v10_a, v10_b), np.cov(v01_a, v01_b)
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (auc_a - auc_b) / math.sqrt(variance)
    return auc_a, auc_b, math.erfc(abs(z) / math.sqrt(2.0))


def verdict_by_hand(labels, scores, controls: dict, alpha: float = 0.05) -> tuple[str, str, float]:
    """The rule stated in the module: better = significantly above every control; worse = significantly below one
    after Holm; else not distinguishable. Returns (verdict, deciding control, its raw p)."""
    tests = {name: delong_by_definition(labels, scores, c) for name, c in controls.items()}
    order = sorted(tests, key=lambda name: tests[name][2])
    holm, running = {}, 0.0
    for rank, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * tests[name][2]))
        holm[name] = running
    worse = [name for name, (a, b, p) in tests.items() if a < b and holm[name] < alpha]
    if worse:
        name = min(worse, key=lambda name: holm[name])
        return WORSE, name, tests[name][2]
    unbeaten = [name for name, (a, b, p) in tests.items() if not (a > b and p < alpha)]
    pool = unbeaten or list(tests)
    name = max(pool, key=lambda name: tests[name][2])
    return (NOT_DISTINGUISHABLE if unbeaten else BETTER), name, tests[name][2]


def ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values)
    out = np.empty(len(values))
    out[order] = np.arange(len(values))
    return out  # no ties in the constructed data


@pytest.fixture(scope="module")
def constructed():
    """Test images whose mean intensity is somewhat informative (anomalies brighter); a brightness control and a
    histogram-like control; a detector that scores brightness, one that sees the lesion, one that sees nothing."""
    rng = np.random.default_rng(7)
    labels = np.r_[np.zeros(70, int), np.ones(60, int)]
    intensity = rng.normal(0.0, 1.0, len(labels)) + 1.0 * labels
    controls = {"intensity": intensity + rng.normal(0, 0.2, len(labels)),   # |deviation| from normals: here one-sided
                "histogram": rng.normal(0, 1, len(labels)) + 0.3 * labels}
    detectors = {"brightness": intensity + rng.normal(0, 0.3, len(labels)),
                 "lesion": 3.0 * labels + rng.normal(0, 1.0, len(labels)),
                 "blind": rng.normal(0, 1, len(labels))}
    return labels, intensity, controls, detectors


@pytest.mark.parametrize("detector,expected", [("brightness", NOT_DISTINGUISHABLE), ("lesion", BETTER), ("blind", WORSE)])
def test_the_verdict_and_p_value_agree_with_an_independent_computation(constructed, detector, expected):
    labels, _, controls, detectors = constructed
    result = shortcut_verdict(labels, detectors[detector], controls)
    verdict, control, p = verdict_by_hand(labels, detectors[detector], controls)
    assert result.verdict == verdict == expected
    assert result.deciding.control == control
    assert result.deciding.p_value == pytest.approx(p, rel=1e-9)
    auc, control_auc, _ = delong_by_definition(labels, detectors[detector], controls[control])
    assert (result.deciding.roc_auc, result.deciding.control_roc_auc) == pytest.approx((auc, control_auc))
    if detector == "brightness":
        assert control == "intensity"   # what stops a brightness reader is the brightness control


def test_within_class_spearman_and_the_intensity_oracle_agree_with_their_definitions(constructed):
    labels, intensity, _, detectors = constructed
    normal, anomalous = within_class_spearman(labels, detectors["brightness"], intensity)
    for value, label in ((normal, 0), (anomalous, 1)):
        chosen = labels == label
        expected = np.corrcoef(ranks(detectors["brightness"][chosen]), ranks(intensity[chosen]))[0, 1]
        assert value == pytest.approx(expected, rel=1e-9) and value > 0.8
    blind = within_class_spearman(labels, detectors["blind"], intensity)
    assert abs(blind[0]) < 0.3 and abs(blind[1]) < 0.3
    pairs = [kernel(x, y) for x in intensity[labels == 1] for y in intensity[labels == 0]]
    assert intensity_oracle(labels, intensity) == (pytest.approx(np.mean(pairs)), BRIGHTER)
    # anomalies darker: the label-favoured direction turns the AUC over and says so
    assert intensity_oracle(labels, -intensity) == (pytest.approx(np.mean(pairs)), DARKER)
    assert np.isnan(intensity_oracle(labels, np.full(len(labels), np.nan))[0])


def tidy(labels, run: dict[tuple[str, int], np.ndarray], intensity) -> pd.DataFrame:
    frames = [pd.DataFrame({"run_id": "r", "dataset": "d", "subset": "s", "detector": detector, "seed": seed,
                            "part": "test", "sample_id": [f"i{k}" for k in range(len(labels))], "label": labels,
                            "score": scores, "mean_intensity": intensity})
              for (detector, seed), scores in run.items()]
    return pd.concat(frames, ignore_index=True)


def test_shortcut_frame_gives_one_row_per_detector_and_seed_and_pairs_every_seed_with_the_controls(constructed):
    labels, intensity, controls, detectors = constructed
    rng = np.random.default_rng(3)
    run = {("intensity", 0): controls["intensity"], ("histogram", 0): controls["histogram"],
           ("brightness", 0): detectors["brightness"], ("brightness", 1): detectors["brightness"] + rng.normal(0, .1, 130),
           ("lesion", 0): detectors["lesion"]}
    scores = tidy(labels, run, intensity)
    order = rng.permutation(len(scores))   # the rows' order does not matter: images are paired by sample id
    frame = shortcut_frame(scores.iloc[order], {"intensity", "histogram"})
    assert list(frame.columns) == SHORTCUT_COLUMNS
    assert sorted(zip(frame["detector"], frame["seed"])) == [("brightness", 0), ("brightness", 1), ("lesion", 0)]
    lesion = frame[frame["detector"] == "lesion"].iloc[0]
    verdict, control, p = verdict_by_hand(labels, detectors["lesion"], controls)
    assert (lesion["verdict"], lesion["control"], lesion["p_value"]) == (verdict, control, pytest.approx(p))
    assert lesion["n_test"] == 130 and lesion["intensity_roc_auc_oracle"] > 0.7 and lesion["anomalies_are"] == BRIGHTER
    # the controls ran seed 0 only: seed 1 of a detector is compared with them (controls draw nothing at random)
    assert frame.loc[frame["seed"] == 1, "verdict"].iloc[0] == NOT_DISTINGUISHABLE
    assert shortcut_frame(scores, set()).empty   # no control: no check (the report says it was not run)


def test_a_missing_or_non_finite_score_leaves_the_image_out_and_says_so(constructed):
    labels, intensity, controls, detectors = constructed
    scores = detectors["lesion"].copy()
    scores[:3] = np.nan
    run = {("intensity", 0): controls["intensity"], ("lesion", 0): scores}
    row = shortcut_frame(tidy(labels, run, intensity), {"intensity"}).iloc[0]
    assert row["n_test"] == 127 and row["note"].startswith("3 of 130 test images left out")
    single = shortcut_verdict(np.ones(5, int), np.arange(5.0), {"intensity": np.arange(5.0)})
    assert single.verdict == NOT_TESTED and "at least 2 anomalous and 2 normal" in single.note


def test_the_verdict_over_seeds_is_the_seeds_own_where_they_agree_and_not_distinguishable_otherwise():
    def rows(*verdicts):
        return pd.DataFrame({"verdict": verdicts, "control": ["intensity"] * len(verdicts)})

    assert seeds_verdict(rows(BETTER, BETTER, BETTER)).better
    assert seeds_verdict(rows(WORSE, WORSE)).text == f"{WORSE} (intensity) in all 2 seeds"
    mixed = seeds_verdict(rows(BETTER, BETTER, NOT_DISTINGUISHABLE))
    assert mixed.verdict == NOT_DISTINGUISHABLE and f"{BETTER} in 2, {NOT_DISTINGUISHABLE} in 1 of 3" in mixed.text
    assert seeds_verdict(rows(BETTER, NOT_TESTED)).verdict == BETTER
    assert seeds_verdict(rows(NOT_TESTED)).verdict == NOT_TESTED
    assert seeds_verdict(rows()) is None
