"""Near duplicates in a real download: the distribution of dHash distances over all pairs, and contact sheets of pairs at each distance.

    python benchmarks/near_duplicates.py br35h --data-root DIR --out DIR [--against brain-tumor-mri]
                                        [--subset default] [--per-distance 9] [--max-distance 16] [--seed 0]

Hashes every image of the subset exactly as the split's near-duplicate guard does (the adapter's 64 px grey
thumbnails, 256-bit dHash, each image against the other as is, flipped left-right, flipped upside down and turned
half round: :mod:`medad.datasets.splits`) and writes under ``--out``:

- ``histogram.csv``: per distance 0..64 the number of pairs at that smallest distance, how many of them are close
  as is, the pairs whose two images carry the same label and the pairs across labels (a tumour image and a normal
  one cannot be copies: the cross-label pairs show where different patients' images begin), and the byte- and
  pixel-identical pairs; ``histogram.png`` draws it.
- ``sheet_dNN.png`` for NN = 0..``--max-distance``: ``--per-distance`` pairs drawn at random at that distance, each
  as the first image, the second brought to the first's orientation, and their absolute difference (x2), labelled
  with the distance, the transform, the Pearson correlation of the 32 px thumbnails (``r32``; 1 = the same picture
  up to a linear contrast change), ``BYTES``/``PIXELS`` when identical, ``grouped`` when the guard's default
  distance accepts the pair, and the two files.

``--against NAME`` measures the pairs between the two datasets instead (Br35H re-uses Brain Tumor MRI's images).
The sheets hold pictures of the download: keep them out of the repository (the licences do not allow it).

Measured on the genuine downloads (Br35H from its author's GitHub, 3000 images; Head-CT, 200; Brain Tumor MRI,
253), with the defaults (9 pairs a distance, 0..16; 0..20 for the two small sets):

- Br35H, 4 498 500 pairs; at 0..16 bits 1194, 1721, 2037, 1891, 1726, 1586, 1437, 1295, 1285, 1314, 1293, 1385,
  1411, 1235, 1104, 1006, 937 pairs, of them close as is 153, 256, 399, 383, 391, 346, 338, 318, 330, 312, 318,
  329, 345, 310, 287, 281, 251; no pair across labels below 31 bits. 1 byte-identical pair. Sheets: at 0..14 bits
  every pair is one slice saved again (mirrored, turned half round, contrast or gamma changed, rescaled, slightly
  shifted or zoomed); at 15-16 a few are the slice in another sequence; within 8 bits r32 >= 0.922, and the 15
  lowest are one tumour slice under a strong contrast change.
- Head-CT, 19 900 pairs: 1 at 0 bits (188/189, pixel-identical files), 7, 11, 12 (one scan shifted or cropped),
  16, 19 (neighbouring slices of one patient); across labels from 36 bits.
- Brain Tumor MRI, 31 878 pairs: 29 at 0 (byte-identical), 4, 3, 2, 7, 3, 1 at 1..6, 2, 4, 2 at 9..11, 1, 1, 1 at
  17..19, all copies (rescaled, re-encoded, shifted); across labels from 44 bits.
- Br35H x Brain Tumor MRI, 759 000 pairs: 226 byte-identical; at 0..8 bits 403, 288, 279, 286, 289, 262, 223,
  203, 194 pairs; across labels from 37 bits.

What the guard concludes from these is in :mod:`medad.datasets.splits`.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

TILE = 112          # px of each picture on a sheet
COLUMNS = 3         # pairs per sheet row
MAX_HISTOGRAM = 64  # distances tabulated


def load(name: str, data_root: Path, subset: str) -> dict:
    """The subset's records and what the guard hashes (thumbnails, pixel and file digests), as the split reads them."""
    from medad.registry import DATASETS

    dataset = DATASETS.get(name)(root=data_root / name, image_size=64)
    records = dataset.records()
    view, view_records, position = dataset.view_of(subset, records)
    chosen = dataset.select(subset, records)
    index = np.array([position[r.id] for r in chosen], dtype=np.int64)
    hashed = dataset.hash_inputs(view, view_records)
    return {"dataset": dataset, "records": chosen, "labels": np.array([r.label for r in chosen]),
            **{key: value[index] for key, value in hashed.items()}}


def distances(first: np.ndarray, second: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(smallest dHash distance, its transform, distance as is) between every thumbnail of ``first`` and of ``second``
    (None: ``first`` itself), one image taken under each of the guard's transforms (ties go to the lowest transform).
    Within one set both images of a pair take a turn at being transformed, as in the guard."""
    from medad.datasets.splits import TRANSFORMS, dhash, transformed

    hashes = dhash(first)
    per_transform = []
    for transform in range(len(TRANSFORMS)):
        other = dhash(transformed(first if second is None else second, transform))
        rows = [np.bitwise_count(hashes[start:start + 256, None] ^ other[None]).sum(-1).astype(np.int16)
                for start in range(0, len(hashes), 256)]
        per_transform.append(np.concatenate(rows))
    stack = np.stack(per_transform)
    if second is None:
        stack = np.minimum(stack, stack.transpose(0, 2, 1))
    return stack.min(0), stack.argmin(0), stack[0]


def correlations(first: np.ndarray, second: np.ndarray, i: np.ndarray, j: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Pearson correlation of the 32 px thumbnails of pairs (i, j), the second under its matching transform."""
    from medad.datasets.splits import transformed

    def small(thumbs: np.ndarray) -> np.ndarray:
        return F.interpolate(torch.from_numpy(thumbs).float(), size=32, mode="area")[:, 0].numpy()

    a = small(first[i]).reshape(len(i), -1)
    b = np.stack([transformed(image, int(t)) for image, t in zip(small(second[j]), transform)]).reshape(len(j), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1) + 1e-9)


def same_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise equality of (N, 32) uint8 digests (compared as four 64-bit words)."""
    return np.all(a.view(np.uint64) == b.view(np.uint64), axis=-1)


def pair_table(first: dict, second: dict | None) -> dict[str, np.ndarray]:
    """Every pair (i < j within one dataset, or every i of ``first`` with every j of ``second``) with its distance,
    transform, as-is distance, same-label flag and byte/pixel identity."""
    other = first if second is None else second
    smallest, transform, as_is = distances(first["thumbs"], None if second is None else second["thumbs"])
    if second is None:
        i, j = np.triu_indices(len(first["thumbs"]), 1)
    else:
        i, j = (grid.ravel() for grid in np.indices(smallest.shape))
    return {"i": i, "j": j, "distance": smallest[i, j], "transform": transform[i, j], "as_is": as_is[i, j],
            "same_label": first["labels"][i] == other["labels"][j],
            "bytes": same_rows(first["files"][i], other["files"][j]),
            "pixels": same_rows(first["pixels"][i], other["pixels"][j])}


def histogram(pairs: dict[str, np.ndarray]) -> list[dict[str, int]]:
    rows = []
    for distance in range(MAX_HISTOGRAM + 1):
        at = pairs["distance"] == distance
        rows.append({"distance": distance, "pairs": int(at.sum()), "close_as_is": int((at & (pairs["as_is"] == distance)).sum()),
                     "same_label": int((at & pairs["same_label"]).sum()), "cross_label": int((at & ~pairs["same_label"]).sum()),
                     "byte_identical": int((at & pairs["bytes"]).sum()), "pixel_identical": int((at & pairs["pixels"]).sum())})
    return rows


def plot_histogram(rows: list[dict[str, int]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    distance = [r["distance"] for r in rows]
    figure, axis = plt.subplots(figsize=(8, 3.2))
    axis.bar(distance, [r["same_label"] for r in rows], label="same label", color="#4477aa")
    axis.bar(distance, [r["cross_label"] for r in rows], bottom=[r["same_label"] for r in rows], label="across labels",
             color="#ee6677")
    axis.plot(distance, [r["close_as_is"] for r in rows], "k.", label="close as is (no flip or turn)")
    axis.set(yscale="symlog", xlabel="dHash distance (bits of 256), smallest over the transforms", ylabel="pairs", title=title)
    axis.legend(frameon=False, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def picture(data: dict, index: int) -> np.ndarray:
    from medad.datasets import io

    dataset, record = data["dataset"], data["records"][index]
    pixels = io.read_image(dataset.data_root() / record.path)
    top, left, height, width = dataset.crop_for(record, pixels)
    planes = io.to_channels(pixels[top:top + height, left:left + width], 1)
    return io.to_uint8(io.resize(planes, TILE, "stretch"))[0]


def contact_sheet(first: dict, second: dict, pairs: dict[str, np.ndarray], picks: np.ndarray, r32: np.ndarray,
                  guard_distance: int, path: Path) -> None:
    """The pairs ``picks``: first image, second image under its matching transform, |difference| x 2, and labels."""
    from PIL import Image, ImageDraw, ImageFont

    from medad.datasets.splits import TRANSFORMS, transformed

    font = ImageFont.load_default(size=11)
    rows = max(1, -(-len(picks) // COLUMNS))
    sheet = Image.new("L", (COLUMNS * (3 * TILE + 12), rows * (TILE + 30)), 40)
    draw = ImageDraw.Draw(sheet)
    for slot, (pick, r) in enumerate(zip(picks, r32)):
        i, j, transform = int(pairs["i"][pick]), int(pairs["j"][pick]), int(pairs["transform"][pick])
        a, b = picture(first, i), transformed(picture(second, j), transform)
        difference = np.clip(np.abs(a.astype(int) - b.astype(int)) * 2, 0, 255).astype(np.uint8)
        x, y = (slot % COLUMNS) * (3 * TILE + 12), (slot // COLUMNS) * (TILE + 30)
        for k, tile in enumerate((a, b, difference)):
            sheet.paste(Image.fromarray(tile), (x + k * TILE, y))
        distance = int(pairs["distance"][pick])
        flags = [name for name, key in (("BYTES", "bytes"), ("PIXELS", "pixels")) if pairs[key][pick]]
        flags += ["grouped"] if distance <= guard_distance else []
        draw.text((x + 2, y + TILE + 1), f"d={distance} {TRANSFORMS[transform]} r32={r:.3f} {' '.join(flags)}",
                  fill=255, font=font)
        draw.text((x + 2, y + TILE + 14), f"{first['records'][i].id} | {second['records'][j].id}", fill=200, font=font)
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--data-root", type=Path, required=True, help="the folder holding <dataset>/ (as for medad run)")
    parser.add_argument("--out", type=Path, required=True, help="where the CSV and PNGs go (not the repository)")
    parser.add_argument("--against", help="a second dataset: measure the pairs between the two instead")
    parser.add_argument("--subset", default="default")
    parser.add_argument("--per-distance", type=int, default=9)
    parser.add_argument("--max-distance", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    first = load(args.dataset, args.data_root, args.subset)
    second = None if args.against is None else load(args.against, args.data_root, "default")
    pairs = pair_table(first, second)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = histogram(pairs)
    with open(args.out / "histogram.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    title = args.dataset + (f" x {args.against}" if args.against else "")
    plot_histogram(rows, title, args.out / "histogram.png")
    guard_distance = first["dataset"].duplicate_distance
    cross = pairs["distance"][~pairs["same_label"]]
    print(f"{title}: {len(pairs['i'])} pairs; byte-identical {int(pairs['bytes'].sum())}, pixel-identical "
          f"{int(pairs['pixels'].sum())}; smallest distance across labels {int(cross.min()) if len(cross) else '-'}")
    shown = rows[:args.max_distance + 1]
    print(f"pairs at distance 0..{args.max_distance}: {[r['pairs'] for r in shown]}")
    print(f"  of them close as is:  {[r['close_as_is'] for r in shown]}")
    print(f"  across labels:        {[r['cross_label'] for r in shown]}")
    rng = np.random.default_rng(args.seed)
    other = first if second is None else second
    for distance in range(args.max_distance + 1):
        at = np.flatnonzero(pairs["distance"] == distance)
        if not len(at):
            continue
        picks = np.sort(rng.choice(at, min(args.per_distance, len(at)), replace=False))
        r32 = correlations(first["thumbs"], other["thumbs"], pairs["i"][picks], pairs["j"][picks], pairs["transform"][picks])
        contact_sheet(first, other, pairs, picks, r32, guard_distance, args.out / f"sheet_d{distance:02d}.png")
    close = np.flatnonzero(pairs["distance"] <= guard_distance)
    r32 = correlations(first["thumbs"], other["thumbs"], pairs["i"][close], pairs["j"][close], pairs["transform"][close])
    if len(close):
        print(f"pairs within the guard's {guard_distance} bits: {len(close)}, r32 min {r32.min():.3f}, 1% {np.quantile(r32, 0.01):.3f}; "
              f"the lowest 15 on lowest_r32.png")
        lowest = close[np.argsort(r32)[:15]]
        contact_sheet(first, other, pairs, lowest, np.sort(r32)[:15], guard_distance, args.out / "lowest_r32.png")


if __name__ == "__main__":
    main()
