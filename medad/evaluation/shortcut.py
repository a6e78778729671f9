"""The shortcut check: is a detector better than the structure-blind controls, and does its score follow brightness?

For every dataset/subset, detector and seed (the tidy rows of ``shortcut.csv``):

- **Against the controls.** The detector's test scores and every control's (``role: control``) on the same test
  images (paired by sample id), each pair compared with DeLong's test of equal ROC AUC (two-sided;
  :func:`medad.evaluation.statistics.delong_test`). No control is picked by its test ROC AUC; the verdict uses them
  all (alpha = 0.05):

  - ``better than the controls``: the detector's AUC is higher than *every* control's, each difference significant
    (p < alpha). This is an intersection-union test (Berger, Technometrics 24:295, 1982): "better than all" is
    rejected unless each test rejects, which keeps the level alpha without a multiplicity correction, and it is at
    least as strict as a test against whichever control scores highest on the test labels.
  - ``worse than a control``: some control's AUC is higher, significantly after Holm's adjustment over the
    controls (a union of tests: "worse than one of them" needs the correction).
  - ``not distinguishable from a control`` otherwise.

  The row names the control that decides the verdict: for "worse", the control it is most significantly worse
  than (smallest Holm-adjusted p); otherwise the control it is least distinguishable from (largest p), which is the
  one that stops a "better". ``p_value`` is that pair's DeLong p, ``p_holm`` its Holm-adjusted p over the controls.
  Controls draw nothing at random, so every seed of a control scores alike; a detector's seed is paired with the
  control's same seed, or with the control's lowest seed where the control ran fewer seeds.
- **Brightness.** The Spearman rank correlation of the detector's test scores with the images' mean intensity,
  within each class (normal, anomalous): a score that follows brightness among images of one class reads
  brightness, whatever the label.
- **The oracle.** The ROC AUC of mean intensity alone, in the direction the labels favour (max(AUC, 1 - AUC), with
  the direction named): an ORACLE diagnostic (the direction is chosen on the test labels), never a detector and
  never ranked; it says how much brightness alone gives away on this test set.

Mean intensity of an image: the mean of its pixels over all channels, in [0, 1], of the images the job scored
(``mean_intensity`` in ``scores.csv``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from medad.evaluation.metrics import roc_auc
from medad.evaluation.statistics import delong_test, holm

ALPHA = 0.05
ROLE_TAG, CONTROL_ROLE = "role", "control"   # the metrics.csv tag column and value that mark a control's rows
SHORTCUT_FILE = "shortcut.csv"
BETTER = "better than the controls"
NOT_DISTINGUISHABLE = "not distinguishable from a control"
WORSE = "worse than a control"
NOT_TESTED = "not tested"
VERDICTS = (BETTER, NOT_DISTINGUISHABLE, WORSE, NOT_TESTED)
BRIGHTER, DARKER = "brighter", "darker"
SHORTCUT_COLUMNS = ["run_id", "dataset", "subset", "detector", "seed", "verdict", "control", "roc_auc", "control_roc_auc",
                    "difference", "p_value", "p_holm", "controls", "spearman_normal", "spearman_anomalous",
                    "intensity_roc_auc_oracle", "anomalies_are", "n_test", "note"]


@dataclass(frozen=True)
class ControlTest:
    """One detector-against-control DeLong test on the same test images."""

    control: str
    roc_auc: float
    control_roc_auc: float
    p_value: float
    p_holm: float

    @property
    def difference(self) -> float:
        return self.roc_auc - self.control_roc_auc


@dataclass(frozen=True)
class ShortcutVerdict:
    """The verdict, the control that decides it (see the module docstring) and every control's test."""

    verdict: str
    deciding: ControlTest | None
    tests: tuple[ControlTest, ...]
    note: str = ""


def shortcut_verdict(labels: np.ndarray, scores: np.ndarray, controls: dict[str, np.ndarray],
                     alpha: float = ALPHA) -> ShortcutVerdict:
    """The verdict of a detector's test ``scores`` against every control's scores of the same images (``controls``:
    name -> scores in the order of ``labels``); :data:`NOT_TESTED` with a note when no test can be made."""
    if not controls:
        return ShortcutVerdict(NOT_TESTED, None, (), "no control scored these test images")
    results = []
    for name, control_scores in controls.items():
        try:
            result = delong_test(labels, scores, control_scores)
        except ValueError as error:
            return ShortcutVerdict(NOT_TESTED, None, (), str(error))
        results.append((name, result))
    adjusted = holm([r.p_value for _, r in results])
    tests = tuple(ControlTest(name, r.auc_a, r.auc_b, r.p_value, float(p))
                  for (name, r), p in zip(results, adjusted))
    worse = [t for t in tests if t.difference < 0 and t.p_holm < alpha]
    if worse:
        return ShortcutVerdict(WORSE, min(worse, key=lambda t: (t.p_holm, -t.control_roc_auc)), tests)
    unbeaten = [t for t in tests if not (t.difference > 0 and t.p_value < alpha)]
    if not unbeaten:
        return ShortcutVerdict(BETTER, max(tests, key=lambda t: (t.p_value, t.control_roc_auc)), tests)
    return ShortcutVerdict(NOT_DISTINGUISHABLE, max(unbeaten, key=lambda t: (t.p_value, t.control_roc_auc)), tests)


def within_class_spearman(labels: np.ndarray, scores: np.ndarray, intensity: np.ndarray) -> tuple[float, float]:
    """Spearman's rank correlation of ``scores`` with ``intensity`` among the normals and among the anomalies
    (NaN for a class with fewer than 3 images or constant values)."""
    labels = np.asarray(labels).ravel()
    scores, intensity = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(intensity, dtype=np.float64).ravel()
    found = []
    for label in (0, 1):
        chosen = (labels == label) & np.isfinite(scores) & np.isfinite(intensity)
        x, y = scores[chosen], intensity[chosen]
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            found.append(float("nan"))
        else:
            found.append(float(stats.spearmanr(x, y).statistic))
    return found[0], found[1]


def intensity_oracle(labels: np.ndarray, intensity: np.ndarray) -> tuple[float, str]:
    """ORACLE: the ROC AUC of mean intensity alone in the direction the labels favour, and that direction
    (:data:`BRIGHTER`: anomalies brighter; :data:`DARKER`); NaN and "" without both classes or finite values."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    intensity = np.asarray(intensity, dtype=np.float64).ravel()
    if not np.isfinite(intensity).all() or len(np.unique(labels)) < 2:
        return float("nan"), ""
    auc = roc_auc(labels, intensity)
    return (auc, BRIGHTER) if auc >= 0.5 else (1.0 - auc, DARKER)


def control_labels(metrics: pd.DataFrame) -> set[str]:
    """The detector labels whose metrics.csv rows carry the tag ``role: control``."""
    if metrics.empty or ROLE_TAG not in metrics:
        return set()
    return {str(d) for d in metrics.loc[metrics[ROLE_TAG].astype(str) == CONTROL_ROLE, "detector"]}


def _paired(detector_rows: pd.DataFrame, control_rows: pd.DataFrame) -> pd.Series:
    """The control's scores of the detector's test images (NaN where the control has none), by sample id."""
    return detector_rows["sample_id"].map(control_rows.drop_duplicates("sample_id").set_index("sample_id")["score"])


def _control_seed(rows: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A control's test rows at ``seed``, or at its lowest seed when it did not run that one (controls draw nothing
    at random)."""
    at_seed = rows[rows["seed"] == seed]
    return at_seed if not at_seed.empty else rows[rows["seed"] == rows["seed"].min()]


def _row(detector_rows: pd.DataFrame, controls: dict[str, pd.DataFrame], alpha: float) -> dict:
    """The shortcut.csv values of one detector's test rows (one unit and seed)."""
    labels = detector_rows["label"].to_numpy(dtype=np.int64)
    scores = detector_rows["score"].to_numpy(dtype=np.float64)
    paired = {name: _paired(detector_rows, rows).to_numpy(dtype=np.float64) for name, rows in controls.items()}
    usable = np.isfinite(scores) & np.all([np.isfinite(v) for v in paired.values()], axis=0)
    note = "" if usable.all() else (f"{int((~usable).sum())} of {len(usable)} test images left out (a score is missing "
                                    "or not finite)")
    result = shortcut_verdict(labels[usable], scores[usable], {n: v[usable] for n, v in paired.items()}, alpha)
    intensity = (detector_rows["mean_intensity"].to_numpy(dtype=np.float64) if "mean_intensity" in detector_rows
                 else np.full(len(labels), np.nan))
    normal, anomalous = within_class_spearman(labels, scores, intensity)
    oracle, direction = intensity_oracle(labels, intensity)
    deciding = result.deciding
    return {"verdict": result.verdict, "control": deciding.control if deciding else "",
            "roc_auc": deciding.roc_auc if deciding else np.nan,
            "control_roc_auc": deciding.control_roc_auc if deciding else np.nan,
            "difference": deciding.difference if deciding else np.nan,
            "p_value": deciding.p_value if deciding else np.nan, "p_holm": deciding.p_holm if deciding else np.nan,
            "controls": "; ".join(f"{t.control} {t.control_roc_auc:.3f} (p {t.p_value:.3g})" for t in result.tests),
            "spearman_normal": normal, "spearman_anomalous": anomalous, "intensity_roc_auc_oracle": oracle,
            "anomalies_are": direction, "n_test": int(usable.sum()), "note": "; ".join(n for n in (note, result.note) if n)}


def shortcut_frame(scores: pd.DataFrame, controls: set[str] | frozenset[str], alpha: float = ALPHA) -> pd.DataFrame:
    """``shortcut.csv``: one row per dataset, subset, detector and seed (controls excluded) of the tidy test
    ``scores`` (scores.csv: ``part``, ``sample_id``, ``label``, ``score`` and, where the run has it,
    ``mean_intensity``), each against every detector of ``controls`` that scored the same unit. Empty (with the
    columns) when no control scored anything."""
    test = scores[scores["part"] == "test"] if not scores.empty else scores
    test = test[test["detector"].notna()] if not test.empty else test
    if test.empty or not set(test["detector"]) & set(controls):
        return pd.DataFrame(columns=SHORTCUT_COLUMNS)
    test = test.assign(seed=pd.to_numeric(test["seed"]).astype(int))
    records = []
    for (dataset, subset), unit_rows in test.groupby(["dataset", "subset"], sort=False):
        control_rows = {name: rows for name, rows in unit_rows.groupby("detector", sort=False) if name in controls}
        for (detector, seed), rows in unit_rows.groupby(["detector", "seed"], sort=False):
            if detector in controls:
                continue
            at_seed = {name: _control_seed(c, seed) for name, c in control_rows.items()}
            records.append({"run_id": rows["run_id"].iloc[0] if "run_id" in rows else "", "dataset": dataset,
                            "subset": subset, "detector": detector, "seed": int(seed), **_row(rows, at_seed, alpha)})
    return pd.DataFrame(records, columns=SHORTCUT_COLUMNS)


@dataclass(frozen=True)
class SeedsVerdict:
    """The verdict of one detector on one unit over its seeds: the seeds' verdict where every tested seed has the
    same one, :data:`NOT_DISTINGUISHABLE` for any mix (better in some seeds, not in others), :data:`NOT_TESTED` when
    no seed was tested. ``text`` adds the deciding controls and, for a mix, each seed verdict's count."""

    verdict: str
    controls: tuple[str, ...]
    counts: dict[str, int]

    @property
    def better(self) -> bool:
        return self.verdict == BETTER

    @property
    def text(self) -> str:
        seeds = sum(self.counts.values())
        against = f" ({', '.join(self.controls)})" if self.controls else ""
        if len(self.counts) == 1:
            return f"{self.verdict}{against}" + (f" in all {seeds} seeds" if seeds > 1 else "")
        mix = ", ".join(f"{verdict} in {n}" for verdict, n in self.counts.items())
        return f"{self.verdict}{against}: seeds differ ({mix} of {seeds})"


def seeds_verdict(rows: pd.DataFrame) -> SeedsVerdict | None:
    """The :class:`SeedsVerdict` of the shortcut.csv ``rows`` of one unit and detector (all its seeds); None without
    rows."""
    if rows.empty:
        return None
    verdicts = [str(v) for v in rows["verdict"]]
    counts = dict(Counter(verdicts).most_common())
    tested = {v for v in verdicts if v != NOT_TESTED}
    verdict = NOT_TESTED if not tested else tested.pop() if len(tested) == 1 else NOT_DISTINGUISHABLE
    deciding = tuple(dict.fromkeys(str(c) for c in rows["control"] if isinstance(c, str) and c))
    return SeedsVerdict(verdict, deciding, counts)
