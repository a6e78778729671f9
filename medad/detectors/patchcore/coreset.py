"""PatchCore's memory bank: greedy k-center coreset selection on a random projection (Roth et al., CVPR 2022,
Sec. 3.2 and Algorithm 1), streamed over chunks of patch features so that a memory cap holds.

Algorithm 1: given the patch features ``M``, the coreset size ``l`` and a random linear projection
``psi: R^d -> R^d*`` (``d* < d``; by Johnson-Lindenstrauss, distances survive up to a small distortion)::

    M_C <- {m_i}, i drawn at random
    for t in 1 .. l - 1:
        m_i <- argmax_{m in M - M_C} min_{n in M_C} ||psi(m) - psi(n)||_2
        M_C <- M_C + {m_i}

i.e. farthest-first traversal (Gonzalez, 1985), a 2-approximation of the minimax facility location (k-center)
problem: every patch feature lies within the *covering radius* ``r = max_m min_{n in M_C} ||psi(m) - psi(n)||``
of a selected one, and ``r`` is at most twice the smallest radius any ``l`` points achieve. Every selected point was
the farthest from those before it, so no two selected points are closer than ``r``. The memory bank keeps the
selected features at their full dimension (the projection only chooses them).

Streaming (the paper selects from all patches at once): patch features arrive batch by batch; they fill a chunk of
``chunk`` patches (the whole training set when it fits the memory plan, :func:`plan_memory`); each full chunk gets its
own greedy selection (its own random start) of ``max(1, floor(fraction * n))`` patches (anomalib's ``int(n * ratio)``),
written into a bank allocated once at its final size; the chunk's features are then dropped. The union of the
chunks' coresets covers every patch within the largest chunk radius, which is what :class:`StreamingCoreset`
reports. With one chunk this is Algorithm 1 exactly; with several it is the union of Algorithm 1 on each chunk (a
chunk's points are covered by its own centres), a bank of the same size whose radius can be larger than one
selection over all patches would reach; the detector tags such rows.

Choices where the paper is silent:

- the projection: a dense Gaussian matrix with entries N(0, 1/d*) drawn from the detector's seed, ``d*`` = 128
  (the dimension the authors' implementation projects to); 0 or ``d* >= d`` selects in the full space;
- distances: ``||a||^2 - 2 a.b + ||b||^2`` in float32, clamped at 0 (one matrix-vector product per selected point),
  on the device the features are on.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import torch

FLOAT_BYTES = 4


def random_projection(dim: int, projection_dim: int, generator: torch.Generator) -> torch.Tensor | None:
    """A ``(dim, projection_dim)`` Gaussian matrix, entries N(0, 1 / projection_dim); None where there is nothing to
    reduce (``projection_dim`` 0 or at least ``dim``)."""
    if projection_dim <= 0 or projection_dim >= dim:
        return None
    return torch.randn(dim, projection_dim, generator=generator) / math.sqrt(projection_dim)


def greedy_k_center(points: torch.Tensor, count: int, first: int,
                    prune: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Farthest-first traversal of ``points (n, d)`` from row ``first``: the indices ``(count,)`` of the selected rows
    in the order selected, and the covering radius (a 0-d tensor): the largest distance of a row to its nearest
    selected row.

    ``prune`` (default: on the CPU) skips, at each step, the rows that the new centre ``c`` cannot bring closer: a row
    ``x`` whose nearest centre ``c_j`` is at distance ``r_x <= R_j`` (``R_j``: an upper bound of the distances within
    ``c_j``'s cluster) gains nothing when ``||c - c_j|| >= 2 R_j``, since then ``||x - c|| >= ||c - c_j|| - r_x >=
    r_x`` (the triangle inequality). The selection is the same; a CPU, which streams all ``n`` rows from memory at
    every step otherwise, reads only the candidate clusters' rows (when more than half the rows are candidates,
    all are updated at once). Without pruning (the GPU default) every step is one matrix-vector product and
    nothing is read back to the host.
    """
    n = points.shape[0]
    count = min(count, n)
    squares = points.pow(2).sum(dim=1)
    selected = torch.empty(count, dtype=torch.long, device=points.device)
    selected[0] = first
    nearest = torch.empty(n, dtype=points.dtype, device=points.device)
    _squared_distances(points, squares, torch.as_tensor(first, device=points.device), out=nearest)
    if prune if prune is not None else points.device.type == "cpu":
        _pruned_traversal(points, squares, selected, nearest)
        return selected, nearest.max().sqrt()
    distance = torch.empty_like(nearest)
    for step in range(1, count):
        farthest = torch.argmax(nearest)
        selected[step] = farthest
        _squared_distances(points, squares, farthest, out=distance)
        torch.minimum(nearest, distance, out=nearest)
    return selected, nearest.max().sqrt()


def _pruned_traversal(points: torch.Tensor, squares: torch.Tensor, selected: torch.Tensor, nearest: torch.Tensor,
                      refresh: int = 64) -> None:
    """The steps after the first of :func:`greedy_k_center` with pruning: fills ``selected`` and updates ``nearest``
    (squared distances) in place. ``bound[j]`` is a squared upper bound of the distances in cluster ``j`` (exact
    when recomputed every ``refresh`` steps; a row that leaves a cluster only lowers its true value)."""
    count = len(selected)
    centres = torch.empty(count, points.shape[1], dtype=points.dtype)
    centres[0] = points[selected[0]]
    cluster = torch.zeros(len(points), dtype=torch.long)
    bound = torch.zeros(count, dtype=points.dtype)
    bound[0] = nearest.max()
    for step in range(1, count):
        farthest = int(torch.argmax(nearest))
        selected[step] = farthest
        centre = centres[step] = points[farthest]
        gap = (centres[:step] - centre).pow(2).sum(dim=1)       # ||c - c_j||^2
        reachable = gap < 4 * bound[:step]                       # ||c - c_j|| < 2 R_j
        rows = torch.nonzero(reachable[cluster]).squeeze(1)
        if 2 * len(rows) > len(points):                           # most rows are candidates: update them all
            distance = torch.mv(points, centre).mul_(-2).add_(squares).add_(squares[farthest]).clamp_(min=0)
            closer = distance < nearest
            rows, distance = torch.nonzero(closer).squeeze(1), distance[closer]
        else:
            distance = (torch.mv(points[rows], centre).mul_(-2).add_(squares[rows]).add_(squares[farthest])
                        .clamp_(min=0))
            closer = distance < nearest[rows]
            rows, distance = rows[closer], distance[closer]
        nearest[rows] = distance
        cluster[rows] = step
        bound[step] = distance.max() if len(distance) else 0.0
        if step % refresh == 0:  # tighten the bounds: each cluster's largest distance now
            bound.zero_().scatter_reduce_(0, cluster, nearest, reduce="amax")


def _squared_distances(points: torch.Tensor, squares: torch.Tensor, row: torch.Tensor, out: torch.Tensor) -> None:
    """``out[j] = ||points[j] - points[row]||^2`` by the expansion, clamped at 0."""
    torch.mv(points, points[row], out=out)
    out.mul_(-2).add_(squares).add_(squares[row]).clamp_(min=0)


def chunk_sizes(total: int, chunk: int) -> list[int]:
    """``total`` patches cut into chunks of ``chunk`` (the last one shorter)."""
    return [chunk] * (total // chunk) + ([total % chunk] if total % chunk else [])


def coreset_rows(total: int, chunk: int, fraction: float) -> int:
    """The memory bank's rows: ``max(1, floor(fraction * n))`` per chunk of ``n`` patches."""
    return sum(max(1, int(fraction * n)) for n in chunk_sizes(total, chunk))


@dataclass(frozen=True)
class MemoryPlan:
    """How a fit stays under its memory cap: the training patches (``total``), patches per greedy selection
    (``chunk``), the bank's rows and the bytes the plan holds at most (bank + one chunk's features, projection and
    distances + one batch in flight)."""

    total: int
    chunk: int
    chunks: int
    bank_rows: int
    bytes: int


def plan_memory(total: int, patches_per_image: int, dim: int, projection_dim: int, fraction: float,
                batch_bytes: int, cap_bytes: int) -> MemoryPlan:
    """The largest chunk (a whole number of images' patches, at most ``total``) whose plan fits ``cap_bytes``;
    a ValueError saying what the cap would have to be when not even one image's patches fit."""
    per_patch = FLOAT_BYTES * (dim + (projection_dim if 0 < projection_dim < dim else 0) + 3)

    def held(chunk: int) -> int:
        return coreset_rows(total, chunk, fraction) * dim * FLOAT_BYTES + chunk * per_patch + batch_bytes

    chunk = total
    if held(chunk) > cap_bytes:
        bank = (int(fraction * total) + 1) * dim * FLOAT_BYTES
        chunk = max(patches_per_image, (cap_bytes - batch_bytes - bank) // per_patch // patches_per_image * patches_per_image)
        while chunk > patches_per_image and held(chunk) > cap_bytes:
            chunk -= patches_per_image
    if held(chunk) > cap_bytes:
        need = held(chunk)
        raise ValueError(f"memory_cap_mb {cap_bytes / 2**20:.0f} is too small: the memory bank of {total} patches at "
                         f"coreset fraction {fraction:g} holds {coreset_rows(total, chunk, fraction)} x {dim} floats, "
                         f"and with one image's patches and one batch the fit needs at least {need / 2**20:.0f} MB. "
                         f"Raise memory_cap_mb, or lower coreset_fraction (the paper's 0.01), batch_size or image_size.")
    return MemoryPlan(total, chunk, len(chunk_sizes(total, chunk)), coreset_rows(total, chunk, fraction), held(chunk))


class StreamingCoreset:
    """Patch features in, a memory bank out: chunks of ``plan.chunk`` patches, each reduced by
    :func:`greedy_k_center` on its projection as soon as it is full (module docstring)."""

    def __init__(self, total: int, dim: int, fraction: float, plan: MemoryPlan, projection: torch.Tensor | None,
                 generator: torch.Generator, device: torch.device) -> None:
        self.sizes = chunk_sizes(total, plan.chunk)
        self.keep = [max(1, int(fraction * n)) for n in self.sizes]
        self.generator, self.projection = generator, None if projection is None else projection.to(device)
        self.bank = torch.empty(sum(self.keep), dim, device=device)
        self.buffer = torch.empty(self.sizes[0], dim, device=device)
        self.radii: list[torch.Tensor] = []
        self._filled = self._written = 0

    @property
    def done(self) -> bool:
        return len(self.radii) == len(self.sizes)

    def add(self, patches: torch.Tensor) -> None:
        """Append ``patches (m, dim)``; every chunk they fill is reduced to its coreset at once."""
        while len(patches):
            if self.done:
                raise ValueError(f"more patches than the {sum(self.sizes)} planned")
            size = self.sizes[len(self.radii)]
            take = min(size - self._filled, len(patches))
            self.buffer[self._filled:self._filled + take] = patches[:take]
            self._filled += take
            patches = patches[take:]
            if self._filled == size:
                self._select(size)

    def _select(self, size: int) -> None:
        points = self.buffer[:size]
        with torch.autocast(device_type=points.device.type, enabled=False):
            projected = points if self.projection is None else points @ self.projection
            first = int(torch.randint(size, (1,), generator=self.generator))
            chosen, radius = greedy_k_center(projected, self.keep[len(self.radii)], first)
            del projected
        self.bank[self._written:self._written + len(chosen)] = points[chosen]
        self._written += len(chosen)
        self.radii.append(radius)
        self._filled = 0

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory bank ``(rows, dim)`` and each chunk's covering radius ``(chunks,)`` (in the projected space)."""
        if not self.done:
            raise ValueError(f"{sum(self.sizes) - sum(self.sizes[:len(self.radii)]) - self._filled} planned patches "
                             "never arrived")
        self.buffer = torch.empty(0)
        return self.bank, torch.stack(self.radii).cpu()


def chunk_work(total: int, chunk: int, fraction: float) -> tuple[int, int]:
    """(selection steps, distance evaluations) of the streamed selection: per chunk of ``n`` patches, ``l`` steps of
    ``n`` distances each."""
    steps = [max(1, int(fraction * n)) for n in chunk_sizes(total, chunk)]
    return sum(steps), sum(step * n for step, n in zip(steps, chunk_sizes(total, chunk)))


@functools.lru_cache(maxsize=8)  # once per process and setting: a dry run asks for each term
def time_greedy(dim: int, device: torch.device, steps: int = 64) -> tuple[float, float]:
    """(seconds per selection step, seconds per distance evaluation of ``dim`` floats) of :func:`greedy_k_center` on
    ``device``: ``steps`` steps timed on 2048 and on 65536 random points, the difference giving the per-distance
    part (the fastest of two runs each)."""
    def timed(n: int) -> float:
        points = torch.randn(n, dim, device=device)
        best = math.inf
        for _ in range(2):
            _synchronize(device)
            started = time.perf_counter()
            greedy_k_center(points, steps, 0)
            _synchronize(device)
            best = min(best, time.perf_counter() - started)
        return best

    small, large = timed(2048), timed(65536)
    per_distance = max(0.0, large - small) / (steps * (65536 - 2048))
    return max(0.0, small / steps - 2048 * per_distance), per_distance


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
