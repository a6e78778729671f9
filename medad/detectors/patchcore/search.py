"""Exact nearest-neighbour search of patch features in a memory bank, in blocks, on the bank's device.

``nearest(queries, bank)`` gives each query row its nearest bank row (Euclidean) and the distance to it:
the distances of a block of queries to a block of bank rows come from ``||q||^2 - 2 q.m + ||m||^2`` (one matrix
product, float32, clamped at 0), at most ``block_bytes`` of them at a time, keeping the running minimum; the distance
to the winner is then recomputed directly as ``||q - m||`` (the expansion loses digits where the two norms are large
and close). An exact search: every query meets every bank row (no index structure, no approximation), so memory
stays bounded by the blocks, and the work is ``queries x bank rows x dim``, a matrix product a GPU runs at full speed.
"""

from __future__ import annotations

import functools
import math
import time

import torch

FLOAT_BYTES = 4


def nearest(queries: torch.Tensor, bank: torch.Tensor, bank_squares: torch.Tensor | None = None,
            block_bytes: int = 64 * 2**20) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distance (n,), index (n,))`` of each row of ``queries (n, d)`` to its nearest row of ``bank (k, d)``;
    ``bank_squares``: the bank's squared row norms, when the caller keeps them. Float32, autocast off."""
    with torch.autocast(device_type=queries.device.type, enabled=False):
        queries, bank = queries.float(), bank.float()
        if bank_squares is None:
            bank_squares = bank.pow(2).sum(dim=1)
        n, k = queries.shape[0], bank.shape[0]
        bank_block = max(1, min(k, block_bytes // FLOAT_BYTES))
        query_block = max(1, block_bytes // FLOAT_BYTES // bank_block)
        best = torch.empty(n, dtype=torch.long, device=queries.device)
        for start in range(0, n, query_block):
            part = queries[start:start + query_block]
            part_squares = part.pow(2).sum(dim=1, keepdim=True)
            low = torch.full((len(part),), float("inf"), device=queries.device)
            where = torch.zeros(len(part), dtype=torch.long, device=queries.device)
            for first in range(0, k, bank_block):
                squared = torch.addmm(part_squares + bank_squares[None, first:first + bank_block],
                                      part, bank[first:first + bank_block].T, alpha=-2)
                value, index = squared.min(dim=1)
                better = value < low
                low = torch.where(better, value, low)
                where = torch.where(better, index + first, where)
            best[start:start + len(part)] = where
        distance = (queries - bank[best]).pow(2).sum(dim=1).sqrt()
    return distance, best


def k_nearest(queries: torch.Tensor, bank: torch.Tensor, count: int, block_bytes: int = 64 * 2**20) -> torch.Tensor:
    """Indices ``(n, count)`` of the ``count`` bank rows nearest each query row, nearest first (the few rows the
    re-weighting of PatchCore's image score asks about: a block of the bank at a time)."""
    with torch.autocast(device_type=queries.device.type, enabled=False):
        queries, bank = queries.float(), bank.float()
        count = min(count, bank.shape[0])
        bank_block = max(count, block_bytes // FLOAT_BYTES // max(1, len(queries)))
        values, indices = [], []
        for first in range(0, bank.shape[0], bank_block):
            block = bank[first:first + bank_block]
            squared = torch.cdist(queries, block).pow(2)
            value, index = squared.topk(min(count, len(block)), dim=1, largest=False)
            values.append(value)
            indices.append(index + first)
        value, position = torch.cat(values, dim=1).topk(count, dim=1, largest=False)
        return torch.cat(indices, dim=1).gather(1, position)


@functools.lru_cache(maxsize=8)  # once per process and setting: a dry run asks for each term
def time_search(dim: int, device: torch.device, queries: int = 256, rows: int = 16384) -> float:
    """Seconds per (query, bank row) pair of :func:`nearest` with ``dim``-dimensional features on ``device`` (the
    fastest of two runs after a warm-up)."""
    query, bank = torch.randn(queries, dim, device=device), torch.randn(rows, dim, device=device)
    best = math.inf
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        nearest(query, bank)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best / (queries * rows)
