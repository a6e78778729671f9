"""The ``medad`` command: run, report, list, datasets check."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path

from medad.benchmark.config import ConfigError, load_config, narrow

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _seeds(value: str) -> list[int]:
    try:
        return [int(item) for item in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects integers separated by commas, got {value!r}") from None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``medad run`` (also those of ``python run_benchmark.py``)."""
    parser.add_argument("--config", type=Path, default=None, help="YAML matrix (default: configs/default.yaml)")
    parser.add_argument("--data-root", default=None, help="where real datasets live (default: $MEDAD_DATA)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="output root for run folders")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="output root for HTML reports")
    parser.add_argument("--run-id", default=None, help="run folder name (default: <config name>-<timestamp>)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="finish an interrupted run; finished jobs are not run again")
    parser.add_argument("--detectors", type=_csv, default=None, help="only these detectors (comma-separated)")
    parser.add_argument("--datasets", type=_csv, default=None, help="only these datasets (comma-separated)")
    parser.add_argument("--seeds", type=_seeds, default=None, help="these seeds instead of the config's")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--executor", default="local", choices=["local"], help="how jobs are run")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: one per GPU; CPU: 1)")
    parser.add_argument("--fail-fast", action="store_true", help="stop after the first failed job (the rest: skipped)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def command_run(args: argparse.Namespace) -> int:
    from medad.benchmark.engine import config_from_manifest, run_matrix
    from medad.benchmark.run_folder import RunFolder
    from medad.reporting.console import auc_table

    data_root = args.data_root or os.environ.get("MEDAD_DATA")
    if args.resume is not None:
        if args.config or args.detectors or args.datasets or args.seeds or args.run_id:
            raise ConfigError("--resume takes the run's own config; drop --config/--detectors/--datasets/--seeds/--run-id")
        run_folder = RunFolder(args.resume)
        config = config_from_manifest(run_folder.read_manifest())
        if args.device:
            config = narrow(config, device=args.device)
    else:
        config = load_config(args.config or DEFAULT_CONFIG)
        config = narrow(config, detectors=args.detectors, datasets=args.datasets, seeds=args.seeds, device=args.device)
        run_id = args.run_id or f"{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        run_folder = RunFolder(args.results / run_id)
    summary = run_matrix(config, run_folder, data_root=data_root, executor=args.executor, workers=args.workers,
                         resume=args.resume is not None, progress=not args.quiet, fail_fast=args.fail_fast,
                         argv=sys.argv)
    print(auc_table(run_folder.path))
    counts = ", ".join(f"{n} {status}" for status, n in summary.counts.items())
    print(f"\n{len(summary.jobs)} jobs: {counts}")
    print(f"run folder: {run_folder.path}")
    return 0 if summary.ok else 1


def command_list(args: argparse.Namespace) -> int:
    from medad.benchmark.registry import DATASETS, DETECTORS

    print("detectors:")
    for name, cls in DETECTORS.items():
        needs = ", ".join(cls.needs) or "-"
        print(f"  {name:<22} {cls.supervision:<16} needs: {needs:<20} {cls.paper}")
    print("datasets:")
    for name, cls in DATASETS.items():
        source = "download" if cls.needs_download else "built in"
        print(f"  {name:<22} subsets: {', '.join(cls.subsets):<28} {source:<9} {cls.paper}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medad", description="Benchmark harness for anomaly detection in medical images")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a benchmark matrix")
    add_run_arguments(run)
    run.set_defaults(handler=command_run)
    listing = commands.add_parser("list", help="list registered detectors and datasets")
    listing.set_defaults(handler=command_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError, FileExistsError, KeyError, ValueError) as error:
        print(f"medad: error: {error}", file=sys.stderr)
        return 2


def run_benchmark_main(argv: list[str] | None = None) -> int:
    """``python run_benchmark.py [options]``: the same as ``medad run [options]``."""
    return main(["run", *(sys.argv[1:] if argv is None else argv)])
