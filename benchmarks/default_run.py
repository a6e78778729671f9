#!/usr/bin/env python
"""Where the default run's time goes: run a config (the embedded default unless told), then print, per detector,
the wall seconds of each phase of its jobs, the run's wall time and the report's.

Phases (each job's record in ``jobs.csv``): ``load`` (the subset drawn or decoded, or read from the decode
cache), ``train`` (fit), ``score`` (image scores of test, validation and anomaly-pool images), ``maps`` (pixel
maps of test and validation images), ``metrics`` (image, screening and pixel metrics), ``bootstrap`` (the
intervals), ``examples`` (the report's example images); ``other`` is the rest of the job's wall time (set-up,
the split's fingerprint, tables). ``cpu`` sums the jobs' wall times (one thread each in a pool of workers), so
``cpu / run`` is how well the pool used the cores.

    python benchmarks/default_run.py                       # the embedded default, as run_benchmark.py runs it
    python benchmarks/default_run.py --workers 1           # one job at a time in this process (the old way)
    python benchmarks/default_run.py --seeds 0,1,2 --no-report --results /tmp/seeds   # the AUC spread over seeds
    python benchmarks/default_run.py --from-run results/default-...                   # the table of a finished run

Nothing else should run on the machine while it measures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

PHASES = ("load", "train", "score", "maps", "metrics", "bootstrap", "examples")


def phase_table(jobs: pd.DataFrame) -> pd.DataFrame:
    """Seconds per phase summed over each detector's jobs, with ``other``, ``wall`` and a total row."""
    jobs = jobs.astype({"detector": str})
    columns = [f"{phase}_s" for phase in PHASES]
    for column in columns:
        jobs[column] = pd.to_numeric(jobs.get(column), errors="coerce").fillna(0.0) if column in jobs else 0.0
    jobs["wall_s"] = pd.to_numeric(jobs["wall_s"], errors="coerce").fillna(0.0)
    table = jobs.groupby("detector")[[*columns, "wall_s"]].sum()
    table.insert(len(columns), "other_s", table["wall_s"] - table[columns].sum(axis=1))
    table.insert(0, "jobs", jobs.groupby("detector").size())
    table.loc["total"] = table.sum()
    table.columns = [c.removesuffix("_s") for c in table.columns]
    return table.rename(columns={"wall": "cpu"})


def auc_spread(metrics: pd.DataFrame) -> pd.DataFrame:
    """ROC AUC per detector and subset: the mean over seeds and the smallest and largest."""
    metrics = metrics.astype({"detector": str, "subset": str})
    policy = metrics["threshold_policy"].astype("string").fillna("none")
    auc = metrics[(metrics["metric"] == "roc_auc") & policy.isin(["none", ""])]
    grouped = auc.groupby(["subset", "detector"])["value"]
    return pd.DataFrame({"mean": grouped.mean(), "min": grouped.min(), "max": grouped.max(),
                         "seeds": grouped.size()}).round(3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="default", help="a config path or shipped name (default: default)")
    parser.add_argument("--workers", type=int, default=None, help="local workers (default: medad's, one per core)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds instead of the config's")
    parser.add_argument("--results", default=None, help="where the run folder goes (default: a temporary folder)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report (and its timing)")
    parser.add_argument("--from-run", default=None, help="print the tables of this finished run folder; run nothing")
    args = parser.parse_args(argv)

    import medad
    from medad.reporting.html import build_report

    pd.set_option("display.width", 160)
    if args.from_run:
        run = medad.load_run(args.from_run)
        print(phase_table(run.jobs).round(1).to_string())
        print(f"\nROC AUC\n{auc_spread(run.metrics).to_string()}")
        return 0
    results = Path(args.results or tempfile.mkdtemp(prefix="medad-default-run-"))
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    started = time.perf_counter()
    run = medad.run(args.config, results=results, reports=None, seeds=seeds, workers=args.workers, progress=False)
    run_s = time.perf_counter() - started
    report_s = float("nan")
    if not args.no_report:
        started = time.perf_counter()
        build_report(run.path, results / "reports")
        report_s = time.perf_counter() - started
    table = phase_table(run.jobs)
    print(table.round(1).to_string())
    print(f"\nrun: {run_s:.1f} s wall ({table.loc['total', 'cpu'] / run_s:.2f} jobs at once on average); "
          f"report: {report_s:.1f} s; run folder: {run.path}")
    print(f"\nROC AUC\n{auc_spread(run.metrics).to_string()}")
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
