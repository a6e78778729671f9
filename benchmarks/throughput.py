"""Training and scoring throughput (images/s) of registered detectors on the current device.

    python benchmarks/throughput.py --detectors f-anogan,ganomaly,multi-kd --image-size 128 --batch-size 32 --steps 10
    python benchmarks/throughput.py --detectors proxyano,coronet --memory-format channels_last   # NHWC on the CPU too
    python benchmarks/throughput.py --detectors mama-net,proxyano --image-size 128 --batch-size 8 --steps 5 \
        --param mama-net.mem_size=2000
    python benchmarks/throughput.py --detectors sure-roi,coronet,coronet-semi --image-size 64 --batch-size 16 \
        --steps 5 --param coronet-semi.cin_weights=none --param coronet-semi.anomaly_ae_steps=5

Each detector is built with ``batch_size`` and every ``*epochs`` hyper-parameter set to 1, and fitted on
``(steps + 1) * batch_size`` random images. A :class:`TimedTrainLog` stamps every logged training step;
a *phase* is the run of steps whose first logged loss has the same name (f-AnoGAN: the WGAN-GP stage,
then the encoder stage). Training img/s of a phase = batch size / mean time between its consecutive
steps (img/cpu-s: per second of this process's CPU time, which a busy shared machine distorts
less), so the first step of each phase (optimiser state, caches such as Multi-KD's source features) is
not counted; ``fit img/s`` divides all trained images by the whole ``fit`` time, set-up included.
Scoring img/s: ``score`` on ``--score-images`` images in batches of ``batch_size`` after a warm-up batch.
``--param key=value`` sets a hyper-parameter of every detector that has it (``name.key=value``: one
detector); values are YAML (``--param multi-kd.source_cache_mb=0``). ``--memory-format``, ``--precision`` and
``--deterministic`` are the run settings of :mod:`medad.benchmark.acceleration` and
:mod:`medad.benchmark.numerics` (``auto``: channels_last): the fit and the scoring run under exactly the flags a
job with these settings sets (:func:`medad.benchmark.numerics.numerics`, the function jobs call: fp32 = TF32 off
for matrix products and cuDNN, tf32 = both on, bf16 = autocast with TF32 off), the flags restored after.

Work per image: torch's FLOP formulas (convolutions and matrix products, forward and backward, also
the double backward of a gradient penalty) count every operation of the fit (:class:`FlopCount`), so ``GFLOP/img`` is the arithmetic of one training step per image and ``% peak`` its
rate (GFLOP/img x img/s) against this device's fp32 matrix-product rate measured at start-up: a step
far below the peak wastes time somewhere; one near it can only go faster with less arithmetic.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import defaultdict

import numpy as np
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from medad.benchmark.acceleration import MEMORY_FORMATS, PRECISIONS, autocast, resolve_memory_format
from medad.benchmark.config import hyperparameters
from medad.benchmark.estimate import random_images
from medad.benchmark.numerics import numerics
from medad.benchmark.resources import resolve_device
from medad.detectors.base import TrainLog
from medad.registry import DETECTORS


class FlopCount(TorchDispatchMode):
    """Counts the floating-point operations of every aten op torch has a FLOP formula for, while active.

    torch's own ``FlopCounterMode`` also tracks modules with hooks that break ``autograd.grad`` with
    ``create_graph`` (f-AnoGAN's gradient penalty); this counts at the dispatcher only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out

    def get_total_flops(self) -> int:
        return self.total


class TimedTrainLog(TrainLog):
    """A TrainLog that also records when each step was logged (after its losses reached the host: it reads them at
    every step, ``log_every=1``, so that a stamp follows the device's work) and, given a running :class:`FlopCount`,
    the floating-point operations counted so far."""

    def __init__(self, flops: FlopCount | None = None) -> None:
        super().__init__(log_every=1)
        self.flops = flops
        self.stamps: list[tuple[float, float, str, int]] = []

    def log(self, epoch: int, step: int, **losses) -> None:
        super().log(epoch, step, **losses)  # reads each loss (log_every=1): waits for the device
        counted = self.flops.get_total_flops() if self.flops is not None else 0
        self.stamps.append((time.perf_counter(), time.process_time(), next(iter(losses)), counted))


def phase_rates(stamps: list[tuple[float, float, str, int]], batch_size: int,
                ) -> dict[str, tuple[float, float, int, float]]:
    """{phase: (img/s of wall time, img/s of process CPU time, counted steps, GFLOP per image)} from
    consecutive stamps of a phase.

    CPU time (all threads of this process) is what a step costs on a shared machine, where wall time
    also counts other processes; on an idle machine with T threads, wall img/s ≈ T × CPU img/s at best.
    """
    gaps: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for (wall0, cpu0, phase_before, flops0), (wall1, cpu1, phase, flops1) in zip(stamps, stamps[1:]):
        if phase == phase_before:
            gaps[phase].append((wall1 - wall0, cpu1 - cpu0, flops1 - flops0))
    return {phase: (batch_size / float(np.mean([w for w, _, _ in values])),
                    batch_size / max(float(np.mean([c for _, c, _ in values])), 1e-9), len(values),
                    float(np.mean([f for _, _, f in values])) / batch_size / 1e9)
            for phase, values in gaps.items()}


def matmul_gflops(device: torch.device, size: int = 4096, rounds: int = 5, round_s: float = 0.6) -> float:
    """This device's sustained fp32 matrix-product rate (GFLOP/s): the best of ``rounds`` rounds of back-to-back
    ``size``-square products, each round at least ``round_s`` seconds, after a warm-up round.

    One short 2048-square product (the earlier estimate) caught the CPU before its clock and caches settled and
    read low: GANomaly's step then measured 119 % of it.
    """
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    best = 0.0
    for _ in range(rounds + 1):  # the first is a warm-up
        products, started = 0, time.perf_counter()
        while True:
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            products += 1
            elapsed = time.perf_counter() - started
            if elapsed >= round_s:
                break
        best = max(best, 2 * size**3 * products / elapsed / 1e9)
    return best


def parse_params(items: list[str]) -> dict[str | None, dict[str, object]]:
    """``key=value`` (every detector) and ``name.key=value`` (one detector) -> {name or None: {key: value}}."""
    parsed: dict[str | None, dict[str, object]] = defaultdict(dict)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--param {item!r}: expected key=value")
        name, _, key = key.rpartition(".")
        parsed[name or None][key] = yaml.safe_load(value)
    return parsed


def build(name: str, image_size: int, channels: int, device: str, batch_size: int, overrides: dict):
    """The detector with one epoch per stage, ``batch_size``, and the overrides it accepts."""
    cls = DETECTORS.get(name)
    allowed = hyperparameters(cls)
    params = {key: 1 for key in allowed if key.endswith("epochs")}
    if "batch_size" in allowed:
        params["batch_size"] = batch_size
    for scope in (None, name):
        params.update({k: v for k, v in overrides.get(scope, {}).items() if k in allowed})
    return cls(image_size=image_size, channels=channels, device=device, seed=0, **params), params


def measure(name: str, args: argparse.Namespace, overrides: dict, count_flops: bool = True) -> list[dict[str, object]]:
    """Rows (detector, phase, img/s, steps, GFLOP/img) for one detector; ``count_flops=False`` times the steps without
    the FLOP counter (which runs Python at every aten op: GFLOP/img is then NaN)."""
    device = resolve_device(args.device)
    with numerics(args.precision, args.deterministic, device):  # the flags a job sets, restored after
        return _measure(name, device, args, overrides, count_flops)


def _measure(name: str, device: torch.device, args: argparse.Namespace, overrides: dict,
             count_flops: bool) -> list[dict[str, object]]:
    detector, params = build(name, args.image_size, args.channels, str(device), args.batch_size, overrides)
    detector.use_memory_format(resolve_memory_format(args.memory_format, device))
    train = random_images((args.steps + 1) * args.batch_size, args.channels, args.image_size)
    counter = FlopCount() if count_flops else contextlib.nullcontext()
    with counter as flops, autocast(device, args.precision):
        log = TimedTrainLog(flops)
        cpu_started, started = time.process_time(), time.perf_counter()
        if detector.supervision == "semi-supervised":  # coronet-semi: a labelled pool of one batch
            pool = random_images(args.batch_size, args.channels, args.image_size, seed=2)
            pool.labels[:] = 1
            detector.fit(train, None, log, anomaly_pool=pool)
        else:
            detector.fit(train, None, log)
        fit_seconds, fit_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    rows = [{"detector": name, "phase": f"train:{phase}", "img_per_s": rate, "img_per_cpu_s": cpu_rate, "steps": steps,
             "gflop_per_img": gflop if count_flops else float("nan")}
            for phase, (rate, cpu_rate, steps, gflop) in phase_rates(log.stamps, args.batch_size).items()]
    trained = len(log.stamps) * args.batch_size
    rows.append({"detector": name, "phase": "fit (all, incl. set-up)", "img_per_s": trained / fit_seconds,
                 "img_per_cpu_s": trained / fit_cpu, "steps": len(log.stamps), "gflop_per_img": float("nan")})
    test = random_images(args.score_images + args.batch_size, args.channels, args.image_size, seed=1)
    batches = list(test.batches(args.batch_size))
    with autocast(device, args.precision):
        detector.score(batches[0])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        cpu_started, started = time.process_time(), time.perf_counter()
        for batch in batches[1:]:
            detector.score(batch).cpu()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    rows.append({"detector": name, "phase": "score", "img_per_s": args.score_images / seconds,
                 "img_per_cpu_s": args.score_images / cpu_seconds, "steps": len(batches) - 1,
                 "gflop_per_img": float("nan")})
    for row in rows:
        row["params"] = ",".join(f"{k}={v}" for k, v in params.items())
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="f-anogan,ganomaly,multi-kd,mama-net,proxyano",
                        help="comma-separated registry names")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per phase")
    parser.add_argument("--score-images", type=int, default=128)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--param", action="append", default=[], metavar="[NAME.]KEY=VALUE")
    parser.add_argument("--memory-format", default="auto", choices=MEMORY_FORMATS)
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS)
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms, as a job's setting")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_params(args.param)
    device = resolve_device(args.device)
    peak = matmul_gflops(device)
    print(f"device={args.device} threads={torch.get_num_threads()} image_size={args.image_size} "
          f"batch_size={args.batch_size} memory_format={resolve_memory_format(args.memory_format, device)} "
          f"precision={args.precision} deterministic={args.deterministic} torch={torch.__version__} "
          f"fp32 matmul peak={peak:.0f} GFLOP/s")
    print(f"{'detector':<12} {'phase':<34} {'img/s':>9} {'img/cpu-s':>10} {'steps':>6} {'GFLOP/img':>10} "
          f"{'% peak':>7}  params")
    for name in args.detectors.split(","):
        for row in measure(name.strip(), args, overrides):
            share = 100 * row["gflop_per_img"] * row["img_per_s"] / peak  # (peak re-measured below)
            print(f"{row['detector']:<12} {row['phase']:<34} {row['img_per_s']:>9.2f} {row['img_per_cpu_s']:>10.2f} "
                  f"{row['steps']:>6} {row['gflop_per_img']:>10.2f} {share:>7.0f}  {row['params']}",
                  flush=True)
    print(f"fp32 matmul peak measured again after the detectors: {matmul_gflops(device):.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
