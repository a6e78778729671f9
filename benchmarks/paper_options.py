"""ROC AUC (image and pixel) of each detector's paper options on synthetic ``obvious``, over model seeds.

The default config's budget for every detector, one option changed at a time: MAMA Net's memory modes,
ProxyAno's two scores, SURE-ROI's two epoch selections, CoroNet's two classifier learning rates. Prints
mean and range over the seeds. Usage (a few minutes per option and seed on 2 cores)::

    python benchmarks/paper_options.py --seeds 0,1,2 --workers 2 --results /tmp/paper-options
"""

from __future__ import annotations

import argparse
import copy
import re

import medad
from medad.benchmark.config import load_config

OPTIONS = {  # detector label in the default config -> {option label: params changed}
    "mama-net": {"prototype (paper)": {}, "gradient": {"mem_update": "gradient"}, "write": {"mem_update": "write"},
                 "bypass": {"mem_update": "bypass"}},
    "proxyano": {"latent, Eq. 13 (paper)": {}, "map": {"score_space": "map", "map_sigma": 3.0, "top_fraction": 0.02}},
    "sure-roi": {"last epoch": {}, "best val AUROC": {"select": "best_val_auroc"}},
    "coronet-semi": {"cin_lr 1e-3 (paper)": {}, "cin_lr 1e-5 (code)": {"cin_lr": 1.0e-5}},
}


def matrix(detectors: list[str]) -> dict:
    """The default config on synthetic/obvious with one entry per (detector, option)."""
    default = load_config("default")
    entries = {d.label: d for d in default.detectors}
    config = {"name": "paper-options", "image_size": default.image_size, "device": "cpu",
              "datasets": [{"name": "synthetic", "subsets": ["obvious"], "params": dict(default.datasets[0].params)}],
              "detectors": []}
    for label in detectors:
        for option, change in OPTIONS[label].items():
            entry = entries[label]
            slug = re.sub(r"[^a-z0-9]+", "-", option.split(" (")[0].lower()).strip("-")
            config["detectors"].append({"name": entry.name, "label": f"{label}--{slug}",
                                        "params": {**copy.deepcopy(entry.params), **change}})
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--detectors", default=",".join(OPTIONS))
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--results", default="results")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    run = medad.run(matrix(args.detectors.split(",")), seeds=seeds, workers=args.workers, results=args.results,
                    reports=None, progress=True)
    metrics = run.metrics
    rows = metrics[metrics["metric"].isin(["roc_auc", "pixel_roc_auc"]) & (metrics["threshold_policy"] == "none")]
    table = rows.groupby(["detector", "metric"], observed=True)["value"].agg(["mean", "min", "max", "count"]).round(3)
    print(table.unstack("metric").to_string())
    print(f"run folder: {run.path}")


if __name__ == "__main__":
    main()
