"""Memory modules that replace an encoder's code by stored normal prototypes.

- :class:`HashMemory`: MAMA Net's hash-addressing memory (Chen et al., IEEE TMI 2021, Sec. III-C,
  Eqs. 5-9): binary hash codes of the query and of every memory slot, Hamming-distance addressing,
  memory slots learned by back-propagation.
- :class:`PrototypeHashMemory`: the same addressing, with the memory the paper describes: slots that
  track the normal codes addressed to them (prototypes), a trained hash layer, a straight-through read.
- :class:`NearestNeighbourMemory`: ProxyAno's memory (Zhou et al., IEEE TMI, Sec. III-B, Eqs. 2-6):
  every spatial feature vector is replaced by its L2-nearest item; items follow an exponential moving
  average of the vectors assigned to them (the VQ-VAE EMA update, van den Oord et al. 2017).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def hash_codes(projection: nn.Linear, vectors: torch.Tensor) -> torch.Tensor:
    """MAMA Net Eq. 6: ``h = 1/2 (sgn(sigmoid(fc(v)) - 0.5) + 1)`` in {0, 1}, i.e. ``fc(v) > 0``."""
    return (projection(vectors) > 0).to(vectors.dtype)


def hamming_distance(query_codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """MAMA Net Eq. 7 for every pair: ``(B, F') x (N, F') -> (B, N)`` number of differing bits.

    ``HD = F' - h_z . HS^T - (1 - h_z) . (1 - HS)^T`` (bits equal in both codes, ones or zeros).
    """
    bits = query_codes.shape[1]
    return bits - query_codes @ table.T - (1 - query_codes) @ (1 - table).T


class HashMemory(nn.Module):
    """MAMA Net's memory ``M in R^{N x F}`` addressed through hash codes (Sec. III-C).

    The query ``z`` (the flattened encoder output) and every memory row are hashed by one fully
    connected layer ``fc: R^F -> R^{F'}`` followed by sigmoid and a 0.5 threshold (Eq. 6); the slot with
    the smallest Hamming distance (Eq. 7) is read (hard addressing, Eq. 9), or the ``soft_topk`` nearest
    slots are mixed with weights ``softmax(-HD / soft_tau)`` (soft addressing, Eq. 8; the paper writes
    ``Softmax(w_HD)``, whose sign we flip so that nearer slots weigh more).

    Choices the paper leaves open (spec-mamanet.md, [R]):

    - ``init_scale``: slots start U(-a, a) with ``a = 1/sqrt(F)`` ("random initially").
    - ``hash_train="frozen"``: the fc weights are drawn N(0, 1) without bias and never trained (SimHash,
      the LSH the paper cites; sgn has no gradient and no hashing objective is given). ``"ste"``: the
      forward pass is unchanged, the backward pass goes through ``softmax(-HD_relaxed / soft_tau)`` with
      ``HD_relaxed = sum p_z (1 - p_i) + (1 - p_z) p_i``, ``p = sigmoid(fc(.))``.
    - ``tie_break``: Hamming ties (integers) are broken by cosine similarity between ``z`` and the slot,
      ``argmin(HD - tie_break * cos)``; any value below 0.5 only reorders equal distances.
    - Slots learn by back-propagation (``nn.Parameter``): under hard addressing only the addressed slots
      receive a gradient (with Adam, a slot addressed in earlier steps still drifts by its momentum).
    """

    def __init__(self, mem_size: int, feature_dim: int, hash_bits: int = 128, addressing: str = "hard",
                 soft_topk: int = 5, soft_tau: float = 1.0, hash_train: str = "frozen", tie_break: float = 0.49) -> None:
        super().__init__()
        if addressing not in ("hard", "soft"):
            raise ValueError(f"addressing must be 'hard' or 'soft', got {addressing!r}")
        if hash_train not in ("frozen", "ste"):
            raise ValueError(f"hash_train must be 'frozen' or 'ste', got {hash_train!r}")
        if not 0.0 <= tie_break < 0.5:
            raise ValueError(f"tie_break must be in [0, 0.5) so that it only reorders equal distances, got {tie_break}")
        if mem_size < 1 or hash_bits < 1:
            raise ValueError(f"mem_size and hash_bits must be >= 1, got {mem_size} and {hash_bits}")
        self.addressing, self.hash_train = addressing, hash_train
        self.soft_topk, self.soft_tau, self.tie_break = min(soft_topk, mem_size), soft_tau, tie_break
        bound = 1.0 / math.sqrt(feature_dim)
        self.items = nn.Parameter(torch.empty(mem_size, feature_dim).uniform_(-bound, bound))
        self.hash = nn.Linear(feature_dim, hash_bits, bias=False)
        nn.init.normal_(self.hash.weight, 0.0, 1.0)
        self.hash.weight.requires_grad_(hash_train == "ste")

    @property
    def mem_size(self) -> int:
        return int(self.items.shape[0])

    def address(self, z: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Index ``(B,)`` of the slot each flattened query ``z (B, F)`` reads under hard addressing; slots in
        ``exclude`` are never read (unless that would leave none)."""
        with torch.autocast(device_type=z.device.type, enabled=False):  # bits and distances in float32
            z, items = z.float(), self.items.float()
            distance = hamming_distance(hash_codes(self.hash, z), hash_codes(self.hash, items))
            if self.tie_break > 0:
                cosine = F.normalize(z, dim=1) @ F.normalize(items, dim=1).T
                distance = distance - self.tie_break * cosine
        if exclude is not None and len(exclude) < self.mem_size:
            distance[:, exclude] = float("inf")
        return distance.argmin(dim=1)

    def forward(self, z: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Read the memory for queries ``z (B, ...)``: ``(z_hat with z's shape, addressed slot indices)``.

        Soft addressing returns the ``(B, soft_topk)`` indices mixed; hard addressing ``(B,)``, never reading
        a slot in ``exclude``.
        """
        flat = z.flatten(1)
        if self.addressing == "soft":
            with torch.no_grad():
                distance = hamming_distance(hash_codes(self.hash, flat), hash_codes(self.hash, self.items))
            nearest, index = distance.topk(self.soft_topk, dim=1, largest=False)
            weights = torch.softmax(-nearest / self.soft_tau, dim=1)
            read = torch.einsum("bk,bkf->bf", weights, self.items[index])
            return read.view_as(z), index
        index = self.address(flat.detach(), exclude)
        if self.hash_train == "ste":
            relaxed = self._relaxed_weights(flat)
            hard = F.one_hot(index, self.mem_size).to(flat.dtype)
            read = (hard + relaxed - relaxed.detach()) @ self.items
        else:
            read = self.items[index]
        return read.view_as(z), index

    def _relaxed_weights(self, flat: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        p_query = torch.sigmoid(self.hash(flat))
        p_items = torch.sigmoid(self.hash(self.items if items is None else items))
        relaxed = p_query @ (1 - p_items).T + (1 - p_query) @ p_items.T
        return torch.softmax(-relaxed / self.soft_tau, dim=1)


class PrototypeHashMemory(HashMemory):
    """MAMA Net's memory as its paper describes it: hashed prototypes of normal codes (Sec. III-A, III-C, V).

    The paper: the slots start random and "are updated to preserve encoding representations of normal
    instances" (III-C); the memory is "trained only to record the prototypical normal cases" (V); encoder,
    decoder and memory "are trained to optimize the reconstruction error" (III-A); the hash function is "a
    single neural layer with trainable weights" (Eq. 5); at test the memory is fixed and a code is replaced
    by the stored prototype its hash addresses (Eq. 9). The paper gives no update rule; ours [R]:

    - **read** (hard addressing, Eqs. 6, 7, 9): the decoder gets the addressed slot ``m_j``; the encoder gets
      the read's gradient straight through, ``z_hat = z + sg(m_j - z)`` (as VQ-VAE, van den Oord et al. 2017),
      so the reconstruction error trains it to produce codes its prototypes reconstruct;
    - **hash layer trained** through its binarisation: the forward read is the hard one, the backward pass
      goes through ``softmax(-HD_relaxed / soft_tau) @ M`` with ``HD_relaxed = sum p_z (1 - p_i) + (1 - p_z) p_i``
      and ``p = sigmoid(fc(.))``, so the reconstruction error moves the hyperplanes towards hashing each code
      near the slot that serves it (a random-hyperplane start keeps similar codes in similar buckets);
    - **slots track their codes**: each slot is the exponentially weighted mean (``decay``) of the codes
      addressed to it (the VQ-VAE EMA update: decayed sums over decayed counts), never an optimiser's
      parameter; a slot no code addressed for ``reseed_after`` training steps is re-seeded with a code of
      the current batch, so every slot ends as a prototype of normal codes;
    - **fixed at test**: after training, :meth:`settle` sets each slot to the mean of the final encoder's codes
      addressed to it (the codes drift while the encoder trains; the slots' moving averages lag behind), and
      nothing is updated in eval mode.

    - **codes commit to their prototypes**: VQ-VAE's commitment term ``||z - sg(m_j)||^2`` (:attr:`last_commitment`,
      which the caller adds to its loss with a weight: MAMA Net's ``commitment``, 0.25 as in VQ-VAE) ties
      the encoder's codes to the memory, so a training code lies near the slot it reads.
    """

    def __init__(self, mem_size: int, feature_dim: int, hash_bits: int = 128, *, soft_tau: float = 1.0,
                 hash_train: str = "ste", tie_break: float = 0.49, decay: float = 0.99, reseed_after: int = 50) -> None:
        super().__init__(mem_size, feature_dim, hash_bits, "hard", 1, soft_tau, hash_train, tie_break)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay, self.reseed_after = decay, int(reseed_after)
        self.items.requires_grad_(False)  # moved by the EMA, not by the optimiser
        # Eq. 5's "single neural layer with trainable weights", with its bias: the codes share a large mean, so
        # hyperplanes through the origin would give every code the same bits; the bias is first set to put the
        # hyperplanes through the mean of the first training batch, then trained with the weights
        hash_weight = self.hash.weight.detach().clone()
        self.hash = nn.Linear(feature_dim, hash_bits, bias=True)
        with torch.no_grad():
            self.hash.weight.copy_(hash_weight)
            self.hash.bias.zero_()
        self.hash.requires_grad_(hash_train == "ste")
        self.register_buffer("centred", torch.zeros((), dtype=torch.bool))
        self.register_buffer("cluster_size", torch.zeros(mem_size))   # decayed count of codes per slot
        self.register_buffer("embed_sum", torch.zeros(mem_size, feature_dim))  # decayed sum of those codes
        self.register_buffer("idle_steps", torch.zeros(mem_size, dtype=torch.long))
        self.register_buffer("initial_items", self.items.detach().clone(), persistent=False)
        self.last_commitment = torch.zeros(())
        self._seen_centred = False  # the host's copy of ``centred`` once it read True: no device read per step

    def forward(self, z: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_hat: the addressed prototypes with the straight-through gradient, slot index per code (B,))``."""
        flat = z.flatten(1)
        if self.training and not self._seen_centred:
            if not bool(self.centred):
                with torch.no_grad():
                    self.hash.bias.copy_(-self.hash.weight @ flat.detach().float().mean(dim=0))
                    self.centred.fill_(True)
            self._seen_centred = True
        items = self.items.detach().clone() if self.training else self.items  # the EMA below changes them in place
        index = self.address(flat.detach(), exclude)
        prototypes = items[index].to(flat.dtype)
        read = flat + (prototypes - flat).detach()
        if self.hash_train == "ste":
            soft = self._relaxed_weights(flat, items) @ items.to(flat.dtype)
            read = read + soft - soft.detach()
        self.last_commitment = (flat - prototypes).pow(2).mean()
        if self.training:
            self._track(flat.detach().to(self.items.dtype), index)
        return read.view_as(z), index

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._seen_centred = False  # the loaded ``centred`` may be False: read it again at the next training step
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def settle(self, codes: torch.Tensor) -> None:
        """After training: each slot that the final codes address becomes the mean of those codes (one last,
        undecayed update: the prototypes of the final encoder's normal codes); the others keep their value."""
        index = self.address(codes)
        counts = torch.bincount(index, minlength=self.mem_size).to(self.items.dtype)
        sums = torch.zeros_like(self.items).index_add_(0, index, codes.to(self.items.dtype))
        used = counts > 0
        self.items[used] = sums[used] / counts[used, None]

    @torch.no_grad()
    def _track(self, codes: torch.Tensor, index: torch.Tensor) -> None:
        """Each addressed slot becomes the exponentially weighted mean of the codes addressed to it (counts and
        sums decayed by ``decay``, their ratio the mean); slots idle for ``reseed_after`` steps take a batch code."""
        counts = torch.bincount(index, minlength=self.mem_size).to(codes.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, index, codes)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        # where() rather than boolean indexing: the same values without reading the mask on the host
        self.items.copy_(torch.where(self.cluster_size[:, None] > 0, self.embed_sum / self.cluster_size[:, None], self.items))
        self.idle_steps.add_(1).masked_fill_(counts > 0, 0)
        idle = torch.nonzero(self.idle_steps > self.reseed_after).flatten()
        if len(idle):
            pick = torch.randint(len(codes), (len(idle),), device=codes.device)
            self.items[idle] = codes[pick]
            self.embed_sum[idle] = (1 - self.decay) * codes[pick]
            self.cluster_size[idle] = 1 - self.decay
            self.idle_steps[idle] = 0


class NearestNeighbourMemory(nn.Module):
    """ProxyAno's memory ``m in R^{k x d}`` (Sec. III-B): hard nearest-item replacement with EMA items.

    Eq. 2: each feature vector ``z_i`` (a position of the ``(B, d, h, w)`` code) is replaced by
    ``m_j, j = argmin_j ||z_i - m_j||_2``; the gradient is copied from the output to ``z``
    (straight-through, Eq. 7). Eqs. 4-6 (training mode only, per mini-batch):
    ``N_i <- gamma N_i + (1 - gamma) n_i``, ``e_i <- gamma e_i + (1 - gamma) sum_j z_{i,j}``,
    ``m_i = e_i / N_i``. The items are buffers, never touched by an optimiser.

    [R] (spec-proxyano.md): items start as ``k`` encoder vectors of the first training batch
    (:meth:`initialise_from`); ``N_i`` is Laplace-smoothed with ``eps`` before dividing.
    """

    def __init__(self, num_items: int = 128, dim: int = 64, decay: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay (gamma) must be in [0, 1), got {decay}")
        self.decay, self.eps = decay, eps
        self.register_buffer("items", torch.randn(num_items, dim) / math.sqrt(dim))
        self.register_buffer("cluster_size", torch.ones(num_items))
        self.register_buffer("embed_sum", self.items.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @property
    def num_items(self) -> int:
        return int(self.items.shape[0])

    @staticmethod
    def flatten(z: torch.Tensor) -> torch.Tensor:
        """``(B, d, h, w) -> (B*h*w, d)``: the ``s = h*w`` vectors of every code."""
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    @torch.no_grad()
    def initialise_from(self, z: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the items to ``k`` random vectors of the code ``z (B, d, h, w)`` (with replacement if too few)."""
        vectors = self.flatten(z).detach()
        if len(vectors) >= self.num_items:
            pick = torch.randperm(len(vectors), generator=generator)[: self.num_items]
        else:
            pick = torch.randint(len(vectors), (self.num_items,), generator=generator)
        self.items.copy_(vectors[pick.to(vectors.device)])
        self.embed_sum.copy_(self.items)
        self.cluster_size.fill_(1.0)
        self.initialised.fill_(True)

    def nearest(self, vectors: torch.Tensor) -> torch.Tensor:
        """Index of the L2-nearest item of each row of ``vectors (n, d)`` (in float32 even under autocast)."""
        with torch.autocast(device_type=vectors.device.type, enabled=False):
            distance = (vectors.pow(2).sum(1, keepdim=True) - 2 * vectors @ self.items.T
                        + self.items.pow(2).sum(1)[None])
        return distance.argmin(dim=1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(quantised code with straight-through gradient, item index per position (B, h, w))``.

        Addressing and the EMA bookkeeping run in the items' dtype (float32), also under bf16 autocast.
        """
        vectors = self.flatten(z).to(self.items.dtype)
        index = self.nearest(vectors.detach())
        if self.training:
            self._ema_update(vectors.detach(), index)
        quantised = self.items[index]
        quantised = vectors + (quantised - vectors).detach()
        batch, dim, height, width = z.shape
        return (quantised.view(batch, height, width, dim).permute(0, 3, 1, 2),
                index.view(batch, height, width))

    @torch.no_grad()
    def _ema_update(self, vectors: torch.Tensor, index: torch.Tensor) -> None:
        counts = torch.bincount(index, minlength=self.num_items).to(vectors.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, index, vectors)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_items * self.eps) * total
        self.items.copy_(self.embed_sum / smoothed[:, None])
