"""Fit sharing: jobs whose training is identical train one model; the first job trains it, the others only score.

A job's *training identity* (:func:`training_identity`) is every setting that reaches its fit: each field of
the :class:`~medad.benchmark.jobs.Job` (detector class and hyper-parameters, seed, input size and channels,
precision, memory format, device, cluster resources, dataset, its parameters and root, and any run setting a
job carries later) except the few that only touch scoring or naming (:data:`NOT_TRAINING`: the subset, the
detector's label, the scoring batch size, whether checkpoints are saved, how often losses are read). The subset is replaced by its
*training view* (:meth:`medad.datasets.base.Dataset.training_view`): subsets that a dataset declares to train
on the same images (OCT's three tasks on the same normals) share it. A new job field is part of the identity
unless it is listed here, so a setting added later can never make two different fits share by mistake.

Jobs never share when sharing is off (config ``share_fits: false``), when they record the test-set diagnostic
(``test_curve``: its curve is scored on the job's own test set during the fit), or when their detector says so
(:meth:`medad.detectors.base.Detector.fit_shareable`: false where the training sees the job's own test set, a
reference-protocol quirk; a plugin may opt out the same way). The identity is decided from the config alone
(dry runs and cluster drivers need no data); the worker then checks the data itself (:class:`SharedFit`): a job
whose training images (:func:`training_fingerprint`) differ from the fit's, or whose fitted detector turns out
to see the test set, trains on its own and records its own fit id.

The *fit id* is a short hash of the identity: every job that used one fit carries it (``fit_id`` in
``jobs.csv`` and ``metrics.csv``; ``fit_by`` names the job that trained it). A job that used another job's
fit gets that fit's training losses in its own ``history.csv`` rows, each row's ``fit_by`` naming the job that
trained it (so every job of a unit has its training curves, marked as the shared fit's). Jobs with one fit id form a
:class:`FitUnit`, which one worker runs: fit once, then score each job. On CPU a fit is deterministic, so a
job scores the same whether it trained or reused the fit: each job scores a copy of the fitted detector as it
was right after the fit, with the random number generators as they were then.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medad.benchmark.jobs import Job
from medad.datasets.base import Subset
from medad.datasets.splits import split_fingerprint
from medad.detectors.base import Detector
from medad.registry import DATASETS, DETECTORS, RegistryError

# Job fields that do not change what is trained (scoring, naming, output only). ``recorded_split`` does choose the
# training images, but only as the worker's check sees them (training_fingerprint): OCT's tasks, each with its own
# recorded split, still share a fit where their recorded training normals agree.
NOT_TRAINING = ("subset", "detector", "score_batch_size", "save_checkpoints", "log_every", "recorded_split")


def training_identity(job: Job) -> dict[str, Any]:
    """Every setting of ``job`` that reaches its fit, the subset replaced by the dataset's training view."""
    identity = {name: value for name, value in job.to_dict().items() if name not in NOT_TRAINING}
    identity["training_view"] = DATASETS.get(job.dataset).training_view(job.subset)
    return identity


def shareable(job: Job) -> bool:
    """Whether ``job``'s fit may be shared: its detector allows it (:meth:`Detector.fit_shareable`) and the job does
    not record the test-set diagnostic (``test_curve``: the curve belongs to one job's test set, scored during the fit)."""
    if job.test_curve:
        return False
    try:
        cls = DETECTORS.get(job.detector_name)
    except RegistryError:  # the job fails by itself, on its own
        return False
    return bool(cls.fit_shareable(job.detector_params))


def _short_hash(value: dict[str, Any]) -> str:
    """``fit-`` and 12 hex digits of the value's hash: the prefix keeps CSV readers from taking an id such as
    ``7645e5312180`` for a number (pandas reads that as infinity)."""
    return "fit-" + hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:12]


def fit_id(job: Job, share: bool = True) -> str:
    """The id of the fit ``job`` uses: shared by every job with the same training identity when ``share`` (and its
    detector allows), else the job's own (its job id added to the identity)."""
    identity = training_identity(job)
    if not (share and shareable(job)):
        identity["own_fit_of"] = job.job_id
    return _short_hash(identity)


def fit_ids(jobs: Iterable[Job], share: bool = True) -> dict[str, str]:
    """``job_id -> fit_id`` for ``jobs``: equal ids train once (what a dry run and a cost estimate count)."""
    return {job.job_id: fit_id(job, share) for job in jobs}


@dataclass(frozen=True)
class FitUnit:
    """Jobs that use one fit, run by one worker: the first trains, the others score (``jobs`` in matrix order)."""

    fit_id: str
    jobs: tuple[Job, ...]

    @property
    def leader(self) -> Job:
        return self.jobs[0]


def training_id(fit_id: str, recorded: Collection[str] = ()) -> str:
    """The id a fit trained now gets: ``fit_id``, unless a finished job of the run already used a fit of that id
    (``recorded``: an earlier session trained it; fits are not kept between sessions, so this is another training,
    and on a GPU without deterministic algorithms another model). Then ``<fit_id>-2`` (its second training),
    ``-3``, ...: the first not recorded, so one id never names two trainings."""
    if fit_id not in recorded:
        return fit_id
    count = 2
    while f"{fit_id}-{count}" in recorded:
        count += 1
    return f"{fit_id}-{count}"


def fit_units(jobs: Sequence[Job], share: bool = True, recorded: Collection[str] = ()) -> list[FitUnit]:
    """``jobs`` grouped into units by fit id, in the order of each unit's first job; a unit whose fit id a finished
    job already used (``recorded``, on ``--resume`` or ``--extend``) trains under a new one (:func:`training_id`)."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(fit_id(job, share), []).append(job)
    return [FitUnit(training_id(key, recorded), tuple(members)) for key, members in groups.items()]


def as_unit(item: Job | FitUnit) -> FitUnit:
    """A unit as it is, or a lone job as a unit of its own (executors take either)."""
    return item if isinstance(item, FitUnit) else FitUnit(fit_id(item, share=False), (item,))


def training_fingerprint(subset: Subset, identity: str) -> str:
    """A short hash of what a fit sees: the ids of the training normals, of the validation normals (or that they are
    the training normals), of the labelled anomaly pool, and ``identity`` (the dataset's, see ``Dataset.identity``)."""
    ids, parts = list(subset.train.ids), ["train"] * len(subset.train)
    if subset.val is not None:
        ids += list(subset.val.ids)
        parts += ["val-in-sample" if subset.val_in_sample else "val"] * len(subset.val)
    if subset.anomaly_pool is not None:
        ids += list(subset.anomaly_pool.ids)
        parts += [f"anomaly_pool:{label}" for label in subset.anomaly_pool.labels]
    return split_fingerprint(ids, parts, identity)


@dataclass
class RandomState:
    """The state of Python's, NumPy's and torch's (CPU and CUDA) random number generators."""

    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None

    @classmethod
    def capture(cls) -> RandomState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)


@dataclass
class SharedFit:
    """One unit's fit as its jobs run in turn in one process: trained by the first job that needs it, then handed to
    the others as a copy of the fitted detector, with the random state as it was right after the fit.

    ``uses`` is how many jobs will ask (the last one gets the kept detector itself, not a copy). A fit that failed
    fails every later job of the unit with its error; a job whose training data differ from the fit's
    (:func:`training_fingerprint`), or a fit whose detector sees the test set, is not shared: that job trains its
    own, under its own fit id.
    """

    fit_id: str
    uses: int = 1
    trained_by: str = ""
    fingerprint: str = ""
    error: str = ""
    not_shared: str = ""            # why the kept fit is not handed on (set after the fit)
    detector: Detector | None = None
    random_state: RandomState | None = None
    asked: int = 0
    used: dict[str, tuple[str, str]] = field(default_factory=dict)   # job id -> (fit id, job id that trained it)
    history: list[tuple] = field(default_factory=list)   # the shared fit's training losses, kept for the others

    def detector_for(self, job: Job, fingerprint: str, train: Callable[[], Detector],
                     note: Callable[[str], None] = lambda line: None) -> Detector:
        """The fitted detector ``job`` scores with: trained now by ``train()`` (first job, or a job that cannot share),
        else a copy of the kept one; ``note`` gets a line for the job's log."""
        self.asked += 1
        last = self.asked >= self.uses
        if self.error:
            raise RuntimeError(f"the shared fit {self.fit_id} failed in job {self.trained_by}: {self.error}")
        if self.detector is not None and self.fingerprint == fingerprint and not self.not_shared:
            detector = self.detector if last else copy.deepcopy(self.detector)
            if last:
                self.detector = None
            self.random_state.restore()
            self.used[job.job_id] = (self.fit_id, self.trained_by)
            note(f"fit: shared fit {self.fit_id}, trained by {self.trained_by} (not trained again)")
            return detector
        if self.trained_by:  # the kept fit exists (or existed) but is not this job's: a fit of its own
            reason = self.not_shared or "its training images differ from the shared fit's"
            note(f"fit: not shared ({reason}); training its own")
            self.used[job.job_id] = (fit_id(job, share=False), job.job_id)
            return train()
        self.trained_by, self.fingerprint = job.job_id, fingerprint
        self.used[job.job_id] = (self.fit_id, job.job_id)
        try:
            detector = train()
        except BaseException as error:
            self.error = f"{type(error).__name__}: {error}"
            raise
        if not last:
            self._keep(detector)
        return detector

    def losses_for(self, job: Job, own: list[tuple]) -> list[tuple]:
        """The training losses (history rows) of the fit ``job`` scored with: ``own`` (its log's) where it trained,
        else those of the job that trained the shared fit, kept when that job asked (after :meth:`detector_for`)."""
        trained_by = self.used.get(job.job_id, ("", job.job_id))[1]
        if trained_by != job.job_id:
            return list(self.history)
        if self.trained_by == job.job_id:
            self.history = list(own)
        return own

    def _keep(self, detector: Detector) -> None:
        """Keep a pristine copy of the just-fitted ``detector`` (and the random state) for the unit's other jobs."""
        if getattr(detector, "sees_test_set", False):
            self.not_shared = "the fitted detector saw its own test set"
            return
        self.random_state = RandomState.capture()
        try:
            self.detector = copy.deepcopy(detector)
        except Exception as error:  # a detector holding something that cannot be copied: the others train their own
            self.not_shared = f"the fitted detector cannot be copied ({type(error).__name__}: {error})"
