"""PaDiM's normal model: one multivariate Gaussian per patch position, and the Mahalanobis distance to it
(Defard, Setkov, Loesch, Audigier: "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2021, Sec. 3.2-3.3).

For the embedding vectors ``X_ij = {x_ij^k, k = 1..N}`` of the ``N`` training images at position ``(i, j)``::

    mu_ij    = (1/N) sum_k x_ij^k
    Sigma_ij = 1/(N - 1) sum_k (x_ij^k - mu_ij)(x_ij^k - mu_ij)^T + eps I          (eps = 0.01)
    M(x_ij)  = sqrt((x_ij - mu_ij)^T Sigma_ij^-1 (x_ij - mu_ij))

Streaming (the authors' code keeps every training embedding, N x d x positions floats; 10.8 GB for OCT's 26,315
images with ResNet-18 at 128 px): :class:`RunningGaussians` takes the embeddings batch by batch and merges each
batch's mean and centred scatter into the running ones (Chan, Golub and LeVeque's pairwise update:
``M2 = M2_a + M2_b + delta delta^T n_a n_b / n``, ``delta = mu_b - mu_a``), so the fit holds one ``d x d`` matrix per
position whatever ``N`` is, in float32, without the cancellation of ``E[xx^T] - mu mu^T``.

The inverse: ``Sigma = C C^T`` (Cholesky, in float64) and ``W = C^-1``; then ``M(x)^2 = ||W (x - mu)||^2``, the same
value as the quadratic form, never negative. ``W`` is kept in float32, one ``d x d`` triangle per position.
"""

from __future__ import annotations

import functools
import math
import time

import torch


class RunningGaussians:
    """Per-position mean and centred scatter of ``dim``-dimensional embeddings at ``positions`` positions, merged
    batch by batch; :meth:`whitening` turns them into (mean, ``W``) with ``Sigma + eps I = (W^T W)^-1``."""

    def __init__(self, positions: int, dim: int, device: torch.device) -> None:
        self.count = 0
        self.mean = torch.zeros(positions, dim, device=device)
        self.scatter = torch.zeros(positions, dim, dim, device=device)

    def add(self, embeddings: torch.Tensor) -> None:
        """Merge a batch ``(B, dim, positions)`` (float32)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = embeddings.float().permute(2, 0, 1)           # (positions, B, dim)
            n_b = x.shape[1]
            mean_b = x.mean(dim=1)
            centred = x - mean_b[:, None]
            n = self.count + n_b
            delta = mean_b - self.mean
            # in place (no second positions x dim x dim array): the batch's scatter, then the means' correction
            self.scatter.baddbmm_(centred.transpose(1, 2), centred)
            self.scatter.baddbmm_(delta[:, :, None], delta[:, None, :], alpha=self.count * n_b / n)
            self.mean += delta * (n_b / n)
            self.count = n

    def whitening(self, epsilon: float, step_bytes: int = 2**28) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(mean (positions, dim), W (positions, dim, dim), mean log-determinant of the covariances)``: ``W`` the
        inverse of the Cholesky factor of ``scatter / (N - 1) + epsilon I``, computed in float64 for as many positions
        at a time as keep its three float64 temporaries within ``step_bytes``, written over the scatter (no second
        positions x dim x dim array)."""
        if self.count < 2:
            raise ValueError(f"padim needs at least 2 training images for a covariance, got {self.count}")
        positions, dim, _ = self.scatter.shape
        positions_per_step = max(1, step_bytes // (3 * 8 * dim * dim))
        identity = torch.eye(dim, dtype=torch.float64, device=self.scatter.device)
        whitening, self.scatter = self.scatter, torch.empty(0)  # W takes the scatter's place, a few positions at a time
        log_det = torch.zeros((), dtype=torch.float64, device=whitening.device)
        with torch.autocast(device_type=whitening.device.type, enabled=False):
            for start in range(0, positions, positions_per_step):
                covariance = whitening[start:start + positions_per_step].double() / (self.count - 1) + epsilon * identity
                factor = torch.linalg.cholesky(covariance)
                whitening[start:start + positions_per_step] = torch.linalg.solve_triangular(
                    factor, identity.expand_as(factor), upper=False).float()
                log_det += 2 * factor.diagonal(dim1=-2, dim2=-1).log().sum()
        return self.mean, whitening, log_det / positions


def mahalanobis(embeddings: torch.Tensor, mean: torch.Tensor, whitening: torch.Tensor) -> torch.Tensor:
    """``M(x_ij)`` for embeddings ``(B, dim, positions)``: ``(B, positions)``, float32, ``||W (x - mu)||``."""
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        centred = embeddings.float().permute(2, 1, 0) - mean[:, :, None]   # (positions, dim, B)
        return (whitening @ centred).pow(2).sum(dim=1).sqrt().T            # (B, positions)


@functools.lru_cache(maxsize=8)  # once per process and setting
def time_whitening(dim: int, device: torch.device, positions: int = 32) -> float:
    """Seconds per ``position x dim^3`` of :meth:`RunningGaussians.whitening` on ``device`` (random data, the fastest
    of two runs)."""
    best = math.inf
    for _ in range(2):
        gaussians = RunningGaussians(positions, dim, device)
        gaussians.add(torch.randn(8, dim, positions, device=device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        gaussians.whitening(0.01)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best / (positions * dim**3)
