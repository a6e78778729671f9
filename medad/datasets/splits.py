"""Seeded, group-aware splits and the near-duplicate guard.

Every image belongs to a *group*: the images of one patient, and images that are exact or near
duplicates of each other. A group never straddles train/val and test. Near duplicates are found
with a difference hash (dHash; Krawetz 2013): the signs of horizontal neighbour differences on a
16 x 17 grid of a 64 px grey thumbnail (256 bits), compared by Hamming distance between one image
and each :data:`TRANSFORMS` of the other (as is, flipped left-right, flipped upside down, turned
half round). dHash only depends on the order of neighbouring pixels, so a monotone contrast change,
a re-encoding or a rescaling keeps most bits. Two images within ``duplicate_distance`` bits
(default 8) are a close pair.

Near-duplicate groups are formed by *complete linkage* (:func:`duplicate_groups`): two groups merge
only when every image of one is within the distance of every image of the other, so a chain of
merely similar images (a near b, b near c, a far from c) never becomes one group; joining images
transitively (union-find over all close pairs) turned 1500 distinct but similar-looking images
into a group of 563 and moved hundreds of normals into the test set. A group is also capped in
size (:data:`MAX_DUPLICATE_GROUP`); a merge the cap refuses is counted and reported. Patient
groups are joined as they are (one patient's images belong together by definition). The pairs
inside the groups are told apart by :func:`copy_counts`: exact copies (the same decoded pixels,
byte-identical or not), copies close only flipped or turned, and other near copies.

The rule was measured on the genuine downloads (``benchmarks/near_duplicates.py`` draws the
distance histogram and contact sheets of pairs at each distance; r32 below is the Pearson
correlation of 32 px thumbnails, the second brought to the first's orientation):

- Br35H (3000 images, 4 498 500 pairs): pairs at 0..16 bits: 1194, 1721, 2037, 1891, 1726, 1586,
  1437, 1295, 1285, 1314, 1293, 1385, 1411, 1235, 1104, 1006, 937; of them close as is (no flip or
  turn) 153, 256, 399, 383, 391, 346, 338, 318, 330, ... Every pair up to 30 bits joins two images
  of one class; the first tumour/normal pair, necessarily two different patients, is at 31 bits.
  Each pair sampled at 0..14 bits (9 a distance) is one slice saved again: mirrored, turned half
  round, contrast- or gamma-changed, rescaled (copies at 222 x 227 and 417 x 428 px), slightly
  shifted or zoomed; at 15-16 bits a few are the same slice in another sequence or position
  (yes/y234.jpg, yes/y1211.jpg); most pairs at 24 bits are still copies, and different slices
  appear from about 30 bits. The 15 pairs within 8 bits with the lowest r32 (0.922-0.932) are one
  tumour slice under a strong contrast change. Only 1 pair is byte-identical (no/no355.jpg,
  no/no532.jpg). The half turn finds 3585 more pairs within 8 bits (283 at 0; 14 172 against
  10 587 with the flips alone), all copies on the sheets; quarter turns and transposes find none.
  One slice has 51 mutual near copies (no/no380.jpg, no/no887.jpg, ...; checked one by one), hence
  the cap of 64: a cap of 16 refused 1842 merges of genuine copies (279 without the half turn),
  which the split could then put on both sides.
- Brain Tumor MRI (253 images): 29 byte-identical pairs, then 4, 3, 2, 7, 3, 1 pairs at 1..6 bits
  and 2, 4, 2 at 9..11 (all rescaled or re-encoded copies, r32 >= 0.999), 1 each at 17..19
  (shifted or zoomed copies); the first yes/no pair is at 44 bits.
- Head-CT (200 images): 188.png/189.png the same pixels in two files; 7, 11 and 12 bits the same
  scan slightly shifted or cropped (011/061, 198/199, 105/187); 16 and 19 bits neighbouring slices
  of one patient (012/030, 171/172); the first hemorrhage/normal pair is at 36 bits.
- Br35H x Brain Tumor MRI (759 000 pairs): 226 byte-identical pairs, 403 pairs at 0 bits, 2427
  within 8; none across labels below 37 bits.

So within 8 bits every pair seen is a copy (precision 1 on 9 random pairs at each of 0..8 bits and on
the 15 least correlated, in all three downloads), and different patients start at 31 bits or more. The
distance stays at 8 although copies reach 20-24 bits (recall is not complete: Br35H holds 2796
images in 364 groups at 16 bits against 2625 in 530 at 8; of its pairs at 9-16 and 17-24 bits,
4139 and 877 have r32 >= 0.99, none across labels) because similar-looking but distinct
images (a shared scanner background, tests' ``similar_looking`` phantoms) reach 6-30 bits; a
second check (r32) does not separate them either (such pairs reach r32 0.987 while copies under a
gamma change fall to 0.92), so none is used. dHash is sensitive to crops: on 128 px phantom
slices a 1 px crop a side (resized back) moves 3-8 bits, 2 px 15-22 bits. Raise
``duplicate_distance`` towards 16 for a download known to hold shifted or zoomed copies.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


class UnionFind:
    """Disjoint sets over ``0..n-1``."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)

    def labels(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


def dhash(images: np.ndarray, hash_size: int = 16) -> np.ndarray:
    """Difference hashes of uint8 ``(N, C, H, W)`` images as ``(N, hash_size**2 / 64)`` uint64 words."""
    grey = torch.from_numpy(np.asarray(images, dtype=np.float32).mean(axis=1, keepdims=True))
    small = F.interpolate(grey, size=(hash_size, hash_size + 1), mode="area")[:, 0]
    bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(images), -1).numpy()
    packed = np.packbits(bits, axis=1)
    return packed.view(np.uint64) if packed.shape[1] % 8 == 0 else np.pad(packed, ((0, 0), (0, -packed.shape[1] % 8))).view(np.uint64)


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(a ^ b).sum(axis=-1)


# Near-duplicate groups larger than this are not formed: Br35H holds 51 mutual near copies of one slice (docstring).
MAX_DUPLICATE_GROUP = 64


# What a copy is looked for as: the image itself, its mirror images and its half turn (both flips); ``transform`` in a
# match is an index into this tuple. Quarter turns found no further copy in the real downloads (module docstring).
TRANSFORMS = ("as is", "flipped left-right", "flipped upside down", "rotated 180 degrees")


def transformed(images: np.ndarray, transform: int) -> np.ndarray:
    """``(..., H, W)`` images under :data:`TRANSFORMS` ``[transform]``."""
    views = (images, images[..., ::-1], images[..., ::-1, :], images[..., ::-1, ::-1])
    return np.ascontiguousarray(views[transform])


def near_duplicate_pairs(images: np.ndarray, max_distance: int, hash_size: int = 16) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose dHash (or that of a flipped or rotated copy of j) differs in at most ``max_distance`` bits."""
    return [(i, j) for i, j, _, _ in near_duplicate_matches(images, max_distance, hash_size)]


def near_duplicate_distances(images: np.ndarray, max_distance: int, hash_size: int = 16) -> list[tuple[int, int, int]]:
    """(i, j, distance) of :func:`near_duplicate_matches`."""
    return [(i, j, d) for i, j, d, _ in near_duplicate_matches(images, max_distance, hash_size)]


def near_duplicate_matches(images: np.ndarray, max_distance: int, hash_size: int = 16) -> list[tuple[int, int, int, int]]:
    """(i, j, distance, transform) for i < j whose dHashes differ in at most ``max_distance`` bits, one image taken
    as is or under a :data:`TRANSFORMS` entry; the distance is the smallest over them, ``transform`` is 0 when
    the pair is close as is, else the transform of the smallest distance.

    Pigeonhole search (multi-index hashing; Norouzi et al., CVPR 2012): cut the hash into
    ``max_distance + 1`` pieces; two hashes within the distance agree exactly on at least one
    piece, so only images sharing a piece are compared. Linear in N for distinct images.
    """
    if len(images) < 2:
        return []
    hashes = dhash(images, hash_size)
    bits = np.unpackbits(hashes.view(np.uint8), axis=1).astype(np.int64)
    pieces = np.array_split(np.arange(bits.shape[1]), max_distance + 1)
    found = []
    for transform in range(len(TRANSFORMS)):
        other = hashes if transform == 0 else dhash(transformed(images, transform), hash_size)
        other_bits = bits if transform == 0 else np.unpackbits(other.view(np.uint8), axis=1).astype(np.int64)
        for piece in pieces:
            weights = np.left_shift(1, np.arange(len(piece), dtype=np.int64))
            keys, other_keys = bits[:, piece] @ weights, other_bits[:, piece] @ weights
            order = np.argsort(keys, kind="stable")
            low = np.searchsorted(keys[order], other_keys, "left")
            counts = np.searchsorted(keys[order], other_keys, "right") - low
            right = np.repeat(np.arange(len(images)), counts)
            offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            left = order[np.repeat(low, counts) + offsets]
            keep = left != right
            left, right = left[keep], right[keep]
            distance = _hamming(hashes[left], other[right])
            close = distance <= max_distance
            found.append(np.stack([np.minimum(left, right)[close], np.maximum(left, right)[close], distance[close],
                                   np.full(int(close.sum()), transform)], axis=1))
    rows = np.concatenate(found)
    if not len(rows):
        return []
    rows = rows[np.lexsort((rows[:, 3], rows[:, 2], rows[:, 1], rows[:, 0]))]  # by pair, smallest distance first
    first = np.r_[True, np.any(rows[1:, :2] != rows[:-1, :2], axis=1)]
    key = rows[:, 0] * len(images) + rows[:, 1]
    best = rows[first]
    best[np.isin(key[first], key[rows[:, 3] == 0]), 3] = 0
    return [(int(i), int(j), int(d), int(t)) for i, j, d, t in best]


@dataclass
class DuplicateGroups:
    """Near-duplicate groups by complete linkage: ``labels`` (a group id per image) and what was formed."""

    labels: np.ndarray
    pairs: int          # close pairs found
    refused_by_cap: int  # merges the size cap refused

    def sizes(self) -> list[int]:
        """Sizes of the groups with more than one image, largest first."""
        counts = np.bincount(self.labels) if len(self.labels) else np.zeros(0, int)
        return sorted((int(c) for c in counts if c > 1), reverse=True)


def duplicate_groups(n: int, close: list[tuple[int, int, int]], max_group: int = MAX_DUPLICATE_GROUP) -> DuplicateGroups:
    """Complete-linkage groups over ``close`` (i, j, distance) pairs: closest pairs first, two groups merge
    only when every cross pair is close and the merged group has at most ``max_group`` images."""
    near = {(pair[0], pair[1]) for pair in close}
    members = {i: [i] for i in range(n)}
    group_of = list(range(n))
    refused = 0
    for i, j, *_ in sorted(close, key=lambda pair: (pair[2], pair[0], pair[1])):
        a, b = group_of[i], group_of[j]
        if a == b:
            continue
        if not all((min(x, y), max(x, y)) in near for x in members[a] for y in members[b]):
            continue
        if len(members[a]) + len(members[b]) > max_group:
            refused += 1
            continue
        keep, drop = min(a, b), max(a, b)
        for item in members[drop]:
            group_of[item] = keep
        members[keep] += members.pop(drop)
    return DuplicateGroups(np.array(group_of, dtype=np.int64), len(close), refused)


@dataclass
class CopyCounts:
    """What the pairs inside the near-duplicate groups are, each pair counted once, in the first class it fits:
    ``exact`` (the same decoded pixels; ``byte_identical`` of them also the same file bytes), ``transformed`` (close
    only as a flipped or rotated copy), ``near`` (close as is: re-encoded, resized, slightly cropped or contrast
    changed). ``examples`` holds one (i, j) pair per class that has any."""

    exact: int = 0
    byte_identical: int = 0
    transformed: int = 0
    near: int = 0
    examples: dict[str, tuple[int, int]] = field(default_factory=dict)


def copy_counts(labels: np.ndarray, matches: list[tuple[int, int, int, int]], pixel_digests: np.ndarray,
                file_digests: np.ndarray) -> CopyCounts:
    """Classify the :func:`near_duplicate_matches` pairs that ended up in one group (``labels`` from
    :func:`duplicate_groups`); ``pixel_digests``/``file_digests`` are one row per image (equal rows = equal content)."""
    counts = CopyCounts()
    for i, j, _, transform in matches:
        if labels[i] != labels[j]:
            continue
        if np.array_equal(pixel_digests[i], pixel_digests[j]):
            kind = "exact"
            counts.byte_identical += bool(np.array_equal(file_digests[i], file_digests[j]))
        else:
            kind = "transformed" if transform else "near"
        setattr(counts, kind, getattr(counts, kind) + 1)
        counts.examples.setdefault(kind, (i, j))
    return counts


def group_labels(n: int, keys: list[str], pairs: list[tuple[int, int]] = (),
                 duplicates: np.ndarray | None = None) -> np.ndarray:
    """A group id per item: items sharing a non-empty key (a patient), joined by a pair, or sharing a
    ``duplicates`` label (from :func:`duplicate_groups`) share a group."""
    union = UnionFind(n)
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        if key:
            union.union(index, first.setdefault(key, index))
    for i, j in pairs:
        union.union(i, j)
    if duplicates is not None:
        leader: dict[int, int] = {}
        for index, label in enumerate(duplicates.tolist()):
            union.union(index, leader.setdefault(label, index))
    return union.labels()


def split_fingerprint(ids: list[str], parts: list[str], source: str = "") -> str:
    """A short hash of which sample went to which part, and of ``source`` (what the images are: the files'
    fingerprint, a generator's parameters): equal fingerprints mean the same images in the same parts."""
    digest = hashlib.sha1(source.encode("utf-8", "surrogateescape"))
    for sample_id, part in sorted(zip(ids, parts)):
        digest.update(f"{sample_id}\0{part}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def _fill(groups: list[np.ndarray], target: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Take whole groups, in order, while they fit in ``target`` items: (taken, left)."""
    taken, left, room = [], [], target
    for members in groups:
        if 0 < len(members) <= room:
            taken.append(members)
            room -= len(members)
        else:
            left.append(members)
    return taken, left


def _groups_of(indices: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """The items of ``indices`` bunched by group label, groups in seeded random order."""
    indices = np.asarray(indices, dtype=np.int64)
    order = np.unique(labels[indices]) if len(indices) else np.array([], dtype=np.int64)
    bunches = [indices[labels[indices] == g] for g in order]
    return [bunches[i] for i in rng.permutation(len(bunches))]


def _flat(groups: list[np.ndarray]) -> list[int]:
    return [int(i) for members in groups for i in members]


@dataclass
class SplitPlan:
    """How a subset's records are split; counts are images, fractions of the normals they apply to.

    ``publisher_parts`` (one of ``train``/``val``/``test``/"" per record) keeps a published split:
    published train anomalies become anomaly-pool candidates, published test images the test set.
    """

    seed: int
    test_normal_fraction: float = 0.2
    val_fraction: float = 0.1
    n_anomaly_pool: int = 0
    strict_groups: bool = True


def assign_parts(labels: np.ndarray, groups: np.ndarray, publisher_parts: list[str], plan: SplitPlan) -> list[str]:
    """The part of every record: ``train``, ``val``, ``test``, ``anomaly_pool`` or ``unused``.

    Without a published split: anomalies go to the test set except ``n_anomaly_pool`` of them (whole
    groups with no image in the test set, at most half of the anomalies); ``round(test_normal_fraction * normals)`` normals go to
    the test set as whole groups (exactly that many when singletons allow), the rest are training
    normals, of which ``val_fraction`` (whole groups) become the validation set. With
    ``strict_groups``, a normal that shares a group with a test anomaly goes to the test set too.
    A published train image whose group reaches the test set is dropped (``unused``), so no group
    is on both sides.
    """
    rng = np.random.default_rng(plan.seed)
    n = len(labels)
    parts = [""] * n
    labels = np.asarray(labels)
    published = any(publisher_parts)
    anomalies = np.flatnonzero(labels == 1)
    normals = np.flatnonzero(labels == 0)

    if published:
        test = {i for i in range(n) if publisher_parts[i] == "test"}
        pool_candidates = [i for i in anomalies if publisher_parts[i] in ("train", "val")]
        train_candidates = [i for i in normals if publisher_parts[i] in ("train", "val")]
        val_fixed = [i for i in normals if publisher_parts[i] == "val"]
        test_groups = {groups[i] for i in test}
        pool_groups = _groups_of(np.array([i for i in pool_candidates if groups[i] not in test_groups], dtype=np.int64), groups, rng)
        pool, _ = _fill(pool_groups, plan.n_anomaly_pool)
        for i in range(n):
            parts[i] = "test" if i in test else "unused"
        for i in _flat(pool):
            parts[i] = "anomaly_pool"
        kept = np.array([i for i in train_candidates if groups[i] not in test_groups], dtype=np.int64)
        if val_fixed:
            val_set = {i for i in val_fixed if groups[i] not in test_groups}
            train_set = [i for i in kept if i not in val_set]
            for i in train_set:
                parts[i] = "train"
            for i in val_set:
                parts[i] = "val"
            return parts
        _split_train_val(kept, groups, plan.val_fraction, rng, parts)
        return parts

    anomaly_groups = _groups_of(anomalies, groups, rng)
    normal_group_ids = set(groups[normals].tolist())
    pure = [g for g in anomaly_groups if groups[g[0]] not in normal_group_ids or not plan.strict_groups]
    # the pool never takes more than half of the anomalies: the test set keeps most of them
    pool, _ = _fill(pure, min(plan.n_anomaly_pool, len(anomalies) // 2))
    pool_items = set(_flat(pool))
    for i in anomalies:
        parts[i] = "anomaly_pool" if i in pool_items else "test"
    test_anomaly_groups = {groups[i] for i in anomalies if parts[i] == "test"} if plan.strict_groups else set()
    normal_groups = _groups_of(normals, groups, rng)
    forced = [g for g in normal_groups if groups[g[0]] in test_anomaly_groups]
    free = [g for g in normal_groups if groups[g[0]] not in test_anomaly_groups]
    n_test = int(round(plan.test_normal_fraction * len(normals)))
    n_forced = sum(len(g) for g in forced)
    test_free, rest = _fill(free, max(0, n_test - n_forced))
    for i in _flat(forced) + _flat(test_free):
        parts[i] = "test"
    _split_train_val(np.array(_flat(rest), dtype=np.int64), groups, plan.val_fraction, rng, parts)
    return parts


def _split_train_val(indices: np.ndarray, groups: np.ndarray, val_fraction: float, rng: np.random.Generator,
                     parts: list[str]) -> None:
    """Mark ``val_fraction`` of ``indices`` (whole groups) as ``val`` and the rest ``train``."""
    bunches = _groups_of(indices, groups, rng)
    val, train = _fill(bunches, int(round(val_fraction * len(indices))))
    for i in _flat(train):
        parts[i] = "train"
    for i in _flat(val):
        parts[i] = "val"
