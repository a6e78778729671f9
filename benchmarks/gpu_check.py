"""The GPU check: five measurements in one script and one table, in under five minutes on one H100/H200.

    python benchmarks/gpu_check.py --out gpu-check                       # on the GPU (device auto)
    python benchmarks/gpu_check.py --out gpu-check --data-root /data     # (e) on the study's real split sizes
    python benchmarks/gpu_check.py --small --out /tmp/check              # CI size (chosen by itself without CUDA)

Sections (one row per number: section, item, value, unit, note). Every timing runs under the arithmetic flags the
job it stands for would set (:func:`medad.benchmark.numerics.configure_numerics`, the function jobs call): (a) is
jobs; (b) fp32 (TF32 off for matrix products and cuDNN) without deterministic algorithms, the default run's
setting; (c) each precision's own (fp32: TF32 off; tf32: TF32 on for both; bf16: autocast with TF32 off),
deterministic algorithms off; (e) the study config's precision and ``deterministic`` (fp32, off).

a. ``default run``: the embedded default matrix through :func:`medad.run` on the device, as
   ``python run_benchmark.py --device <dev>`` runs it (the default workers: ``--workers-per-gpu`` from the
   GPU's free memory); its wall seconds, the jobs' own seconds, the placement. Small: ae alone, 1 epoch, 32 px,
   in this process.
b. ``packing``: the same small ae fit (64 px, batch 32; small: 32 px, batch 8) in one process, then in N
   processes at once on the same device (N = the default cap of workers per GPU; small: 2), each with
   ``cores // N`` torch threads, started together behind a barrier; training images per second of one,
   of all N together, and their ratio (the packing factor).
c. ``training``: each registered detector's training images/s at 128 px (small: 32 px or its smoke size,
   smoke widths), batch its default (small: 8), 10 timed steps (small: 2), in every precision medad
   accepts (:data:`medad.benchmark.acceleration.PRECISIONS`; one a job refuses on the device, tf32 off CUDA,
   gives a ``skipped`` row), through ``benchmarks/throughput.py``'s
   :func:`measure` without the FLOP counter. Detectors that load ImageNet weights by default are built
   without them (``source: random``, ``cin_weights: none``): the arithmetic is the same, nothing is downloaded.
d. ``conformance``: :func:`medad.testing.check_detector` per detector on the device, with
   ``deterministic=True`` where the kit takes it (fp32, deterministic algorithms on); skipped (with the reason)
   where the kit takes no device. It runs in a process of its own started with ``CUBLAS_WORKSPACE_CONFIG`` set
   (cuBLAS reads it at a process's first matrix product on the GPU, which (a)-(c) made in this one); its first
   row names that process. At most ``--conformance-budget-s`` seconds: detectors not started by then are listed
   as not run.
e. ``study estimate``: :mod:`medad.benchmark.estimate` on the study config: each detector entry's calibrated fit
   seconds per 1000 training images, and with ``--data-root`` (the split sizes come from the data) the whole
   matrix's device hours, fits shared as ``medad run --dry-run`` shares them (OCT's three tasks: one fit per
   detector and seed). Small: GANomaly alone at 32 px, batch 8, seed 0, on OCT's three subsets (3 jobs, 1 fit).

The table is printed and written to ``<out>/gpu_check.json`` (rows) and ``<out>/gpu_check.txt`` (the
printout); run folders of (a) go to ``<out>/runs``. A section that fails gives an ``error`` row and the
script goes on (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import multiprocessing as mp
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402 - benchmarks/throughput.py, beside this script

import medad  # noqa: E402
from medad.benchmark.acceleration import PRECISIONS  # noqa: E402
from medad.benchmark.config import hyperparameters, load_config, narrow  # noqa: E402
from medad.benchmark.estimate import calibrate, estimate_jobs, random_images, resolved_params  # noqa: E402
from medad.benchmark.executors import MAX_WORKERS_PER_GPU, usable_cores  # noqa: E402
from medad.benchmark.jobs import expand_jobs  # noqa: E402
from medad.benchmark.numerics import CUBLAS_WORKSPACE_ENV, check_precision_on, configure_numerics, set_cublas_workspace  # noqa: E402
from medad.benchmark.resources import resolve_device  # noqa: E402
from medad.registry import DETECTORS  # noqa: E402

SECTIONS = ("default run", "packing", "training", "conformance", "study estimate")
NO_DOWNLOAD = {"multi-kd": {"source": "random"}, "coronet-semi": {"cin_weights": "none"}}
Row = dict[str, Any]


def row(section: str, item: str, value: Any, unit: str = "", note: str = "") -> Row:
    return {"section": section, "item": item, "value": value, "unit": unit, "note": note}


# --- a. the default run ---------------------------------------------------------------------------------------
def default_run(args: argparse.Namespace) -> list[Row]:
    section = SECTIONS[0]
    if args.small:
        config = load_config("default", ["image_size=32", "datasets.synthetic.params.n_train=48",
                                         "datasets.synthetic.params.n_val=8", "datasets.synthetic.params.n_test=24",
                                         "detectors.ae.params.epochs=1", "detectors.ae.params.batch_size=8"])
        config, workers = narrow(config, detectors=["ae"], device=args.device), 1
    else:
        config, workers = narrow(load_config("default"), device=args.device), None
    started = time.perf_counter()
    run = medad.run(config, results=args.out / "runs", reports=None, run_id=f"default-{time.strftime('%H%M%S')}",
                    workers=workers)
    wall = time.perf_counter() - started
    jobs = run.jobs
    placement = run.manifest.get("placement", {})
    return [row(section, "wall", round(wall, 1), "s", f"{len(jobs)} jobs, {(jobs['status'] == 'done').sum()} done"),
            row(section, "jobs' own time", round(float(jobs["wall_s"].sum()), 1), "s", "sum of the jobs' wall_s"),
            row(section, "placement", json.dumps(placement, sort_keys=True), "", "workers, threads, workers per GPU")]


# --- b. packing -----------------------------------------------------------------------------------------------
def packed_fit(device: str, image_size: int, batch_size: int, images: int, epochs: int, threads: int, barrier,
               results) -> None:
    """In a worker process: an ae fit once to warm up, then (after every process is ready) a timed one; under the
    flags a default job sets (fp32: TF32 off; deterministic algorithms off)."""
    torch.set_num_threads(threads)
    params = {"epochs": epochs, "batch_size": batch_size}
    train = random_images(images, 1, image_size)
    resolved = resolve_device(device)
    configure_numerics("fp32", False, resolved)

    def fit() -> float:
        detector = DETECTORS.get("ae")(image_size=image_size, channels=1, device=str(resolved), seed=0, **params)
        started = time.perf_counter()
        detector.fit(train)
        if resolved.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    fit()
    barrier.wait()
    results.put((images * epochs, fit()))


def rate_of(processes: int, args: argparse.Namespace, image_size: int, batch_size: int, images: int,
            epochs: int) -> float:
    """Training images/s of ``processes`` ae fits at once (all images over the slowest one's time)."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    threads = max(1, usable_cores() // processes)
    workers = [context.Process(target=packed_fit, args=(args.device, image_size, batch_size, images, epochs, threads,
                                                        barrier, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    done = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(count for count, _ in done) / max(seconds for _, seconds in done)


def packing(args: argparse.Namespace) -> list[Row]:
    section = SECTIONS[1]
    n = 2 if args.small else MAX_WORKERS_PER_GPU
    size, batch, images, epochs = (32, 8, 64, 1) if args.small else (64, 32, 4096, 2)
    one = rate_of(1, args, size, batch, images, epochs)
    together = rate_of(n, args, size, batch, images, epochs)
    setting = f"ae {size} px, batch {batch}, {images} images x {epochs} epochs"
    return [row(section, "1 process", round(one, 1), "img/s", setting),
            row(section, f"{n} processes together", round(together, 1), "img/s", f"{usable_cores() // n or 1} threads each"),
            row(section, "packing factor", round(together / one, 2), "x", f"{n} processes / 1")]


# --- c. training img/s per detector and precision --------------------------------------------------------------
def detector_setting(name: str, small: bool, steps: int) -> tuple[int, int, dict[str, Any]]:
    """(image size, batch size, overrides) of a detector for section c: budgets counted in steps (CoroNet-semi's
    anomaly AE) at ``steps`` (throughput.py sets every ``*epochs`` to 1); small: the smoke widths."""
    cls = DETECTORS.get(name)
    overrides = dict(NO_DOWNLOAD.get(name, {}))
    if small:
        smoke_budget = cls.training_budget(resolved_params(cls, cls.smoke_params))
        overrides.update({k: v for k, v in cls.smoke_params.items() if k not in smoke_budget and k != "batch_size"})
    budget = cls.training_budget(resolved_params(cls, overrides))
    overrides.update({k: steps for k, unit in budget.items() if unit == "steps"})
    if small:
        return max(32, cls.smoke_image_size), 8, overrides
    default_batch = hyperparameters(cls).get("batch_size")
    return 128, default_batch.default if default_batch is not None else 32, overrides


def training(args: argparse.Namespace) -> list[Row]:
    section, rows = SECTIONS[2], []
    steps = 2 if args.small else 10
    for name in args.detectors:
        size, batch, overrides = detector_setting(name, args.small, steps)
        for precision in PRECISIONS:
            try:  # what a job refuses here (tf32 off CUDA) is not timed under another name
                check_precision_on(resolve_device(args.device), precision)
            except ValueError as refused:
                rows.append(row(section, f"{name} {precision}", "skipped", "", str(refused)[:200]))
                continue
            settings = SimpleNamespace(device=args.device, image_size=size, channels=3, batch_size=batch,
                                       steps=steps, score_images=2 * batch, memory_format="auto",
                                       precision=precision, deterministic=False)
            try:
                measured = throughput.measure(name, settings, {name: overrides}, count_flops=False)
            except Exception as error:  # one detector's failure (bf16 autocast refused...) is its row, not the run's
                rows.append(row(section, f"{name} {precision}", "error", "", f"{type(error).__name__}: {error}"[:200]))
                continue
            for phase in measured:
                if phase["phase"].startswith("train:") or phase["phase"] == "score":
                    rows.append(row(section, f"{name} {precision} {phase['phase']}", round(phase["img_per_s"], 1),
                                    "img/s", f"{size} px x3, batch {batch}, {phase['steps']} steps"))
    return rows


# --- d. conformance on the device -------------------------------------------------------------------------------
@contextlib.contextmanager
def environment_variable(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment for a block (a child started in it inherits it); restored after."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def conformance(args: argparse.Namespace) -> list[Row]:
    """Section d in a process of its own, started with ``CUBLAS_WORKSPACE_CONFIG`` in its environment: cuBLAS fixes
    its workspace at a process's first matrix product on the GPU, which sections a-c made in this one, so the
    kit's deterministic checks need a process that had the setting from its start (the kit's own rule)."""
    context = mp.get_context("spawn")
    results = context.Queue()
    worker = context.Process(target=conformance_worker, args=(args, results))
    workspace = {CUBLAS_WORKSPACE_ENV: os.environ.get(CUBLAS_WORKSPACE_ENV, "")}
    set_cublas_workspace(workspace)  # a deterministic setting already there is kept
    with environment_variable(CUBLAS_WORKSPACE_ENV, workspace[CUBLAS_WORKSPACE_ENV]):  # inherited at its start
        worker.start()
    try:
        rows = results.get(timeout=args.conformance_budget_s + 900)
    finally:
        worker.join(timeout=60)
        if worker.is_alive():
            worker.kill()
    return rows


def conformance_worker(args: argparse.Namespace, results) -> None:
    """In the fresh process: the rows of section d, or its error row."""
    try:
        results.put(conformance_rows(args))
    except Exception as error:
        traceback.print_exc()
        results.put([row(SECTIONS[3], "error", "error", "", f"{type(error).__name__}: {error}"[:300])])


def conformance_rows(args: argparse.Namespace) -> list[Row]:
    from medad.testing import ConformanceError, check_detector

    section = SECTIONS[3]
    fresh = row(section, "process", os.getpid(), "pid", f"{CUBLAS_WORKSPACE_ENV}="
                f"{os.environ.get(CUBLAS_WORKSPACE_ENV, 'unset')} from its start (a process of its own)")
    accepted = inspect.signature(check_detector).parameters
    if "device" not in accepted:
        return [fresh, row(section, "all detectors", "skipped", "", "medad.testing.check_detector takes no device "
                                                                    "here: the kit runs on the CPU only")]
    options: dict[str, Any] = {"device": str(resolve_device(args.device))}
    if "deterministic" in accepted:
        options["deterministic"] = True
    rows, deadline = [fresh], time.monotonic() + args.conformance_budget_s
    for name in (["ae"] if args.small else args.detectors):
        if time.monotonic() > deadline:
            rows.append(row(section, name, "not run", "", f"past the {args.conformance_budget_s:.0f} s budget"))
            continue
        started = time.perf_counter()
        try:
            check_detector(name, **options)
            rows.append(row(section, name, "pass", "", f"{time.perf_counter() - started:.0f} s, {options}"))
        except ConformanceError as failure:
            failed = [line.strip().split(":")[0] for line in str(failure).splitlines()[1:]]
            rows.append(row(section, name, "fail", "", f"{', '.join(failed)} ({options})"))
    return rows


# --- e. the study estimate ----------------------------------------------------------------------------------------
def study_estimate(args: argparse.Namespace) -> list[Row]:
    section = SECTIONS[4]
    if args.small:
        config = load_config("study", ["image_size=32", "detectors.ganomaly.params.batch_size=8"])
        config = narrow(config, detectors=["ganomaly"], datasets=["oct"], seeds=[0], device=args.device)
    else:
        config = narrow(load_config("study"), device=args.device)
    rows = []
    for entry in config.detectors:
        params = {**entry.params, **NO_DOWNLOAD.get(entry.name, {})}
        size, channels = entry.image_size or config.image_size, entry.channels or config.channels
        calibration = calibrate(entry.name, params, image_size=size, channels=channels, device=config.device,
                                precision=config.precision, memory_format=config.memory_format,
                                deterministic=config.deterministic, score_batch_size=config.score_batch_size)
        full = resolved_params(DETECTORS.get(entry.name), params)
        rows.append(row(section, f"{entry.label} fit per 1000 training images",
                        round(calibration.fit_seconds(full, 1000), 1), "s",
                        f"{size} px x{channels}, calibration {calibration.timed_s:.0f} s"))
    if args.data_root is None:
        rows.append(row(section, "study total", "unknown", "", "give --data-root: the split sizes come from the data"))
        return rows
    jobs = [replace(job, detector_params={**job.detector_params, **NO_DOWNLOAD.get(job.detector_name, {})})
            for job in expand_jobs(config, args.data_root)]
    estimate = estimate_jobs(jobs, config.share_fits)  # fits shared as the run (and its dry run) shares them
    fits = f"{estimate.fits} fit{'s' if estimate.fits != 1 else ''}"
    rows.append(row(section, "study total", round(estimate.total_s / 3600, 2), "device-hours",
                    f"{len(estimate.jobs)} jobs, {fits}, {len(estimate.unknown)} unknown, on {estimate.device}"))
    return rows


def table(rows: list[Row]) -> str:
    width = max([len(r["item"]) for r in rows] + [20])
    lines = [f"{'section':<15} {'item':<{width}} {'value':>12} {'unit':<12} note"]
    lines += [f"{r['section']:<15} {r['item']:<{width}} {str(r['value']):>12} {r['unit']:<12} {r['note']}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.txt and runs/")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--small", action="store_true", help="CI sizes (the default without CUDA)")
    parser.add_argument("--data-root", default=os.environ.get("MEDAD_DATA"), help="the study's data, for (e)'s total")
    parser.add_argument("--detectors", default=",".join(DETECTORS.names()), help="for (c) and (d): registry names")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="which sections to run (comma-separated)")
    parser.add_argument("--conformance-budget-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    args.small = args.small or not torch.cuda.is_available()
    args.detectors = [name.strip() for name in args.detectors.split(",") if name.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    header = (f"medad {medad.__version__} gpu check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
              f", torch {torch.__version__}, {usable_cores()} cores, {'small' if args.small else 'full'} sizes")
    print(header, flush=True)
    steps: dict[str, Callable[[argparse.Namespace], list[Row]]] = dict(zip(SECTIONS, (
        default_run, packing, training, conformance, study_estimate)))
    wanted = [name.strip() for name in args.sections.split(",")]
    rows: list[Row] = []
    for name in SECTIONS:
        if name not in wanted:
            continue
        started = time.perf_counter()
        try:
            found = steps[name](args)
        except Exception as error:  # the table still comes out, with this section's error
            traceback.print_exc()
            found = [row(name, "error", "error", "", f"{type(error).__name__}: {error}"[:300])]
        found.append(row(name, "section time", round(time.perf_counter() - started, 1), "s"))
        print(f"{name}: {len(found) - 1} rows in {found[-1]['value']} s", file=sys.stderr, flush=True)
        rows += found
    text = f"{header}\n{table(rows)}\n"
    (args.out / "gpu_check.txt").write_text(text, encoding="utf-8")
    (args.out / "gpu_check.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1, default=str) + "\n",
                                             encoding="utf-8")
    print(f"{table(rows)}\n\nwritten: {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.txt'}")
    return 1 if any(r["item"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
