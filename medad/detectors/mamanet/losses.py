"""MAMA Net's training loss (Chen et al., IEEE TMI 2021, Eqs. 12-13): ``Loss = MSE(x, x_hat) + EM(x, x_hat)``.

The paper gives the Earth-Mover (Wasserstein-1) distance between the distribution of inputs and of
reconstructions (Eq. 12) without an estimator. Estimators (``em_mode``, spec-mamanet.md Sec. 4):

- ``batch_emd`` [R, default]: the ``B`` inputs and ``B`` reconstructions of a mini-batch are two uniform
  empirical distributions; ground cost ``C_ab = ||x_a - x_hat_b||_2 / sqrt(D)`` (the 1/sqrt(D) rescale,
  [R], puts it on the scale of a per-pixel RMSE so the paper's 1:1 weighting with mean-MSE is sensible);
  exact optimal transport with POT's ``ot.emd2`` (gradient = the optimal plan).
- ``sliced``: POT's sliced Wasserstein-1 distance of the flattened batches (``n_projections``).
- ``intensity_1d``: per image, the exact 1-D W1 between the sorted pixel values of ``x`` and ``x_hat``.
- ``latent``: ``batch_emd`` between the encoder code ``z`` and the memory read ``z_hat``.
- ``none``: the paper's ablation without the Wasserstein term.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

EM_MODES = ("batch_emd", "sliced", "intensity_1d", "latent", "none")


def pairwise_rms_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, ...) x (B', ...) -> (B, B')``: ``||a_i - b_j||_2 / sqrt(D)`` with a finite gradient at 0."""
    a, b = a.flatten(1), b.flatten(1)
    squared = (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)  # direct differences: exact 0 for equal rows
    return squared.clamp_min(1e-12).sqrt() / math.sqrt(a.shape[1])


def batch_emd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact Wasserstein-1 distance between the uniform empirical distributions of two batches (POT ``emd2``)."""
    cost = pairwise_rms_distance(a, b)
    weights_a = torch.full((cost.shape[0],), 1.0 / cost.shape[0], dtype=cost.dtype, device=cost.device)
    weights_b = torch.full((cost.shape[1],), 1.0 / cost.shape[1], dtype=cost.dtype, device=cost.device)
    import ot  # POT takes about a second to import (networkx, scikit-learn): only where the loss is used

    return ot.emd2(weights_a, weights_b, cost)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_projections: int = 128, seed: int = 0) -> torch.Tensor:
    """POT's sliced Wasserstein-1 distance between two flattened batches.

    Projections are on unit directions, so a difference spread over all D pixels already shows at the
    per-pixel RMS scale of ``batch_emd``; no further rescale.
    """
    import ot

    return ot.sliced_wasserstein_distance(a.flatten(1), b.flatten(1), n_projections=n_projections, p=1, seed=seed)


def intensity_w1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over images of the 1-D W1 distance between the pixel-value distributions of ``a_i`` and ``b_i``."""
    sorted_a = a.flatten(1).sort(dim=1).values
    sorted_b = b.flatten(1).sort(dim=1).values
    return (sorted_a - sorted_b).abs().mean()


def wasserstein_term(mode: str, images: torch.Tensor, recon: torch.Tensor, z: torch.Tensor | None = None,
                     z_hat: torch.Tensor | None = None, n_projections: int = 128, seed: int = 0) -> torch.Tensor:
    """Eq. 12 with the estimator ``mode`` (one of :data:`EM_MODES`)."""
    if mode == "batch_emd":
        return batch_emd(images, recon)
    if mode == "sliced":
        return sliced_wasserstein(images, recon, n_projections, seed)
    if mode == "intensity_1d":
        return intensity_w1(images, recon)
    if mode == "latent":
        if z is None or z_hat is None:
            raise ValueError("em_mode 'latent' needs the code z and the memory read z_hat")
        return batch_emd(z, z_hat)
    if mode == "none":
        return images.new_zeros(())
    raise ValueError(f"em_mode must be one of {EM_MODES}, got {mode!r}")


def mama_loss(images: torch.Tensor, outputs: dict[str, torch.Tensor], em_mode: str = "batch_emd",
              lambda_em: float = 1.0, **em_options) -> dict[str, torch.Tensor]:
    """Eq. 13: ``{"loss": MSE + lambda_em * EM, "mse": ..., "em": ...}`` (MSE mean over pixels [R])."""
    mse = F.mse_loss(outputs["recon"], images)
    em = wasserstein_term(em_mode, images, outputs["recon"], outputs.get("z"), outputs.get("z_hat"), **em_options)
    return {"loss": mse + lambda_em * em, "mse": mse, "em": em}
