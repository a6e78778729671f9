#!/usr/bin/env python
"""PatchCore's fit under its memory cap: peak resident memory at a training-set size, against ``memory_cap_mb``.

    python benchmarks/patchcore_memory.py --images 1200 --memory-cap-mb 1024                  # Br35H's size
    python benchmarks/patchcore_memory.py --images 26315 --memory-cap-mb 512 --coreset-fraction 0.01 --width-divisor 4

The images are synthetic (uniform noise, uint8, one channel; the count and size are what matter for memory), held
in memory before the fit as the harness holds a training set. The detector is built with random backbone weights
(no download) and fitted once; a thread samples the process's resident set size every 20 ms
(:class:`medad.benchmark.resources.PeakMemory`). Printed and written as JSON (``--out``): the patch features a
single selection over all patches would hold (what the cap avoids), the fit's memory plan (chunk, chunks, bank
rows, the bytes it plans to hold), the resident memory before the fit and its peak during the fit, the growth
(peak - before) against the cap, and the fit's seconds. On CUDA (``--device cuda``) the device's peak allocation is
what the cap bounds and is reported too.

``--width-divisor 4`` narrows WideResNet-50-2 (16 x fewer multiply-adds) to make OCT's 26,315 images affordable on a
CPU; the patch features stay ``--target-dim`` (1024) wide, so the bank, the chunks and their projections (what the
cap governs) are as large as the full network's; the narrower network's own weights and activations are smaller.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medad.benchmark.resources import PeakMemory, _rss_mb
from medad.datasets.base import ImageSet
from medad.detectors.patchcore import PatchCoreDetector


def synthetic_images(count: int, size: int, seed: int = 0) -> ImageSet:
    """``count`` uint8 noise images ``(count, 1, size, size)``, made in slices (no float copy of the whole set)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.empty(count, 1, size, size, dtype=torch.uint8)
    for start in range(0, count, 1024):
        stop = min(count, start + 1024)
        images[start:stop] = torch.randint(0, 256, (stop - start, 1, size, size), dtype=torch.uint8, generator=generator)
    return ImageSet(images=images, labels=np.full(count, -1), ids=[f"s{i}" for i in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--memory-cap-mb", type=float, default=1024.0)
    parser.add_argument("--coreset-fraction", type=float, default=0.1)
    parser.add_argument("--width-divisor", type=int, default=1)
    parser.add_argument("--target-dim", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train = synthetic_images(args.images, args.image_size)
    detector = PatchCoreDetector(image_size=args.image_size, channels=1, device=str(device), weights="random",
                                 width_divisor=args.width_divisor, target_dim=args.target_dim,
                                 coreset_fraction=args.coreset_fraction, batch_size=args.batch_size,
                                 memory_cap_mb=args.memory_cap_mb)
    before = _rss_mb()
    started = time.perf_counter()
    with PeakMemory(device, interval_s=0.02) as peak:
        detector.fit(train)
    seconds = time.perf_counter() - started
    plan = detector.plan
    patches = plan.total
    result = {
        "images": args.images, "image_size": args.image_size, "device": str(device), "threads": torch.get_num_threads(),
        "backbone": f"wide_resnet50_2 (random weights, width_divisor {args.width_divisor})",
        "coreset_fraction": args.coreset_fraction, "patches": patches, "feature_dim": int(detector.bank.shape[1]),
        "all_patch_features_mb": round(patches * detector.bank.shape[1] * 4 / 2**20, 1),
        "memory_cap_mb": args.memory_cap_mb, "chunk_patches": plan.chunk, "chunks": plan.chunks,
        "bank_rows": plan.bank_rows, "bank_mb": round(plan.bank_rows * detector.bank.shape[1] * 4 / 2**20, 1),
        "planned_mb": round(plan.bytes / 2**20, 1), "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak.rss_mb, 1), "growth_mb": round(peak.rss_mb - before, 1),
        "peak_gpu_mb": None if device.type != "cuda" else round(peak.gpu_mb, 1),
        "within_cap": (peak.rss_mb - before if device.type == "cpu" else peak.gpu_mb) <= args.memory_cap_mb,
        "fit_s": round(seconds, 1), "coreset_radius_max": float(detector.radii.max()),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
