"""The report's figures (matplotlib, Agg): each saved as PNG at 2x (200 dpi for 100-dpi layout sizes) and SVG.

- ROC and PR curves per dataset/subset with every detector overlaid, AUC in the legend (study Fig. 8)
- sensitivity and specificity per dataset x detector at the honest threshold (study Figs. 6-7)
- ROC AUC heatmap dataset x detector
- training curves from history.csv (study Fig. 9)
- the test-set diagnostic curve (run setting ``test_curve``): test ROC AUC after each epoch, drawn apart
- example test images with reconstructions and anomaly maps, predictions marked right/wrong (Figs. 10-12)
- the critical-difference diagram of average ranks (Demšar 2006)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve  # noqa: E402

from medad.benchmark.diagnostics import TEST_CURVE_LOSS  # noqa: E402
from medad.benchmark.examples import read_examples  # noqa: E402
from medad.evaluation.statistics import critical_difference  # noqa: E402
from medad.reporting.run_data import RunData  # noqa: E402

DPI = 200  # figures are laid out at 100 dpi, so PNGs are twice the displayed size (sharp on HiDPI screens)
plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10, "text.usetex": False})


@dataclass
class Figure:
    """A saved figure: PNG and SVG paths relative to the report folder, its display width and caption."""

    png: str
    svg: str
    width: int
    height: int
    caption: str
    alt: str


def plain(text: object) -> str:
    """Text for matplotlib with mathtext switched off (a ``$`` in a sample id must stay a dollar)."""
    return str(text).replace("$", r"\$")


def slug(*parts: str) -> str:
    """A file-name-safe, collision-free name for figure files."""
    raw = "__".join(parts)
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw)[:80]
    return f"{readable}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


def short_id(sample_id: object, keep: int = 8) -> str:
    """A sample id shortened in the middle to fit a thumbnail title."""
    text = str(sample_id)
    return text if len(text) <= 2 * keep + 1 else f"{text[:keep]}…{text[-keep:]}"


def save(fig: plt.Figure, folder: Path, name: str, caption: str, alt: str) -> Figure:
    folder.mkdir(parents=True, exist_ok=True)
    width, height = fig.get_size_inches() * 100
    fig.savefig(folder / f"{name}.png", dpi=DPI, bbox_inches=None)
    fig.set_layout_engine("none")  # keep the layout the PNG computed: the SVG needs no second layout pass
    fig.savefig(folder / f"{name}.svg")
    plt.close(fig)
    return Figure(f"{folder.name}/{name}.png", f"{folder.name}/{name}.svg", int(width), int(height), caption, alt)


def colours(detectors: list[str]) -> dict[str, tuple]:
    palette = plt.get_cmap("tab10" if len(detectors) <= 10 else "tab20")
    return {d: palette(i % palette.N) for i, d in enumerate(detectors)}


def panel_grid(count: int, max_columns: int, panel_size: tuple[float, float]) -> tuple[plt.Figure, list]:
    """A figure of ``count`` panels (inches ``panel_size`` each), at most ``max_columns`` a line; the axes in order."""
    columns = min(max_columns, count)
    lines = -(-count // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(panel_size[0] * columns, panel_size[1] * lines),
                             layout="constrained", squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def roc_pr_figure(data: RunData, unit: str, folder: Path) -> Figure | None:
    """ROC and PR curves of every detector (every seed drawn; legend: mean AUC over seeds)."""
    scores = data.unit_rows(data.scores, unit)
    scores = scores[scores["part"] == "test"] if not scores.empty else scores
    if scores.empty:
        return None
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(9.0, 4.0), layout="constrained")
    colour = colours(data.detectors)
    prevalence = float("nan")
    for detector in [d for d in data.detectors if d in set(scores["detector"])]:
        rows = scores[scores["detector"] == detector]
        aucs, aps = [], []
        for index, (_, seed_rows) in enumerate(rows.groupby("seed")):
            labels, values = seed_rows["label"].to_numpy(), seed_rows["score"].to_numpy(dtype=float)
            if len(np.unique(labels)) < 2:
                continue
            prevalence = float(labels.mean())
            fpr, tpr, _ = roc_curve(labels, values)
            precision, recall, _ = precision_recall_curve(labels, values)
            aucs.append(float(roc_auc_score(labels, values)))
            aps.append(float(average_precision_score(labels, values)))
            style = dict(color=colour[detector], lw=1.6 if index == 0 else 0.8, alpha=1.0 if index == 0 else 0.5)
            ax_roc.plot(fpr, tpr, **style, label=None)
            ax_pr.step(recall, precision, where="post", **style)
        if aucs:
            spread = f" ± {np.std(aucs, ddof=1):.3f}" if len(aucs) > 1 else ""
            ax_roc.plot([], [], color=colour[detector], label=plain(f"{detector} (AUC {np.mean(aucs):.3f}{spread})"))
            spread = f" ± {np.std(aps, ddof=1):.3f}" if len(aps) > 1 else ""
            ax_pr.plot([], [], color=colour[detector], label=plain(f"{detector} (AP {np.mean(aps):.3f}{spread})"))
    ax_roc.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    if np.isfinite(prevalence):
        ax_pr.axhline(prevalence, ls=":", color="grey", lw=0.8, label=f"chance ({prevalence:.2f})")
    ax_roc.set(xlabel="False positive rate (1 − specificity)", ylabel="True positive rate (sensitivity)",
               title=plain(f"ROC, {unit}"), xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set(xlabel="Recall (sensitivity)", ylabel="Precision", title=plain(f"Precision-recall, {unit}"),
              xlim=(0, 1), ylim=(0, 1.01))
    for ax in (ax_roc, ax_pr):
        ax.legend(loc="lower right", fontsize=7, frameon=True)
        ax.grid(alpha=0.3)
    return save(fig, folder, slug("roc-pr", unit), f"ROC and precision-recall curves on the test set of {unit}; "
                "thick line: first seed, thin lines: other seeds; legend: mean over seeds.",
                f"ROC and PR curves for {unit}")


def fmt_bar(value: float) -> str:
    return "" if not np.isfinite(value) else f"{value:.2f}"


def sens_spec_figure(data: RunData, folder: Path, policy: str = "val_q95") -> Figure | None:
    """Grouped bars of sensitivity and specificity per unit x detector at ``policy`` (mean, std over seeds)."""
    rows = data.metrics[(data.metrics["threshold_policy"] == policy) & data.metrics["metric"].isin(["recall", "specificity"])]
    if rows.empty or rows["value"].notna().sum() == 0:
        return None
    rows = rows.assign(unit=rows["dataset"] + "/" + rows["subset"])
    stats = rows.groupby(["metric", "unit", "detector"])["value"].agg(["mean", "std"])
    units = [u for u in data.units if u in set(rows["unit"])]
    detectors = [d for d in data.detectors if d in set(rows["detector"])]
    colour = colours(data.detectors)
    width = 0.8 / max(len(detectors), 1)
    fig, axes = plt.subplots(1, 2, figsize=(max(7.0, 1.2 * len(units) * 2 + 2), 3.6), layout="constrained", sharey=True)
    for ax, metric, title in zip(axes, ["recall", "specificity"], ["Sensitivity", "Specificity"]):
        for i, detector in enumerate(detectors):
            means = [stats["mean"].get((metric, u, detector), np.nan) for u in units]
            stds = [stats["std"].get((metric, u, detector), np.nan) for u in units]
            bars = ax.bar(np.arange(len(units)) + (i - (len(detectors) - 1) / 2) * width, means, width,
                          yerr=np.nan_to_num(stds), color=colour[detector], label=plain(detector), capsize=2)
            ax.bar_label(bars, labels=[fmt_bar(m) for m in means], fontsize=6, padding=1)
        ax.set_xticks(np.arange(len(units)), [plain(u) for u in units], rotation=20, ha="right")
        ax.set(title=f"{title} at {policy}", ylim=(0, 1.12))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("value (mean ± std over seeds)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save(fig, folder, slug("sens-spec", policy), f"Sensitivity and specificity at the {policy} threshold "
                "(honest: fixed from normal validation scores), per dataset/subset and detector.",
                "sensitivity and specificity bars")


def heatmap_figure(matrix: pd.DataFrame, folder: Path, metric_label: str = "ROC AUC") -> Figure | None:
    """Heatmap of the mean metric, units (rows) x detectors (columns)."""
    if matrix.empty:
        return None
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * matrix.shape[1] + 2.5), max(2.5, 0.45 * matrix.shape[0] + 1.5)),
                           layout="constrained")
    sns.heatmap(matrix.astype(float), annot=True, fmt=".3f", vmin=0.5, vmax=1.0, cmap="viridis", ax=ax,
                cbar_kws={"label": metric_label}, annot_kws={"fontsize": 8})
    ax.set_xticklabels([plain(t.get_text()) for t in ax.get_xticklabels()], rotation=30, ha="right")
    ax.set_yticklabels([plain(t.get_text()) for t in ax.get_yticklabels()], rotation=0)
    ax.set(xlabel="detector", ylabel="dataset/subset", title=f"{metric_label} (mean over seeds)")
    return save(fig, folder, slug("heatmap", metric_label), f"{metric_label} per dataset/subset and detector "
                "(mean over seeds; colour scale from 0.5 = chance to 1).", f"{metric_label} heatmap")


def history_figure(data: RunData, unit: str, folder: Path) -> Figure | None:
    """Training curves per detector of one unit: each loss against the step (every seed drawn); the test-set
    diagnostic is not a loss and has its own figure (:func:`test_curve_figure`)."""
    history = data.unit_rows(data.history, unit)
    if not history.empty:
        history = history[~is_test_curve(history)]
    if history.empty:
        return None
    detectors = [d for d in data.detectors if d in set(history["detector"])]
    fig, axes = panel_grid(len(detectors), 3, (3.4, 2.6))
    for ax, detector in zip(axes, detectors):
        rows = history[history["detector"] == detector]
        palette = plt.get_cmap("tab10")
        for i, (loss, loss_rows) in enumerate(rows.groupby("loss_name", sort=False)):
            for j, (_, seed_rows) in enumerate(loss_rows.groupby("seed")):
                ax.plot(seed_rows["step"], seed_rows["value"], color=palette(i % 10), lw=1.0 if j == 0 else 0.6,
                        alpha=1.0 if j == 0 else 0.5, label=plain(loss) if j == 0 else None)
        values = rows["value"].to_numpy(dtype=float)
        if len(values) and values.min() > 0 and values.max() / values.min() > 50:
            ax.set_yscale("log")
        ax.set(title=plain(detector), xlabel="step", ylabel="loss")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    jobs = data.unit_rows(data.jobs, unit)
    shared = not jobs.empty and "fit_by" in jobs and bool((jobs["fit_by"].notna() & (jobs["fit_by"] != jobs["job_id"])).any())
    note = "; a job that scored with another's shared fit shows that fit's curves (fit_by in history.csv)" if shared else ""
    return save(fig, folder, slug("history", unit), f"Training curves on {unit} (from history.csv; thin lines: further "
                f"seeds{note}).",
                f"training curves for {unit}")


def is_test_curve(history: pd.DataFrame) -> pd.Series:
    """Which history.csv rows are the test-set diagnostic's (``diagnostic_test_roc_auc``, per phase or not)."""
    return history["loss_name"].astype(str).str.startswith(TEST_CURVE_LOSS)


TEST_CURVE_WARNING = "test-set diagnostic: never used for selection, thresholds or ranking"


def test_curve_figure(data: RunData, unit: str, folder: Path) -> Figure | None:
    """The test ROC AUC after each training epoch per detector of one unit (run setting ``test_curve``), every seed
    drawn, chance marked; None when the run has no such rows."""
    history = data.unit_rows(data.history, unit)
    rows = history[is_test_curve(history)] if not history.empty else history
    if rows.empty:
        return None
    detectors = [d for d in data.detectors if d in set(rows["detector"])]
    fig, ax = plt.subplots(figsize=(5.6, 3.4), layout="constrained")
    palette = colours(detectors)
    for detector in detectors:
        detector_rows = rows[rows["detector"] == detector]
        last_phase = max(detector_rows["loss_name"], key=lambda name: (len(name), name))
        for (seed, curve), curve_rows in detector_rows.groupby(["seed", "loss_name"]):
            phase = curve.removeprefix(TEST_CURVE_LOSS + "_").replace("phase", "phase ")
            label = plain(detector + (f" ({phase})" if curve != TEST_CURVE_LOSS else "")) if seed == rows["seed"].min() else None
            curve_rows = curve_rows.sort_values("epoch")
            ax.plot(curve_rows["epoch"] + 1, curve_rows["value"], marker=".", color=palette[detector],
                    lw=1.0 if label else 0.6, alpha=1.0 if label else 0.5, label=label,
                    ls="-" if curve == last_phase else ":")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
    ax.set(title=plain(f"{unit}: {TEST_CURVE_WARNING}"), xlabel="epoch", ylabel="test ROC AUC", ylim=(0, 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save(fig, folder, slug("test-curve", unit),
                f"Test-set diagnostic on {unit}: the test ROC AUC after each training epoch (run setting test_curve; "
                "thin lines: further seeds; dotted: an earlier training phase). It is never used for selection, "
                "thresholds or ranking: the reported rows are the final epoch's.", f"test-set diagnostic curve for {unit}")


def _tile(image: np.ndarray, kind: str, map_range: tuple[float, float]) -> np.ndarray:
    """One thumbnail as RGB floats in [0, 1]: gray images, inferno-coloured anomaly maps."""
    if kind == "anomaly map":
        low, high = map_range
        scaled = np.clip((image.astype(np.float32) - low) / max(high - low, 1e-12), 0, 1)
        return plt.get_cmap("inferno")(scaled)[..., :3]
    image = image.astype(np.float32) / 255.0
    if image.ndim == 3:
        image = np.repeat(image[:1], 3, axis=0) if image.shape[0] == 1 else image[:3]
        return np.moveaxis(image, 0, -1)
    return np.repeat(image[..., None], 3, axis=-1)


def examples_figure(data: RunData, unit: str, detector: str, seed: int, folder: Path) -> Figure | None:
    """Test images, reconstructions and anomaly maps; a green frame = right at val_q95, red = wrong.

    Drawn as one mosaic image (one axes), which keeps the figure quick to render and small as SVG.
    """
    dataset, subset = unit.split("/", 1)
    path = data.examples_path(dataset, subset, detector, seed)
    if path is None:
        return None
    arrays = read_examples(path)
    panels = [("input", arrays["images"])]
    if "reconstructions" in arrays:
        panels.append(("reconstruction", arrays["reconstructions"]))
    map_range = (0.0, 1.0)
    if "maps" in arrays:  # one colour scale for the whole row, so maps compare across images
        maps = arrays["maps"].astype(np.float32)
        map_range = (float(np.nanmin(maps)), float(np.nanpercentile(maps, 99.5)))
        panels.append(("anomaly map", maps))
    n = len(arrays["ids"])
    threshold = float(arrays["threshold"])
    size = arrays["images"].shape[-1]
    border, gap = max(2, size // 16), max(2, size // 10)
    cell = size + 2 * border + gap
    mosaic = np.ones((len(panels) * cell, n * cell, 3), dtype=np.float32)
    verdicts = []
    for column in range(n):
        label, score = int(arrays["labels"][column]), float(arrays["scores"][column])
        predicted = bool(score > threshold) if np.isfinite(threshold) else None
        right = None if predicted is None else predicted == bool(label)
        colour = {None: (0.5, 0.5, 0.5), True: (0.17, 0.63, 0.17), False: (0.84, 0.15, 0.16)}[right]
        verdicts.append((label, score, right, colour))
        for line, (name, stack) in enumerate(panels):
            top, left = line * cell, column * cell
            mosaic[top:top + size + 2 * border, left:left + size + 2 * border] = colour
            mosaic[top + border:top + border + size, left + border:left + border + size] = _tile(stack[column], name, map_range)
    fig, ax = plt.subplots(figsize=(1.15 * n + 0.9, 1.15 * len(panels) + 0.9))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([(line + 0.5) * cell - gap / 2 for line in range(len(panels))], [name for name, _ in panels], fontsize=7)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for column, (label, score, right, colour) in enumerate(verdicts):
        verdict = "" if right is None else ("right" if right else "wrong")
        ax.text((column + 0.5) * cell - gap / 2, -gap, plain(f"{short_id(arrays['ids'][column])}\n"
                f"{'anomalous' if label else 'normal'}, {score:.3g}\n{verdict}"),
                ha="center", va="bottom", fontsize=6, color=colour)
    ax.set_title(plain(f"{detector} on {unit} (seed {seed}); threshold val_q95 = {threshold:.3g}"), fontsize=8, pad=34)
    fig.subplots_adjust(left=0.1, right=0.99, bottom=0.02, top=0.8)
    shown = "; ".join(f"{i} ({'anomalous' if l else 'normal'}, score {s:.3g})"
                      for i, l, s in zip(arrays["ids"], arrays["labels"], arrays["scores"]))
    return save(fig, folder, slug("examples", unit, detector, str(seed)),
                f"{detector} on {unit}: the first normal and anomalous test images, with reconstruction and anomaly map "
                "where the detector has them; anomaly maps share one colour scale. Frame and title: green = predicted "
                f"right, red = wrong, at the honest val_q95 threshold. Images, left to right: {shown}.",
                f"example images for {detector} on {unit}")


def cd_diagram(average_ranks: pd.Series, n_units: int, folder: Path, group: str, friedman_p: float = float("nan"),
               note: str = "") -> Figure | None:
    """Critical-difference diagram (Demšar 2006): average ranks on an axis, the Nemenyi CD bar, cliques of
    not-different detectors joined; Friedman's p-value printed under the axis and ``note`` appended to the caption."""
    k = len(average_ranks)
    cd = critical_difference(k, n_units)
    if not np.isfinite(cd) or k < 2:
        return None
    ranks = average_ranks.sort_values()
    fig, ax = plt.subplots(figsize=(7.0, 1.2 + 0.28 * k), layout="constrained")
    ax.set_xlim(k + 0.3, 0.7)  # rank 1 (best) on the right, as in Demšar's figures
    ax.set_ylim(-(k // 2 + 2) * 0.5, 1.6)
    ax.axis("off")
    ax.hlines(1.0, 1, k, color="black", lw=1)
    for r in range(1, k + 1):
        ax.vlines(r, 1.0, 1.12, color="black", lw=1)
        ax.text(r, 1.2, str(r), ha="center", fontsize=8)
    ax.hlines(1.45, 1, 1 + cd, color="tab:red", lw=2)
    ax.text(1 + cd / 2, 1.52, f"CD = {cd:.2f}", ha="center", fontsize=8, color="tab:red")
    friedman = f"Friedman p = {friedman_p:.3g}" if np.isfinite(friedman_p) else "Friedman p: not computed"
    ax.text((k + 1) / 2, -(k // 2 + 1.6) * 0.5, friedman, ha="center", fontsize=8, color="dimgrey")
    for i, (detector, rank) in enumerate(ranks.items()):
        left = i >= (k + 1) // 2
        y = -0.5 * ((i if not left else k - 1 - i) + 1)
        x_text = k + 0.25 if left else 0.75
        ax.plot([rank, rank, x_text], [1.0, y, y], color="black", lw=0.8)
        ax.text(x_text, y, plain(f"{detector} ({rank:.2f})"), ha="left" if not left else "right", va="center", fontsize=8)
    # cliques: maximal runs of detectors whose ranks differ by less than CD
    values = ranks.to_numpy()
    level = 0.85
    last_end = -1
    for start in range(k):
        end = start
        while end + 1 < k and values[end + 1] - values[start] < cd:
            end += 1
        if end > start and end > last_end:
            ax.hlines(level, values[start] - 0.03, values[end] + 0.03, color="tab:blue", lw=3)
            level -= 0.1
            last_end = end
    return save(fig, folder, slug("cd", group), f"Critical-difference diagram ({group} detectors, {n_units} datasets/subsets): "
                "average rank by ROC AUC (1 = best, on the right); detectors joined by a blue bar are not significantly "
                f"different (Nemenyi, alpha = 0.05). {note}".rstrip(), f"critical difference diagram, {group}")


CLASS_COLOURS = {0: "tab:blue", 1: "tab:red"}


def intensity_scatter_figure(data: RunData, unit: str, folder: Path) -> Figure | None:
    """Each detector's test scores (first seed) against the images' mean intensity, normals and anomalies in two
    colours, one panel per detector (controls apart); None without scores or mean intensities."""
    scores = data.unit_rows(data.scores, unit)
    if scores.empty or "mean_intensity" not in scores:
        return None
    scores = scores[(scores["part"] == "test") & pd.to_numeric(scores["mean_intensity"], errors="coerce").notna()]
    detectors = [d for d in data.detectors if d in set(scores["detector"]) and not data.is_control(d)]
    if not detectors:
        return None
    fig, axes = panel_grid(len(detectors), 4, (2.9, 2.5))
    for ax, detector in zip(axes, detectors):
        rows = scores[scores["detector"] == detector]
        seed = pd.to_numeric(rows["seed"]).min()
        rows = rows[pd.to_numeric(rows["seed"]) == seed]
        for label, name in ((0, "normal"), (1, "anomalous")):
            chosen = rows[rows["label"] == label]
            ax.scatter(chosen["mean_intensity"].astype(float), chosen["score"].astype(float), s=6, alpha=0.6,
                       color=CLASS_COLOURS[label], label=name, linewidths=0)
        found = data.shortcut_verdict(unit, detector)
        ax.set_title(plain(f"{detector} (seed {int(seed)})" + (f"\n{found.verdict}" if found is not None else "")),
                     fontsize=7.5)
        ax.set(xlabel="mean intensity", ylabel="score")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, markerscale=2)
    return save(fig, folder, slug("shortcut", unit), f"Test scores against mean image intensity on {unit} (first seed of "
                "each detector; blue: normal, red: anomalous). A score that rises or falls with brightness within a "
                "class follows brightness rather than the anomaly; the title gives the shortcut verdict.",
                f"scores against mean intensity for {unit}")
