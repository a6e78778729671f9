"""Eager against ``torch.compile``: training img/s and the largest score difference, per registered detector.

    python benchmarks/compile_check.py --detectors ae,ganomaly,f-anogan --device cuda --image-size 128 --batch-size 32
    python benchmarks/compile_check.py --detectors ae --device cuda --mode reduce-overhead   # CUDA graphs (inductor)

Each detector is built twice with the same seed as ``throughput.py`` builds it (one epoch per stage, ``batch_size``),
once as it is and once with the forward of every network of ``networks()`` compiled (``nn.Module.compile``; a
submodule that the detector calls directly, such as a decoder alone, stays eager), fitted on the same
``(steps + 1) * batch_size`` random images and scored on the same random test images. ``steady img/s`` is the
training rate between consecutive logged steps after the first of each phase (where compilation happens); ``fit_s``
is the whole fit, compilation included. A compile setting is worth offering only for a detector whose
``max |score diff|`` stays at the level of eager's run-to-run differences on that device.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (a sibling script, not a package)

from medad.benchmark.resources import resolve_device  # noqa: E402


def _fit_and_score(detector, train, test: torch.Tensor, batch_size: int) -> tuple[float, float, torch.Tensor]:
    """(steady training img/s, fit seconds, scores) of one fit of ``detector``."""
    log = throughput.TimedTrainLog()
    started = time.perf_counter()
    if detector.supervision == "semi-supervised":
        pool = throughput.random_images(len(test), train.channels, train.image_size, seed=2)
        pool.labels[:] = 1
        detector.fit(train, None, log, anomaly_pool=pool)
    else:
        detector.fit(train, None, log)
    fit_seconds = time.perf_counter() - started
    rates = throughput.phase_rates(log.stamps, batch_size)
    steady = float(np.mean([rate for rate, *_ in rates.values()])) if rates else float("nan")
    return steady, fit_seconds, detector.score(test).double().cpu()


def compare_compiled(name: str, *, image_size: int = 32, channels: int = 1, batch_size: int = 8, steps: int = 4,
                     device: str = "cpu", backend: str = "inductor", mode: str | None = None) -> dict[str, object]:
    """One row: ``name``'s eager and compiled steady training img/s, fit seconds, and the largest score difference."""
    resolved = str(resolve_device(device))
    train = throughput.random_images((steps + 1) * batch_size, channels, image_size)
    test = throughput.random_images(2 * batch_size, channels, image_size, seed=1).float_images()
    eager, _ = throughput.build(name, image_size, channels, resolved, batch_size, {})
    eager_rate, eager_fit, eager_scores = _fit_and_score(eager, train, test.to(resolved), batch_size)
    compiled, _ = throughput.build(name, image_size, channels, resolved, batch_size, {})
    for module in compiled.networks().values():
        module.compile(backend=backend, mode=mode)
    compiled_rate, compiled_fit, compiled_scores = _fit_and_score(compiled, train, test.to(resolved), batch_size)
    torch._dynamo.reset()  # the next detector compiles afresh
    return {"detector": name, "backend": backend, "mode": mode or "default",
            "eager_img_per_s": eager_rate, "compiled_img_per_s": compiled_rate,
            "speedup": compiled_rate / eager_rate, "eager_fit_s": eager_fit, "compiled_fit_s": compiled_fit,
            "max_score_diff": float((compiled_scores - eager_scores).abs().max()),
            "max_abs_score": float(eager_scores.abs().max())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--detectors", default="ae,ganomaly,f-anogan,multi-kd,sure-roi,coronet,proxyano,mama-net")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per phase")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--mode", default=None, help="torch.compile mode: reduce-overhead (CUDA graphs), max-autotune...")
    args = parser.parse_args(argv)
    import pandas as pd

    rows = [compare_compiled(name, image_size=args.image_size, channels=args.channels, batch_size=args.batch_size,
                             steps=args.steps, device=args.device, backend=args.backend, mode=args.mode)
            for name in args.detectors.split(",")]
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
