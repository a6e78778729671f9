"""The detector contract: fit on normal images, score images (higher = more anomalous).

Scores must never use test-set statistics: ``score`` sees one batch and must return the same value
for an image whatever else is in the batch (eval-mode normalisation, no per-batch min-max).
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from medad.datasets.base import ImageSet


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite."""


class NoPixelMap(NotImplementedError):
    """A detector was asked for pixel maps that its method cannot make (a whole-image control): the message says why
    and what has maps. The harness reads it as "no map" (:func:`score_map_or_none`)."""


LOG_EVERY = 50  # logged steps between two reads of the device-held losses (the run config's ``log_every``)


class TrainLog:
    """Collects training curves (epoch, step, loss name, value) and stops on a NaN/inf loss.

    Detectors call :meth:`log` for every loss they want in ``history.csv`` and wrap their epoch
    loop in :meth:`epochs` for a progress bar. ``epoch_end``, when the harness sets it, is called with
    ``(epoch, count)`` after each epoch of :meth:`epochs` (the run setting ``test_curve`` hooks in there; it
    must leave the fit as it found it).

    Reading a CUDA tensor's value makes the host wait for the device, so :meth:`log` keeps a tensor loss where
    it is (detached) and :meth:`flush` reads all those held: one copy per device and dtype, every ``log_every``
    calls of :meth:`log`, at the end of each epoch of :meth:`epochs`, and when :attr:`rows` is read. The rows are
    the same as reading each value at once (a float32, bf16 or integer value converts to a Python float exactly
    either way); a NaN/inf loss raises :class:`NonFiniteLossError` naming the first non-finite (loss, epoch,
    step), at most ``log_every`` logged steps after that step trained. A python number is checked at once. A
    logged tensor must not be changed in place afterwards (its value is read later).
    """

    def __init__(self, *, progress: bool = False, description: str = "epochs",
                 sink: Callable[[str], None] | None = None, log_every: int = LOG_EVERY) -> None:
        if int(log_every) < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self._rows: list[tuple[int, int, str, float]] = []
        self._pending: list[tuple[int, int, str, float | torch.Tensor]] = []
        self._pending_calls = 0
        self.log_every = int(log_every)
        self.progress = progress
        self.description = description
        self.sink = sink  # receives a line per finished epoch (the job's log.txt)
        self.epoch_end: Callable[[int, int], None] | None = None

    @property
    def rows(self) -> list[tuple[int, int, str, float]]:
        """Every (epoch, step, loss name, value) logged so far (reading them flushes the held losses)."""
        self.flush()
        return self._rows

    def log(self, epoch: int, step: int, **losses: float | torch.Tensor) -> None:
        """Record ``losses`` at (epoch, step) (tensors are read at the next :meth:`flush`); raise
        :class:`NonFiniteLossError` on a NaN/inf python number here, on a NaN/inf tensor at the flush."""
        for name, value in losses.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(f"loss {name!r} must hold one value, got a tensor of shape {tuple(value.shape)}")
                self._pending.append((epoch, step, name, value.detach().reshape(())))
                continue
            value = float(value)
            if not math.isfinite(value):
                self.flush()  # an earlier held loss that was already non-finite is the one to name
                raise NonFiniteLossError(f"loss {name!r} became {value} at epoch {epoch}, step {step}")
            self._pending.append((epoch, step, name, value))
        self._pending_calls += 1
        if self._pending_calls >= self.log_every:
            self.flush()

    def flush(self) -> None:
        """Read the held losses into :attr:`rows`, in the order logged; raise :class:`NonFiniteLossError` at the
        first NaN/inf one (the rows before it are kept)."""
        pending, self._pending, self._pending_calls = self._pending, [], 0
        values = iter(_host_values([value for *_, value in pending if isinstance(value, torch.Tensor)]))
        for epoch, step, name, value in pending:
            value = next(values) if isinstance(value, torch.Tensor) else value
            if not math.isfinite(value):
                raise NonFiniteLossError(f"loss {name!r} became {value} at epoch {epoch}, step {step}")
            self._rows.append((epoch, step, name, value))

    def epochs(self, count: int) -> Iterable[int]:
        """``range(count)`` with a tqdm bar when progress is on; the held losses are read at each epoch's end, and
        each finished epoch's mean losses go to ``sink``."""
        started = time.perf_counter()
        for epoch in tqdm(range(count), desc=self.description, leave=False, disable=not self.progress):
            first_row = len(self.rows)
            yield epoch
            self.flush()
            if self.sink is not None:
                elapsed = time.perf_counter() - started
                # the rows logged during this epoch, whatever epoch number the detector gave them (a second
                # training phase numbers its epochs on after the first: f-AnoGAN's encoder stage)
                self.sink(f"epoch {epoch + 1}/{count} ({elapsed:.1f} s): {_means(self.rows[first_row:])}")
            if self.epoch_end is not None:
                self.epoch_end(epoch, count)

    def summary(self, epoch: int, first_row: int = 0) -> str:
        """The mean of each loss logged in ``epoch``, as ``name=value`` pairs; ``first_row`` skips the rows logged
        before (an epoch's own rows are the last ones, so a long fit's summaries stay linear in its steps)."""
        return _means([row for row in self.rows[first_row:] if row[0] == epoch])


def _means(rows: list[tuple[int, int, str, float]]) -> str:
    """The mean of each loss in ``rows``, as ``name=value`` pairs in the order first logged."""
    values: dict[str, list[float]] = {}
    for _, _, name, value in rows:
        values.setdefault(name, []).append(value)
    return " ".join(f"{name}={sum(v) / len(v):.5g}" for name, v in values.items()) or "(nothing logged)"


def _host_values(tensors: list[torch.Tensor]) -> list[float]:
    """The values of one-element ``tensors`` as Python floats, in order: one stack and one copy to the host per
    (device, dtype), so a flush waits for the device once and converts nothing inexactly."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for position, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(position)
    values = [0.0] * len(tensors)
    with torch.no_grad():
        for positions in groups.values():
            for position, value in zip(positions, torch.stack([tensors[i] for i in positions]).cpu().tolist()):
                values[position] = float(value)
    return values


class Detector(abc.ABC):
    """Base class of anomaly detectors.

    Hyper-parameters are keyword-only arguments of ``__init__`` with defaults and type hints; the
    config validator reads them from the signature, so a detector declares nothing twice.

    Class attributes: ``paper`` (citation shown by ``medad list``), ``supervision``
    (``"unsupervised"`` or ``"semi-supervised"``), ``control`` (True for a structure-blind control detector,
    :mod:`medad.detectors.controls`: listed, tagged and reported as a control, never ranked as a detector),
    ``needs`` (what a dataset must provide:
    ``"roi_masks"``, ``"anomaly_pool"``), ``smoke_params`` (hyper-parameters for a fit of a few
    seconds on 32 px images: what the conformance kit and CI use; ``smoke_image_size`` if 32 is too small;
    ``smoke_auc_bar``, the ROC AUC the smoke fit must reach on very obvious anomalies: 0.7 unless the
    method measurably stays below it at that budget, with the measurements beside the override).

    A semi-supervised detector's ``fit`` also receives ``anomaly_pool=`` (labelled anomalies that
    never overlap the test set).
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    supervision: ClassVar[str] = "unsupervised"
    control: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()
    smoke_params: ClassVar[dict[str, Any]] = {}
    # hyper-parameters whose defaults are the paper's (or its reference code's): a config that changes one
    # makes the rows differ from the paper's protocol, and the harness says so in their ``deviations`` tag
    paper_settings: ClassVar[tuple[str, ...]] = ()
    # the input size (pixels a side) of the paper's experiments, where it states one: a job at another ``image_size``
    # says so in its rows' ``deviations`` tag
    paper_image_size: ClassVar[int | None] = None
    smoke_image_size: ClassVar[int] = 32
    smoke_auc_bar: ClassVar[float] = 0.7

    def __init__(self, *, image_size: int, channels: int, device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.device = torch.device(device)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.memory_format = torch.contiguous_format

    @classmethod
    def check_input(cls, image_size: int, channels: int, params: dict[str, Any]) -> None:
        """Raise ValueError when the networks cannot take ``image_size`` x ``image_size`` images (read by the
        pre-flight check, so that a matrix never starts a job its detector would refuse)."""

    @classmethod
    def pretrained_files(cls, params: dict[str, Any]) -> list[tuple[Path, str]]:
        """(file, download URL or "") for each pretrained-weights file a detector with ``params`` will load: the
        pre-flight check says which are missing before any job starts."""
        return []

    @classmethod
    def training_budget(cls, params: dict[str, Any]) -> dict[str, str]:
        """The hyper-parameters that set how long a fit with ``params`` (every hyper-parameter, defaults filled in)
        trains, each with its unit: ``"epochs"`` (passes over the training images) or ``"steps"`` (batches, however
        many training images there are). Read by the cost estimate (:mod:`medad.benchmark.estimate`). Default:
        every integer hyper-parameter named ``*epochs`` that ``params`` sets above 0."""
        return {name: "epochs" for name, value in params.items()
                if name.endswith("epochs") and isinstance(value, int) and not isinstance(value, bool) and value > 0}

    @classmethod
    def cost_terms(cls, params: dict[str, Any], n_train: int, image_size: int) -> dict[str, tuple[float, float]]:
        """Work whose time does not follow the training images one for one, for the cost estimate
        (:mod:`medad.benchmark.estimate`): name -> (units in a fit on ``n_train`` images of ``image_size`` px, units
        per scored image), with ``params`` every hyper-parameter (defaults filled in). A detector that declares a
        term also times one unit of it in :meth:`time_cost_term`. Default: none (a fit costs a set-up and its
        epochs per training image, plus its steps; scoring a fixed time per image)."""
        return {}

    @classmethod
    def time_cost_term(cls, name: str, params: dict[str, Any], device: torch.device) -> float:
        """Seconds one unit of the cost term ``name`` (:meth:`cost_terms`) takes on ``device``, measured on random
        data of the detector's own making."""
        raise NotImplementedError(f"{cls.__name__} declares no cost term {name!r}")

    @classmethod
    def check_settings(cls, params: dict[str, Any]) -> None:
        """Raise ValueError for hyper-parameters that are each in range but not valid together.

        The config validator calls it with an entry's ``params`` (each already checked against its type
        hint and range, see :mod:`medad.params`), so such a mistake stops the run before any job starts.
        """

    # --- the contract -------------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self, train: ImageSet, val: ImageSet | None = None, log: TrainLog | None = None) -> None:
        """Train on ``train`` (normal images only; labels are not to be used)."""

    @abc.abstractmethod
    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly scores ``(N,)`` for float images ``(N, C, H, W)`` in [0, 1]; higher = more anomalous."""

    def score_map(self, images: torch.Tensor) -> torch.Tensor | None:
        """Pixel anomaly maps ``(N, H, W)``, or None when the detector has none (a detector whose method can never
        make one may raise :class:`NoPixelMap` saying so instead)."""
        return None

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor | None:
        """Reconstructions ``(N, C, H, W)`` in [0, 1] for report figures, or None."""
        return None

    @property
    def weights(self) -> str:
        """Which pretrained weights the result rests on: ``none`` (trained from scratch), ``imagenet``, ``random``..."""
        return "none"

    def extra_tags(self) -> dict[str, str]:
        """Further columns for every CSV row of this detector's results (e.g. ``protocol``)."""
        return {}

    def paper_deviations(self) -> list[str]:
        """What else makes these rows differ from the paper's protocol (another score, selection or memory...), in
        words; the harness adds the changed :attr:`paper_settings` and joins all into the rows' ``deviations``
        tag, which the report shows beside every paper-vs-reproduced difference. Empty: the paper's setting."""
        return []

    @classmethod
    def held_out_label_use(cls, params: dict[str, Any]) -> str | None:
        """The setting among ``params`` (a config entry's) under which labelled held-out images choose this
        detector's weights or scale its scores (selection on the test set or on a labelled validation set, or
        :attr:`sees_test_set`), as ``"key: value"``; None when there is none (the default: the final epoch, no
        labels). The run setting ``test_curve`` is refused beside such an entry."""
        return None

    @property
    def sees_test_set(self) -> bool:
        """True only where a detector reproduces reference code that uses the labelled test set in training
        (best-epoch-on-test selection, test-set min-max): the harness then passes ``test=`` to ``fit``.
        Never true by default; such a detector must say so in :meth:`extra_tags`."""
        return False

    @classmethod
    def fit_shareable(cls, params: dict[str, Any]) -> bool:
        """Whether jobs that train this detector with ``params`` identically (same data, seed and settings; other
        subsets of a dataset that trains them on the same images) may share one fit, the first training and the
        others scoring. False where the training sees the job's own test set (:attr:`sees_test_set`: it is never
        the same training for two subsets); a detector may also return False to always train per job."""
        return True

    # --- checkpoints ---------------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """The modules whose weights make up a checkpoint (default: every nn.Module attribute)."""
        return {key: value for key, value in vars(self).items() if isinstance(value, nn.Module)}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors besides network weights that scoring needs (calibration statistics...)."""
        return {}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`extra_state` returned."""

    def state_dict(self) -> dict[str, Any]:
        """Tensors only, so that ``torch.load(..., weights_only=True)`` reads it back."""
        return {
            "networks": {key: module.state_dict() for key, module in self.networks().items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned."""
        networks = self.networks()
        missing = set(networks) - set(state.get("networks", {}))
        if missing:
            raise KeyError(f"checkpoint lacks networks {sorted(missing)} of detector {self.name!r}")
        for key, module in networks.items():
            module.load_state_dict(state["networks"][key])
        self.load_extra_state(state.get("extra", {}))

    def save(self, path) -> None:
        """Write a checkpoint to ``path``."""
        torch.save(self.state_dict(), path)

    def load(self, path) -> None:
        """Read a checkpoint written by :meth:`save` (weights only: no pickled code runs)."""
        self.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))

    # --- helpers for subclasses ----------------------------------------------------------------
    def use_memory_format(self, memory_format: torch.memory_format) -> None:
        """Store the networks' weights and the 4-D inputs that pass :meth:`to_device` in ``memory_format``.

        ``torch.channels_last`` lets cuDNN use its NHWC convolution kernels (see
        :mod:`medad.benchmark.acceleration`); a network created later (re-initialised) keeps the default.
        """
        self.memory_format = memory_format
        for module in self.networks().values():
            module.to(memory_format=memory_format)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` on the detector's device (4-D ones in its :attr:`memory_format`)."""
        if images.dim() == 4:
            return images.to(self.device, memory_format=self.memory_format, non_blocking=True)
        return images.to(self.device, non_blocking=True)

    def eval_mode(self) -> None:
        """Put every network in eval mode (scores must not depend on the batch)."""
        for module in self.networks().values():
            module.eval()

    def train_mode(self) -> None:
        for module in self.networks().values():
            module.train()



def score_map_or_none(detector: Detector, images: torch.Tensor) -> torch.Tensor | None:
    """``detector.score_map(images)``, or None when it has no pixel map (it returns None or raises :class:`NoPixelMap`)."""
    try:
        return detector.score_map(images)
    except NoPixelMap:
        return None
