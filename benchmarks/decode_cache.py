"""Decode-cache speed-up: load a fake Br35H download twice (first decodes and stores, second reads the cache).

    python benchmarks/decode_cache.py [--images 300] [--side 512] [--image-size 128]

Writes a Br35H-like layout of ``--images`` JPEGs (``--side`` px, half ``yes/``, half ``no/``) in a
temporary folder, then times ``Br35H.load`` with an empty cache, with the cache filled, and with
``MEDAD_NO_CACHE=1``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_layout(root: Path, images: int, side: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(images):
        folder, name = ("yes", f"y{index // 2}.jpg") if index % 2 else ("no", f"no{index // 2}.jpg")
        coarse = rng.integers(0, 256, (side // 16, side // 16)).astype(np.uint8)
        pixels = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BILINEAR))
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.dstack([pixels] * 3)).save(root / folder / name, quality=90)


def timed_load(root: Path, image_size: int) -> float:
    from medad.datasets.yes_no import Br35H

    started = time.perf_counter()
    Br35H(root=root, image_size=image_size).load("default")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import medad.datasets  # noqa: F401  (import every adapter before the clock starts)

    with tempfile.TemporaryDirectory() as folder:
        root, cache = Path(folder) / "br35h", Path(folder) / "cache"
        write_layout(root, args.images, args.side)
        os.environ["MEDAD_CACHE"] = str(cache)
        first = timed_load(root, args.image_size)
        second = timed_load(root, args.image_size)
        os.environ["MEDAD_NO_CACHE"] = "1"
        bypass = timed_load(root, args.image_size)
    print(f"{args.images} JPEGs {args.side}x{args.side} -> {args.image_size}px: first load {first:.2f} s "
          f"(decode + store), second {second:.2f} s (cache hit), --no-cache {bypass:.2f} s; "
          f"speed-up {first / second:.1f}x")


if __name__ == "__main__":
    main()
