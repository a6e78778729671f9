"""The ``medad`` command: run, report, list, describe, datasets check."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from medad.atomic_files import WriteError
from medad.benchmark.acceleration import MEMORY_FORMATS, PRECISIONS
from medad.benchmark.config import DEFAULT_CONFIG, ConfigError, check_run_id, load_config, narrow

if TYPE_CHECKING:
    from collections.abc import Callable

    from medad.benchmark.engine import RunSummary

T = TypeVar("T")


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _seeds(value: str) -> list[int]:
    try:
        return [int(item) for item in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects integers separated by commas, got {value!r}") from None


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``medad run`` (also those of ``python run_benchmark.py``)."""
    parser.add_argument("--config", default=None,
                        help="YAML matrix: a path, or a shipped config's name: default (the embedded CPU run), study, papers")
    parser.add_argument("--data-root", default=None, help="where real datasets live (default: $MEDAD_DATA)")
    parser.add_argument("--results", type=Path, default=Path("results"), help="output root for run folders")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="output root for HTML reports")
    parser.add_argument("--run-id", default=None, help="run folder name (default: <config name>-<timestamp>)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                        help="finish an interrupted run; finished jobs are not run again")
    parser.add_argument("--extend", type=Path, default=None, metavar="RUN_DIR",
                        help="add the cells of --config (new detectors, datasets), of --detectors a,b (registered "
                             "detectors, on the run's own datasets: no --config needed) or of --seeds to a finished run; "
                             "only they run, on the run's recorded splits, and its report covers everything")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value before validation (repeatable): image_size=128, "
                             "detectors.ganomaly.params.epochs=5 (entries by label or name)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything, print the job table (and on --resume/--extend what is done) and each "
                             "pending job's estimated device time from a short calibration (cached), run nothing")
    parser.add_argument("--no-estimate", action="store_true", help="with --dry-run: no time estimate (no calibration)")
    parser.add_argument("--detectors", type=_csv, default=None, help="only these detectors (comma-separated)")
    parser.add_argument("--datasets", type=_csv, default=None, help="only these datasets (comma-separated)")
    parser.add_argument("--seeds", type=_seeds, default=None, help="these seeds instead of the config's")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--memory-format", default=None, choices=MEMORY_FORMATS,
                        help="tensor layout of networks and images (default: the config's; auto = channels_last)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="fp32 (full float32, TF32 off on CUDA), tf32 (CUDA's TensorFloat-32), or bf16 autocast for "
                             "training and scoring (rows tagged precision=tf32 / bf16)")
    parser.add_argument("--deterministic", action="store_true", default=None,
                        help="deterministic algorithms (cuDNN, cuBLAS, TF32 off): same seed, same numbers on CUDA too "
                             "(rows tagged deterministic=true); on the CPU the numbers are the same without it")
    parser.add_argument("--executor", default="local", choices=["local", "ray", "slurm"],
                        help="how jobs are run: local processes, Ray tasks (medad[ray]), SLURM array jobs (medad[slurm])")
    parser.add_argument("--workers", type=int, default=None,
                        help="local: worker processes (default: one per GPU; CPU: one per core as memory allows, or "
                             "$MEDAD_WORKERS; 1 = in this process); ray/slurm: jobs at once (default: all)")
    parser.add_argument("--workers-per-gpu", type=int, default=None, metavar="N",
                        help="local: jobs sharing each GPU at once (default: as 80%% of its free memory holds at the jobs' "
                             "measured peak + 0.5 GB of CUDA context, 4 GB when unknown, at most 4, one core each); ray: each GPU job asks "
                             "for 1/N GPU (default 1); slurm: N jobs per GPU task. Every worker gets cores // workers "
                             "torch threads")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to use: 'auto' or ray://host:port (default: start a local Ray instance)")
    parser.add_argument("--max-retries", type=int, default=2,
                        help="ray/slurm: times a job lost with its worker or node is run again (default: 2)")
    parser.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                        help="extra sbatch option for --executor slurm, e.g. partition=gpu (repeatable)")
    parser.add_argument("--fail-fast", action="store_true", help="stop after the first failed job (the rest: skipped)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars and no progress lines (warnings only)")
    parser.add_argument("--no-cache", action="store_true",
                        help="decode the datasets' images again instead of using the decode cache ($MEDAD_CACHE)")


def _run_config(args: argparse.Namespace):
    """The run folder and config of ``medad run``: a new run, ``--resume`` or ``--extend``."""
    from medad.benchmark.engine import config_from_manifest, config_with_detectors, extend_config
    from medad.benchmark.run_folder import RunFolder

    if args.resume is not None and args.extend is not None:
        raise ConfigError("--resume and --extend: give one (--extend adds cells to a run and runs only those)")
    existing = args.resume or args.extend
    if existing is not None:
        if args.resume is not None and (args.config or args.detectors or args.datasets or args.seeds or args.run_id
                                        or args.set):
            raise ConfigError("--resume takes the run's own config; drop --config/--set/--detectors/--datasets/--seeds/"
                              "--run-id (--extend RUN --config MORE adds cells)")
        if args.extend is not None and args.run_id:
            raise ConfigError("--extend adds to the run folder it names; drop --run-id")
        folder = RunFolder(existing)
        config = config_from_manifest(folder.read_manifest())
        if args.precision and args.precision != config.precision:  # the layout and device only move rounding
            raise ConfigError(f"--precision {args.precision}: this run was started with precision "
                              f"{config.precision}; a resumed run keeps it so that its rows stay comparable")
        if args.deterministic and not config.deterministic:
            raise ConfigError("--deterministic: this run was started without it; a resumed or extended run keeps its "
                              "setting so that its rows stay comparable")
        if args.extend is not None:
            if not (args.config or args.detectors or args.seeds):
                raise ConfigError("--extend RUN needs --config MORE (new detectors, datasets), --detectors a,b "
                                  "(registered detectors, added on the run's datasets) and/or --seeds")
            if args.config:
                more = narrow(load_config(args.config, args.set), detectors=args.detectors, datasets=args.datasets,
                              seeds=args.seeds)
            else:  # the run's own dataset entries, seeds and settings
                more = config_with_detectors(config, args.detectors, args.set) if args.detectors else config
                more = narrow(more, datasets=args.datasets, seeds=args.seeds)
            config = extend_config(config, more)
        if args.device or args.memory_format:
            config = narrow(config, device=args.device, memory_format=args.memory_format)
        return folder, config
    config = load_config(args.config or DEFAULT_CONFIG, args.set)
    config = narrow(config, detectors=args.detectors, datasets=args.datasets, seeds=args.seeds, device=args.device,
                    memory_format=args.memory_format, precision=args.precision, deterministic=args.deterministic)
    run_id = args.run_id or f"{config.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    check_run_id("--run-id", run_id)
    if args.results.exists() and not args.results.is_dir():
        raise ConfigError(f"--results {args.results}: a file, not a folder; give the folder that holds the run folders")
    return RunFolder(args.results / run_id), config


def command_run(args: argparse.Namespace) -> int:
    from medad.benchmark.engine import run_matrix
    from medad.benchmark.fit_sharing import fit_ids
    from medad.benchmark.jobs import expand_jobs
    from medad.benchmark.preflight import PreflightError, preflight
    from medad.reporting.console import job_table

    data_root = args.data_root or os.environ.get("MEDAD_DATA")
    if args.no_cache:
        from medad.datasets.cache import NO_CACHE_ENV

        os.environ[NO_CACHE_ENV] = "1"  # read by the dataset loaders, inherited by worker processes
    if args.ray_address is not None and args.executor != "ray":
        raise ConfigError("--ray-address needs --executor ray")
    if args.slurm_param and args.executor != "slurm":
        raise ConfigError("--slurm-param needs --executor slurm")
    from medad.benchmark.executors.slurm import parse_slurm_params

    # the options' own syntax first: a malformed --slurm-param is the user's typo whatever is installed
    options = {"ray_address": args.ray_address, "max_retries": args.max_retries,
               "slurm_params": parse_slurm_params(args.slurm_param)}
    run_folder, config = _run_config(args)
    existing = args.resume or args.extend
    if existing is not None and data_root is None:
        data_root = run_folder.read_manifest().get("data_root")
    jobs = expand_jobs(config, data_root)
    problems = preflight(config, jobs, data_root=data_root, executor=args.executor, results=args.results)
    splits = None
    if existing is not None:  # new cells are tested on the run's recorded splits, or refused (files changed)
        from medad.benchmark.recorded_splits import check_recorded_splits, pending_units

        splits = check_recorded_splits(run_folder, config, data_root, pending_units(run_folder, jobs))
        problems += splits.problems
        for note in splits.notes:
            print(f"medad: {note}", file=sys.stderr)
    if args.dry_run:
        statuses = {r["job_id"]: r["status"] for r in run_folder.records()} if existing is not None else {}
        print(job_table(jobs, statuses, fits=fit_ids(jobs, config.share_fits)))
        pending = [job for job in jobs if statuses.get(job.job_id) != "done"]
        if pending and not args.no_estimate:
            from medad.benchmark.estimate import estimate_jobs, format_estimate

            say = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
            estimate = estimate_jobs(pending, config.share_fits, progress=say)
            print(f"\n{format_estimate(estimate, config.name)}")
        if problems:
            print(f"\n{PreflightError(problems)}", file=sys.stderr)
        return 2 if problems else 0
    if problems:
        raise PreflightError(problems)
    try:
        summary = run_matrix(config, run_folder, data_root=data_root, executor=args.executor, workers=args.workers,
                             resume=existing is not None, progress=not args.quiet, fail_fast=args.fail_fast,
                             argv=sys.argv, executor_options=options, extend=args.extend is not None,
                             overrides=list(args.set), workers_per_gpu=args.workers_per_gpu, recorded_splits=splits)
    except WriteError as error:
        print(f"medad: error: {error}. Every finished job is kept: fix this (free disk space, permissions), then "
              f"resume with: medad run --resume {run_folder.path}", file=sys.stderr)
        return 2
    _end_of_run(run_folder.path, args.reports, summary)
    return 0 if summary.ok else 1


def _end_of_run(run_path: Path, reports: Path, summary: RunSummary) -> None:
    """What ``medad run`` does once its jobs are over: the HTML report (figures included), then the ROC AUC table,
    the all-anomalous classifier on each test set with every degenerate operating point, the job counts and the paths.

    The jobs' outcome is already on disk (the run folder's CSVs and manifest) and the exit status is decided by
    ``summary`` alone; every step here is derived from that folder and can be done again by ``medad report``. So
    the report is built before anything optional, and a step that raises is printed on stderr with the command
    that rebuilds the report: a bug in a table or figure (or a library version that breaks one) never hides a
    finished run nor turns its exit status into a failure.
    """
    from medad.reporting.console import auc_table, threshold_reference_text
    from medad.reporting.html import build_report
    from medad.reporting.run_data import load_run

    rebuild = f"medad report {run_path} --reports {reports}"
    index = table = None
    # read once: the report and the table show the same intervals (the seed-mean bootstrap, computed once)
    data = _step(f"the report of {run_path}", lambda: load_run(run_path), f"rebuild it with: {rebuild}")
    if data is not None:
        index = _step(f"the report of {run_path}", lambda: build_report(run_path, reports, data=data),
                      f"rebuild it with: {rebuild}")
        table = _step("the ROC AUC table", lambda: auc_table(run_path, data=data),
                      f"the run is complete: its numbers are in {run_path / 'metrics.csv'} and in the report "
                      f"({rebuild} rebuilds it)")
    if table is not None:
        print(table)
    references = None if data is None else _step(
        "the all-anomalous references", lambda: threshold_reference_text(run_path, data=data),
        f"the run is complete: the report ({rebuild} rebuilds it) shows them")
    if references:
        print(f"\n{references}")
    counts = ", ".join(f"{n} {status}" for status, n in summary.counts.items())
    print(f"\n{len(summary.jobs)} jobs: {counts}")
    print(f"run folder: {run_path}")
    if index is not None:
        print(f"report: {index}")


def _step(what: str, build: Callable[[], T], then: str) -> T | None:
    """``build()``, or None after printing on stderr that ``what`` failed, why, and ``then`` (what the user can do)."""
    try:
        return build()
    except Exception as error:  # an end-of-run step must not hide the finished run
        print(f"medad: {what} failed: {type(error).__name__}: {error}\n  {then}", file=sys.stderr)
        return None


def command_report(args: argparse.Namespace) -> int:
    from medad.reporting.html import build_report
    from medad.reporting.run_data import load_run, load_runs
    from medad.reporting.shortcut_notice import shortcut_check_not_run

    if args.name is not None:
        check_run_id("--name", args.name)
    data = load_run(args.run_dirs[0]) if len(args.run_dirs) == 1 else load_runs(args.run_dirs, name=args.name)
    if data.notice:
        print(f"medad report: {data.notice}", file=sys.stderr)
    missing = shortcut_check_not_run(data)
    if missing:
        print(f"medad report: {missing}", file=sys.stderr)
    print(f"report: {build_report(args.run_dirs[0], args.reports, data=data)}")
    return 0


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def command_list(args: argparse.Namespace) -> int:
    """Both registries, one line each, within 100 columns (``medad describe NAME`` for the details)."""
    from medad.registry import DATASETS, DETECTORS

    print("detectors (medad describe NAME for the hyper-parameters):")
    items = DETECTORS.items()
    for name, cls in [(n, c) for n, c in items if not c.control] + [(n, c) for n, c in items if c.control]:
        needs = ", ".join(cls.needs) or "-"
        kind = "CONTROL" if cls.control else cls.supervision
        print(_fit(f"  {name:<14} {kind:<15} needs: {needs:<12} {cls.paper}", 100))
    if any(cls.control for _, cls in items):
        print("  (CONTROL: a structure-blind reference for the shortcut check, fitted on normals; never ranked)")
    print("datasets:")
    for name, cls in DATASETS.items():
        source = "download" if cls.needs_download else "built in"
        print(_fit(f"  {name:<20} {source:<9} subsets: {', '.join(cls.subsets):<24} {cls.paper}", 100))
    return 0


def command_describe(args: argparse.Namespace) -> int:
    """A detector's (or dataset's) paper, supervision, needs and every hyper-parameter."""
    from medad.reporting.describe import describe

    print(describe(args.name))
    return 0


def command_datasets_check(args: argparse.Namespace) -> int:
    from medad.datasets.files import FileDataset
    from medad.registry import DATASETS

    cls = DATASETS.get(args.name)
    if not issubclass(cls, FileDataset):
        print(f"{args.name}: built in, nothing to check")
        return 0
    data_root = args.data_root or os.environ.get("MEDAD_DATA")
    root = args.root or (Path(data_root) / args.name if data_root else None)
    if root is None:
        raise ConfigError("datasets check needs --data-root DIR (or $MEDAD_DATA, or --root DIR)")
    report = cls(root=root, image_size=32).check(strict_counts=not args.allow_other_counts)
    print("\n".join(report.lines))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    import medad

    parser = argparse.ArgumentParser(prog="medad", description="Benchmark harness for anomaly detection in medical images")
    parser.add_argument("--version", action="version", version=f"medad {medad.__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more detail on stderr (-v: each job's start and end and the loaded data; -vv: debug)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a benchmark matrix")
    add_run_arguments(run)
    run.set_defaults(handler=command_run)
    listing = commands.add_parser("list", help="list registered detectors and datasets")
    listing.set_defaults(handler=command_list)
    describe = commands.add_parser("describe", help="a detector's or dataset's paper, needs and hyper-parameters")
    describe.add_argument("name", help="a registry name (medad list) or a dotted module:Class path")
    describe.set_defaults(handler=command_describe)
    report = commands.add_parser("report", help="(re)build the HTML report from run folders' CSVs")
    report.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="the run folder (results/<run-id>); several: one report over runs whose splits match")
    report.add_argument("--name", default=None, help="the report's folder name for several runs (default: RUN_A+RUN_B)")
    report.add_argument("--reports", type=Path, default=Path("reports"),
                        help="output root: the report goes to REPORTS/<run-id>/index.html (default: reports/)")
    report.set_defaults(handler=command_report)
    datasets = commands.add_parser("datasets", help="work with the real datasets")
    datasets_commands = datasets.add_subparsers(dest="datasets_command", required=True)
    check = datasets_commands.add_parser("check", help="validate a download: layout, counts, unreadable files")
    check.add_argument("name", help="dataset registry name, e.g. head-ct")
    check.add_argument("--data-root", default=None, help="folder holding <name>/ (default: $MEDAD_DATA)")
    check.add_argument("--root", type=Path, default=None, help="the dataset's own folder (instead of DATA_ROOT/<name>)")
    check.add_argument("--allow-other-counts", action="store_true",
                       help="counts that match no known release are a warning, not an error")
    check.set_defaults(handler=command_datasets_check)
    return parser


def configure_logging(verbose: int, quiet: bool = False) -> None:
    """medad's loggers (one per module) to stderr: progress and warnings by default, details with -v, warnings
    only with --quiet (unless -v is given too)."""
    level = logging.WARNING - 10 * min(verbose + (0 if quiet and not verbose else 1), 2)  # INFO; -v DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("medad")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    from medad.benchmark.engine import RunInterrupted
    from medad.benchmark.run_lock import RunLockedError

    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, quiet=getattr(args, "quiet", False))
    try:
        return args.handler(args)
    except RunInterrupted as interrupted:
        print(f"medad: {interrupted}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("medad: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, RunLockedError, WriteError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError,
            ValueError, ConnectionError) as error:
        print(f"medad: error: {error}", file=sys.stderr)
        return 2


def run_benchmark_main(argv: list[str] | None = None) -> int:
    """``python run_benchmark.py [options]``: the same as ``medad run [options]``."""
    return main(["run", *(sys.argv[1:] if argv is None else argv)])
