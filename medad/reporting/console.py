"""The table ``medad run`` prints at the end: ROC AUC per dataset/subset x detector."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def auc_table(run_path: Path, metric: str = "roc_auc") -> str:
    """Mean (and std over seeds) of ``metric`` per dataset/subset (rows) x detector (columns), as text."""
    path = Path(run_path) / "metrics.csv"
    metrics = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if metrics.empty:
        return f"no {metric} values yet (no job finished)"
    rows = metrics[metrics["metric"] == metric].copy()
    if rows.empty:
        return f"no {metric} values yet (no job finished)"
    rows["dataset/subset"] = rows["dataset"] + "/" + rows["subset"]
    grouped = rows.groupby(["dataset/subset", "detector"])["value"]
    mean, std, count = grouped.mean(), grouped.std(), grouped.count()
    cells = mean.map("{:.3f}".format)
    several = count > 1
    cells[several] = [f"{m:.3f}±{s:.3f}" for m, s in zip(mean[several], std[several].fillna(0.0))]
    table = cells.unstack("detector").fillna("-")
    return f"{metric} (mean over seeds)\n" + table.to_string()
