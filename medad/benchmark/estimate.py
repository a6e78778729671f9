"""Know the cost before running: each job's estimated device time, from a short calibration on this machine.

The model. A fit trains for a budget its detector declares (:meth:`~medad.detectors.base.Detector.training_budget`):
hyper-parameters counted in ``epochs`` (passes over the ``n_train`` training images) or ``steps`` (batches,
whatever ``n_train``). Its time is taken as

    fit_s = n_train x (setup + sum over epoch budgets of value x epoch) + sum over step budgets of value x step

with ``epoch`` and ``setup`` in seconds per training image and ``step`` in seconds per batch, all measured here.
A detector whose work does not follow its training images one for one declares cost terms
(:meth:`~medad.detectors.base.Detector.cost_terms`: PatchCore's coreset selection, quadratic in the patches of a
chunk, and its nearest-neighbour search, whose cost per scored image grows with the memory bank; PaDiM's
covariance inversions, once per fit): each adds ``units(n_train) x seconds per unit`` to the fit or to every scored
image, the seconds per unit timed by the detector on random data (:meth:`~medad.detectors.base.Detector.time_cost_term`)
and the terms' share of the calibration fit and its scoring taken out of ``setup`` and the scoring time.

The calibration (:func:`calibrate`) builds the detector with the job's own hyper-parameters, input size and
channels on the job's device, precision and memory format, and fits it on ``n_cal`` random images (two
batches: content does not change the arithmetic; held where the job would hold them,
:func:`medad.benchmark.device_images.place_images`) under the job's arithmetic flags: the same
:func:`medad.benchmark.numerics.configure_numerics` call a job makes (fp32: TF32 off for matrix products and
cuDNN convolutions; tf32: both on; bf16: autocast, TF32 off; ``deterministic``: deterministic algorithms,
cuDNN's benchmark off), the flags found restored afterwards. It fits with every budget at 1 unit, timed
(``base``), after a warm-up fit (on CUDA for every setting: kernels loaded and memory cached per shape; on the
CPU once per process: imports, thread pools). Then, once per budget hyper-parameter, a fit with that one raised
by ``extra`` units: its extra time / ``extra`` is one unit (an epoch over ``n_cal`` images, or one step; on
CUDA every timed fit is the fastest of :data:`CUDA_REPEATS`: the fits are short). What the warm base fit spends beyond one unit of each
budget (``setup``: caches of source features, memory settling, statistics over the training set) is
taken to scale with the training images, like an epoch. Whole fits are timed, the device synchronised
at the end, so asynchronous launches are counted where they finish. Scoring: seconds per image from
scoring the ``n_cal`` images after a warm-up batch; a job scores its validation, test and anomaly-pool
images. Not counted: loading and decoding, pixel maps, metrics, bootstrap, the report's examples.

Assumptions, stated because the estimate rests on them: the time per image of an epoch does not depend on
how many images there are; the device runs one job at a time (packed workers, ``--workers-per-gpu``, finish
sooner: the total is device time, not wall time); jobs that share one fit (as the run shares them:
:func:`medad.benchmark.fit_sharing.fit_ids`) pay for it once.
A job whose dataset cannot be read (so ``n_train`` is unknown) or whose calibration fails is ``unknown``
and left out of the total, which says how many were.

Calibrations are cached on disk (``<medad cache>/calibration/<key>.json``), keyed by the device's name
(the CPU's model and torch threads on the CPU), the torch version, the detector's class, its
hyper-parameters other than the budget, the input size and channels, the precision, ``deterministic`` and the
memory format, and the calibration's own settings: a second estimate on the same machine does not time again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medad.atomic_files import write_text_atomic
from medad.benchmark.acceleration import autocast, resolve_memory_format
from medad.benchmark.config import hyperparameters
from medad.benchmark.device_images import place_images
from medad.benchmark.fit_sharing import fit_ids
from medad.benchmark.job_runner import dataset_of, fit_detector
from medad.benchmark.jobs import Job
from medad.benchmark.numerics import numerics
from medad.benchmark.resources import hardware, resolve_device
from medad.datasets.base import DatasetError, ImageSet, Subset
from medad.datasets.cache import cache_dir
from medad.datasets.files import FileDataset
from medad.detectors.base import Detector, TrainLog
from medad.registry import DETECTORS

CALIBRATION_VERSION = 2  # part of the cache key: a change of the method times again
EXTRA_UNITS = {"epochs": 1, "steps": 4}  # how far each budget is raised above 1 to time one unit of it
CUDA_REPEATS = 3  # on a GPU each timed fit is the fastest of three (short fits, launch and clock jitter)
_WARM_CPU: set[str] = set()  # {"cpu"} once this process has fitted a detector on the CPU (see calibrate)


def random_images(count: int, channels: int, size: int, seed: int = 0, label: int = 0) -> ImageSet:
    """``count`` uniform-noise uint8 images (with an organ region, for detectors that need one) labelled ``label``:
    content does not change the arithmetic of a step."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator)
    roi = torch.zeros(count, size, size, dtype=torch.uint8)
    roi[:, size // 8: size - size // 8, size // 8: size - size // 8] = 1
    return ImageSet(images=images, labels=np.full(count, label, dtype=np.int64), ids=[f"random{seed}-{i}" for i in range(count)],
                    roi_masks=roi)


def device_label(device: torch.device) -> str:
    """What the estimate runs on, in words: the GPU's name, or the CPU's model and torch threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{hardware()['cpu']} ({torch.get_num_threads()} threads)"


def resolved_params(cls: type[Detector], params: dict[str, Any]) -> dict[str, Any]:
    """Every hyper-parameter of ``cls``: ``params`` over the defaults."""
    return {**{name: parameter.default for name, parameter in hyperparameters(cls).items()}, **params}


@dataclass(frozen=True)
class Calibration:
    """What one detector setting costs on one device: seconds per training image of ``setup`` and of one epoch of
    each ``epochs`` budget, seconds per step of each ``steps`` budget, seconds per scored image."""

    device: str
    budget: dict[str, str]
    setup_s_per_image: float
    unit_s: dict[str, float]   # budget name -> s per training image (epochs) or s per step (steps)
    score_s_per_image: float
    n_cal: int
    timed_s: float             # what the calibration itself took
    term_s: dict[str, float] = field(default_factory=dict)  # cost term name -> seconds per unit

    def fit_seconds(self, params: dict[str, Any], n_train: int,
                    terms: dict[str, tuple[float, float]] | None = None) -> float:
        """The estimated seconds of a fit with ``params`` (budget values) on ``n_train`` training images; ``terms``:
        the detector's :meth:`~medad.detectors.base.Detector.cost_terms` at ``n_train``."""
        total = self.setup_s_per_image * n_train
        for name, unit in self.budget.items():
            value = params[name]
            total += value * self.unit_s[name] * (n_train if unit == "epochs" else 1)
        return total + sum(self.term_s[name] * fit for name, (fit, _) in (terms or {}).items())

    def score_seconds(self, n_scored: int, terms: dict[str, tuple[float, float]] | None = None) -> float:
        """The estimated seconds of scoring ``n_scored`` images (``terms`` as in :meth:`fit_seconds`)."""
        per_image = self.score_s_per_image + sum(self.term_s[name] * score for name, (_, score) in (terms or {}).items())
        return per_image * n_scored


def calibration_key(cls: type[Detector], params: dict[str, Any], budget: dict[str, str], image_size: int,
                    channels: int, device: torch.device, precision: str, memory_format: str, n_cal: int,
                    deterministic: bool = False) -> str:
    """The cache key of a calibration: everything that changes a step's cost, none of the budget's values."""
    fixed = {name: value for name, value in params.items() if name not in budget}
    parts = {"version": CALIBRATION_VERSION, "device": device_label(device), "torch": torch.__version__,
             "detector": f"{cls.__module__}:{cls.__qualname__}", "params": fixed, "budget": budget,
             "image_size": image_size, "channels": channels, "precision": precision, "deterministic": deterministic,
             "memory_format": memory_format, "n_cal": n_cal, "extra": EXTRA_UNITS, "cuda_repeats": CUDA_REPEATS}
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_fit(cls: type[Detector], params: dict[str, Any], subset: Subset, image_size: int, channels: int,
               device: torch.device, precision: str, memory_format: str) -> tuple[float, Detector]:
    """Wall seconds of one fit (device synchronised at the end), and the fitted detector."""
    detector = cls(image_size=image_size, channels=channels, device=str(device), seed=0, **params)
    detector.use_memory_format(resolve_memory_format(memory_format, device))
    _synchronize(device)
    started = time.perf_counter()
    with autocast(device, precision):
        fit_detector(detector, subset, TrainLog())
    _synchronize(device)
    return time.perf_counter() - started, detector


def _score_seconds_per_image(detector: Detector, images: ImageSet, batch_size: int, device: torch.device,
                             precision: str) -> float:
    batches = list(images.batches(batch_size))
    with autocast(device, precision):
        detector.score(batches[0])  # warm-up
        _synchronize(device)
        started = time.perf_counter()
        for batch in batches:
            detector.score(batch).cpu()
        _synchronize(device)
    return (time.perf_counter() - started) / len(images)


def calibrate(detector_name: str, params: dict[str, Any], *, image_size: int, channels: int, device: str = "auto",
              precision: str = "fp32", memory_format: str = "auto", deterministic: bool = False,
              n_cal: int | None = None, score_batch_size: int = 64, use_cache: bool = True,
              progress: Callable[[str], None] | None = None) -> Calibration:
    """Time the detector ``detector_name`` with ``params`` on this machine's ``device``, under the arithmetic flags a
    job with ``precision`` and ``deterministic`` sets (see the module's text); read from the cache when this setting
    was timed before. ``n_cal``: calibration images (default two batches, at least 16). ``progress`` receives a
    line before and after a timing (none for a cached setting): a first estimate on a CPU can take minutes."""
    cls = DETECTORS.get(detector_name)
    full = resolved_params(cls, params)
    budget = cls.training_budget(full)
    batch = full.get("batch_size") if isinstance(full.get("batch_size"), int) else 32
    n_cal = n_cal or max(16, 2 * batch)
    resolved = resolve_device(device)
    key = calibration_key(cls, full, budget, image_size, channels, resolved, precision, memory_format, n_cal,
                          deterministic)
    path = cache_dir() / "calibration" / f"{key}.json"
    if use_cache and path.is_file():
        try:
            return Calibration(**json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError, OSError):
            pass  # a damaged entry: time again
    what = (f"{detector_name} at {image_size} px x{channels}, {precision}{', deterministic' if deterministic else ''}, "
            f"on {device_label(resolved)}")
    if progress is not None:
        progress(f"estimate: timing {what} (cached for the next dry run) ...")
    started = time.perf_counter()
    subset = Subset(name="calibration", train=random_images(n_cal, channels, image_size),
                    val=random_images(n_cal // 2, channels, image_size, seed=1),
                    test=ImageSet.concat([random_images(n_cal // 4 or 1, channels, image_size, seed=2),
                                          random_images(n_cal // 4 or 1, channels, image_size, seed=3, label=1)]),
                    anomaly_pool=random_images(n_cal // 2, channels, image_size, seed=4, label=1))
    subset, _ = place_images(subset, resolved)
    ones = {**params, **{name: 1 for name in budget}}
    args = (subset, image_size, channels, resolved, precision, memory_format)
    with numerics(precision, deterministic, resolved):  # the flags the job sets, restored after the timing
        if resolved.type != "cpu" or "cpu" not in _WARM_CPU:
            _timed_fit(cls, ones, *args)  # warm-up
            _WARM_CPU.add(resolved.type)
        repeats = CUDA_REPEATS if resolved.type == "cuda" else 1
        base, detector = min((_timed_fit(cls, ones, *args) for _ in range(repeats)), key=lambda timed: timed[0])
        score = _score_seconds_per_image(detector, subset.train, score_batch_size, resolved, precision)
        unit_s = {}
        for name, unit in budget.items():
            extra = EXTRA_UNITS[unit]
            raised = min(_timed_fit(cls, {**ones, name: 1 + extra}, *args)[0] for _ in range(repeats))
            per_unit = max(0.0, raised - base) / extra
            unit_s[name] = per_unit / n_cal if unit == "epochs" else per_unit
    one_of_each = sum(unit_s[name] * (n_cal if unit == "epochs" else 1) for name, unit in budget.items())
    terms = cls.cost_terms(full, n_cal, image_size)
    term_s = {name: cls.time_cost_term(name, full, resolved) for name in terms}
    in_fit = sum(term_s[name] * fit for name, (fit, _) in terms.items())
    in_score = sum(term_s[name] * per_image for name, (_, per_image) in terms.items())
    calibration = Calibration(device=device_label(resolved), budget=budget,
                              setup_s_per_image=max(0.0, base - one_of_each - in_fit) / n_cal, unit_s=unit_s,
                              score_s_per_image=max(0.0, score - in_score), n_cal=n_cal,
                              timed_s=time.perf_counter() - started, term_s=term_s)
    if use_cache:
        write_text_atomic(path, json.dumps(asdict(calibration), indent=1) + "\n")
    if progress is not None:
        progress(f"estimate: timed {what} in {calibration.timed_s:.1f} s")
    return calibration


@dataclass(frozen=True)
class JobSizes:
    """How many images a job trains on and scores (validation, test, anomaly pool)."""

    n_train: int
    n_scored: int


def job_sizes(job: Job) -> JobSizes:
    """The job's split sizes, from its dataset's split (file datasets: without decoding the images for training)."""
    dataset = dataset_of(job)
    if isinstance(dataset, FileDataset):
        counts = Counter(dataset.split(job.subset).parts)
        n_val = counts["train"] if dataset.val_source == "train" else counts["val"]
        return JobSizes(counts["train"], n_val + counts["test"] + counts["anomaly_pool"])
    subset = dataset.load(job.subset)
    scored = [part for part in (subset.val, subset.test, subset.anomaly_pool) if part is not None]
    return JobSizes(len(subset.train), sum(len(part) for part in scored))


@dataclass
class JobEstimate:
    """One job's estimate: its fit (None where it shares one already counted) and its scoring, or why unknown."""

    job_id: str
    fit_id: str
    n_train: int | None = None
    n_scored: int | None = None
    fit_s: float | None = None
    score_s: float | None = None
    unknown: str = ""

    @property
    def total_s(self) -> float | None:
        return None if self.unknown else (self.fit_s or 0.0) + (self.score_s or 0.0)


@dataclass
class Estimate:
    """Every job's estimate and the totals: device seconds, fits counted once, jobs left unknown."""

    jobs: list[JobEstimate]
    device: str
    gpu: bool
    fits: int
    total_s: float
    calibrations: dict[str, Calibration] = field(default_factory=dict)

    @property
    def unknown(self) -> list[JobEstimate]:
        return [job for job in self.jobs if job.unknown]


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".strip()


def estimate_jobs(jobs: list[Job], share_fits: bool = True, *, n_cal: int | None = None,
                  use_cache: bool = True, progress: Callable[[str], None] | None = None) -> Estimate:
    """The estimated device time of ``jobs`` on this machine. Jobs that train identically share one fit, as a run
    shares them (:func:`medad.benchmark.fit_sharing.fit_ids`; ``share_fits``: the config's ``share_fits``): a
    shared fit is counted once, at the first job that uses it; every job pays for its own scoring.
    ``progress``: see :func:`calibrate`."""
    fits_of = fit_ids(jobs, share_fits)
    sizes: dict[tuple, JobSizes | str] = {}
    calibrations: dict[str, Calibration | str] = {}
    counted: set[str] = set()
    estimates, devices, gpu = [], set(), False
    for job in jobs:
        fit_id = fits_of[job.job_id]
        estimate = JobEstimate(job.job_id, fit_id)
        estimates.append(estimate)
        unit = (job.dataset, job.subset, job.dataset_root, json.dumps(job.dataset_params, sort_keys=True, default=str))
        if unit not in sizes:
            try:
                sizes[unit] = job_sizes(job)
            except (DatasetError, OSError, ValueError, KeyError) as error:
                sizes[unit] = f"dataset unreadable ({_first_line(error)})"
        if isinstance(sizes[unit], str):
            estimate.unknown = sizes[unit]
            continue
        estimate.n_train, estimate.n_scored = sizes[unit].n_train, sizes[unit].n_scored
        setting = json.dumps([job.detector_name, job.detector_params, job.image_size, job.channels, job.device,
                              job.precision, job.deterministic, job.memory_format], sort_keys=True, default=str)
        if setting not in calibrations:
            try:
                calibrations[setting] = calibrate(job.detector_name, job.detector_params, image_size=job.image_size,
                                                  channels=job.channels, device=job.device, precision=job.precision,
                                                  memory_format=job.memory_format, deterministic=job.deterministic,
                                                  n_cal=n_cal,
                                                  score_batch_size=job.score_batch_size, use_cache=use_cache,
                                                  progress=progress)
            except Exception as error:  # a detector that cannot be built or fitted here (missing weights, memory)
                calibrations[setting] = f"calibration failed ({_first_line(error)})"
        calibration = calibrations[setting]
        if isinstance(calibration, str):
            estimate.unknown = calibration
            continue
        devices.add(calibration.device)
        gpu = gpu or resolve_device(job.device).type == "cuda"
        cls = DETECTORS.get(job.detector_name)
        full = resolved_params(cls, job.detector_params)
        terms = cls.cost_terms(full, estimate.n_train, job.image_size)
        estimate.score_s = calibration.score_seconds(estimate.n_scored, terms)
        if fit_id not in counted:
            counted.add(fit_id)
            estimate.fit_s = calibration.fit_seconds(full, estimate.n_train, terms)
    total = sum(e.total_s for e in estimates if e.total_s is not None)
    fits = len({e.fit_id for e in estimates})
    device = ", ".join(sorted(devices)) or "no device (nothing calibrated)"
    return Estimate(estimates, device, gpu, fits, total,
                    {key: value for key, value in calibrations.items() if isinstance(value, Calibration)})


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_estimate(estimate: Estimate, name: str) -> str:
    """The per-job table and the totals line: ``name: 135 jobs, 87 fits, about N GPU-hours on 1 x <GPU>``."""
    lines = [f"{'job':<58} {'n_train':>8} {'scored':>7} {'fit':>9} {'score':>8}"]
    for job in estimate.jobs:
        if job.unknown:
            lines.append(f"{job.job_id:<58} unknown: {job.unknown}")
            continue
        fit = _duration(job.fit_s) if job.fit_s is not None else "shared"
        lines.append(f"{job.job_id:<58} {job.n_train:>8} {job.n_scored:>7} {fit:>9} {_duration(job.score_s):>8}")
    kind = "GPU-hours" if estimate.gpu else "CPU-hours"
    hours = estimate.total_s / 3600
    amount = f"{hours:.2f}" if hours < 10 else f"{hours:.0f}"
    total = (f"{name}: {len(estimate.jobs)} jobs, {estimate.fits} fits, about {amount} {kind} "
             f"({_duration(estimate.total_s)}) on 1 x {estimate.device}")
    if estimate.unknown:
        total += f"; {len(estimate.unknown)} jobs unknown (not counted)"
    lines += ["", total, "an estimate from a short calibration on this machine (one job at a time; loading, metrics "
              "and pixel maps not counted): see medad.benchmark.estimate"]
    return "\n".join(lines)
